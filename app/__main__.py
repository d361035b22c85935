"""``python -m app``: serve the API with uvicorn (HOST, PORT, WORKERS from the environment or .env).

With WORKERS > 1 each worker is its own process, so Prometheus metrics go through files in
PROMETHEUS_MULTIPROC_DIR (created empty at every start) and a scrape of any worker sees them all.
The HTTP protocol bounds request heads (app/server.py), and uvicorn logs through the project's one
logging setup. The prediction record's database is migrated once before the workers start. Beyond
loopback the service refuses to start without API_TOKEN unless ALLOW_UNAUTHENTICATED=true says so on
purpose.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import shutil
import sys
import tempfile
from pathlib import Path

import uvicorn

from app.server import HTTP_PROTOCOL
from app.settings import ServiceSettings, get_settings
from etl.logger import setup_logging

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


def access_problems(settings: ServiceSettings) -> list[str]:
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


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses; False for 0.0.0.0, ::, any other address or name."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip().strip("[]")).is_loopback
    except ValueError:
        return False


def unauthenticated_exposure(settings: ServiceSettings) -> str | None:
    """Why serving with these settings would expose the mutating routes without a token, or None."""
    if settings.api_token.get_secret_value() or is_loopback(settings.host):
        return None
    return (
        f"HOST={settings.host} listens beyond loopback and API_TOKEN is empty, so anyone who reaches the "
        "port could train, evaluate, promote and upload"
    )


def migrate_prediction_record(settings: ServiceSettings) -> None:
    """Bring the prediction record's database to the current schema once, before the workers start (they
    check again under the migration lock, so a worker started some other way is safe too). Without its
    database PREDICTION_LOG=sync cannot answer, so it does not start; the other modes start and wait."""
    from app.records.database import migrate
    from etl.errors import DatabaseUnavailableError

    try:
        migrate(settings)
    except DatabaseUnavailableError as exc:
        if settings.prediction_log == "sync":
            log.error("not starting: PREDICTION_LOG=sync answers only with a record, and %s", exc)
            raise SystemExit(2) from None
        log.warning("%s; serving anyway: answers are queued until the database can be written", exc)


def main() -> None:
    settings = get_settings()
    setup_logging(settings.log_level)
    exposure = unauthenticated_exposure(settings)
    if exposure and not settings.allow_unauthenticated:
        log.error(
            "refusing to start: %s. Set API_TOKEN, or HOST=127.0.0.1, or ALLOW_UNAUTHENTICATED=true to "
            "serve without a token on purpose",
            exposure,
        )
        sys.exit(2)
    if exposure:
        log.warning("ALLOW_UNAUTHENTICATED=true: %s. THE MUTATING ROUTES ARE OPEN TO THE NETWORK.", exposure)
    problems = access_problems(settings)
    if problems:
        for problem in problems:
            log.error("%s", problem)
        log.error(
            "not starting: give this uid the folders and the key (in docker compose the service runs as "
            "APP_UID:APP_GID, which `make secrets` sets to your user; see docs/deployment.md)"
        )
        raise SystemExit(2)
    migrate_prediction_record(settings)
    mp_dir = prepare_multiprocess_dir(settings.workers)
    if mp_dir:
        log.info("%d workers; Prometheus multiprocess files in %s", settings.workers, mp_dir)
    log.info("serving on http://%s:%d (docs at /docs)", settings.host, settings.port)
    uvicorn.run(
        "app.main:create_app",
        factory=True,
        host=settings.host,
        port=settings.port,
        workers=settings.workers,
        log_level=settings.log_level.lower(),
        log_config=None,  # uvicorn's loggers propagate to the one handler of setup_logging
        access_log=False,
        proxy_headers=False,
        http=HTTP_PROTOCOL,
    )


if __name__ == "__main__":
    main()
