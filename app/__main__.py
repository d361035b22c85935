"""``python -m app``: serve the API with uvicorn (HOST, PORT, WORKERS from the environment or .env).

With WORKERS > 1 each worker is its own process, so Prometheus metrics go through files in
PROMETHEUS_MULTIPROC_DIR (created empty at every start) and a scrape of any worker sees them all.
The HTTP protocol bounds request heads (app/server.py).
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path

import uvicorn

from app.server import HTTP_PROTOCOL
from etl.logger import setup_logging
from etl.settings import get_settings

log = logging.getLogger("app")


def prepare_multiprocess_dir(workers: int) -> Path | None:
    """Create (or wipe) PROMETHEUS_MULTIPROC_DIR when more than one worker will run."""
    if workers <= 1:
        return None
    path = Path(os.environ.get("PROMETHEUS_MULTIPROC_DIR") or Path(tempfile.gettempdir()) / "bcd-prometheus")
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(path)
    return path


def main() -> None:
    settings = get_settings()
    setup_logging(settings.log_level)
    mp_dir = prepare_multiprocess_dir(settings.workers)
    if mp_dir:
        log.info("%d workers; Prometheus multiprocess files in %s", settings.workers, mp_dir)
    log.info("serving on http://%s:%d (docs at /docs)", settings.host, settings.port)
    uvicorn.run(
        "app.main:app",
        host=settings.host,
        port=settings.port,
        workers=settings.workers,
        log_level=settings.log_level.lower(),
        access_log=False,
        proxy_headers=False,
        http=HTTP_PROTOCOL,
    )


if __name__ == "__main__":
    main()
