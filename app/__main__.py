"""``python -m app``: serve the API with uvicorn (HOST, PORT, WORKERS from the environment or .env).

With WORKERS > 1 each worker is its own process, so Prometheus metrics go through files in
PROMETHEUS_MULTIPROC_DIR (created empty at every start) and a scrape of any worker sees them all.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path

import uvicorn

from etl.logger import setup_logging
from etl.settings import Settings, settings_or_exit

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


def access_problems(settings: Settings) -> list[str]:
    """What this process could not do later: write a state folder, or read the Drive key when uploads go to
    Drive. Each problem names the folder or file and the uid, so a bind mount owned by another user (the
    container runs as APP_UID) is found at start, not at the first training or upload."""
    who = f"uid {os.getuid()} (gid {os.getgid()})"
    problems = []
    for name, folder in (
        ("DATA_DIR", settings.data_dir),
        ("RESULTS_DIR", settings.results_dir),
        ("UPLOAD_DIR", settings.upload_dir),
    ):
        try:
            folder.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryFile(dir=folder):  # a real write: permissions, read-only mounts, ACLs
                pass
        except OSError as exc:
            problems.append(f"{name} folder {folder} is not writable by {who}: {exc.strerror}")
    if settings.gdrive_folder_id:
        key = settings.google_application_credentials
        try:
            with key.open("rb"):
                pass
        except OSError as exc:
            problems.append(
                f"GOOGLE_APPLICATION_CREDENTIALS file {key} cannot be read by {who}: {exc.strerror}"
                + (" (Docker makes a directory when a mounted file is missing)" if key.is_dir() else "")
            )
    return problems


def main() -> None:
    settings = settings_or_exit()
    setup_logging(settings.log_level)
    problems = access_problems(settings)
    if problems:
        for problem in problems:
            log.error("%s", problem)
        log.error(
            "not starting: give this uid the folders and the key (in docker compose the service runs as "
            "APP_UID:APP_GID, which `make secrets` sets to your user; see docs/deployment.md)"
        )
        raise SystemExit(2)
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
    )


if __name__ == "__main__":
    main()
