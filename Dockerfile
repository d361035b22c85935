# The model service image: `docker compose build api` (or `docker build -t bcd-api .`).
# No secrets are baked in: API_TOKEN comes from the environment, the Drive key is mounted at run time.
FROM python:3.11.13-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1

WORKDIR /app

RUN groupadd --system --gid 10001 app \
    && useradd --system --uid 10001 --gid app --home-dir /app --no-create-home --shell /usr/sbin/nologin app

# Dependency layer first: it is rebuilt only when requirements.txt changes, not on every code edit.
COPY requirements.txt ./
RUN pip install --no-cache-dir -r requirements.txt

# Code layer.
COPY etl/ ./etl/
COPY app/ ./app/

RUN mkdir -p data results upload secrets \
    && chown app:app data results upload

USER 10001:10001

# Listen on all interfaces inside the container (compose publishes the port); WORKERS > 1 makes
# `python -m app` set up PROMETHEUS_MULTIPROC_DIR so /metrics adds up all workers.
ENV HOST=0.0.0.0 \
    PORT=8000 \
    WORKERS=2 \
    DATA_DIR=/app/data \
    RESULTS_DIR=/app/results \
    UPLOAD_DIR=/app/upload \
    GOOGLE_APPLICATION_CREDENTIALS=/app/secrets/drive_sa.json \
    MPLCONFIGDIR=/tmp/matplotlib

EXPOSE 8000

# The slim image has no curl: ask /health with the standard library.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health' % os.environ.get('PORT', '8000'), timeout=4)"]

CMD ["python", "-m", "app"]
