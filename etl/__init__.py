"""The breast-cancer diagnosis pipeline as a plain library: load, validate, train, evaluate, registry, upload.

Nothing here imports FastAPI or Airflow; every step also runs from the command line (``python -m etl``).
"""

__version__ = "1.0.0"
