"""Developer commands that run the project's parts together (``python -m scripts.<name>``)."""
