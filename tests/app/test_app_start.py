"""``python -m app`` refuses to start when it could not write its state or read the Drive key, naming the
folder or file and the uid (the container runs as APP_UID; a bind mount owned by someone else used to fail
only at the first training or upload)."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from tests.conftest import BUNDLED_CSV, ROOT, free_port


def run_app(workdir: Path, **env: str) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith(("GDRIVE_", "GOOGLE_", "PROMETHEUS_"))}
    full.update(
        PYTHONPATH=str(ROOT),
        HOST="127.0.0.1",
        PORT=str(free_port()),
        WORKERS="1",
        DATA_URL=str(BUNDLED_CSV),
        DATA_DIR=str(workdir / "data"),
        RESULTS_DIR=str(workdir / "results"),
        UPLOAD_DIR=str(workdir / "upload"),
        API_TOKEN="",
        ENVIRONMENT="development",
    )
    full.update(env)
    return subprocess.run(
        [sys.executable, "-m", "app"], cwd=workdir, env=full, capture_output=True, text=True, timeout=60
    )


@contextlib.contextmanager
def unwritable(folder: Path) -> Iterator[None]:
    """No new file can be made in ``folder`` by this process: read-only for a user, immutable for root."""
    folder.mkdir(parents=True)
    if os.getuid() == 0:
        subprocess.run(["chattr", "+i", str(folder)], check=True)
        try:
            yield
        finally:
            subprocess.run(["chattr", "-i", str(folder)], check=True)
    else:
        folder.chmod(0o500)
        try:
            yield
        finally:
            folder.chmod(0o700)


def test_app_start_unwritable_results_dir_exits_naming_folder_and_uid(tmp_path: Path) -> None:
    with unwritable(tmp_path / "results"):
        proc = run_app(tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert f"RESULTS_DIR folder {tmp_path / 'results'} is not writable by uid {os.getuid()}" in proc.stderr
    assert "APP_UID" in proc.stderr and "serving on" not in proc.stderr


def test_app_start_drive_key_is_a_directory_exits_naming_file(tmp_path: Path) -> None:
    key = tmp_path / "secrets" / "drive_sa.json"
    key.mkdir(parents=True)  # what Docker makes of a missing file mounted by itself
    proc = run_app(tmp_path, GDRIVE_FOLDER_ID="folder-id", GOOGLE_APPLICATION_CREDENTIALS=str(key))
    assert proc.returncode == 2, proc.stderr
    assert f"GOOGLE_APPLICATION_CREDENTIALS file {key} cannot be read by uid {os.getuid()}" in proc.stderr
    assert "Is a directory" in proc.stderr and "Docker makes a directory" in proc.stderr


def test_app_start_drive_key_missing_with_drive_folder_exits_naming_file(tmp_path: Path) -> None:
    key = tmp_path / "secrets" / "drive_sa.json"
    proc = run_app(tmp_path, GDRIVE_FOLDER_ID="folder-id", GOOGLE_APPLICATION_CREDENTIALS=str(key))
    assert proc.returncode == 2, proc.stderr
    assert f"{key} cannot be read" in proc.stderr and "No such file or directory" in proc.stderr


def test_app_start_sync_record_without_database_exits_naming_it(tmp_path: Path) -> None:
    """PREDICTION_LOG=sync answers only with a committed record: without its database it does not start,
    and says so without the URL's password."""
    url = f"postgresql://records:s3cret-Pw@127.0.0.1:{free_port()}/predictions"
    proc = run_app(tmp_path, PREDICTION_LOG="sync", PREDICTION_DB_URL=url)
    assert proc.returncode == 2, proc.stderr
    assert "not starting: PREDICTION_LOG=sync answers only with a record" in proc.stderr
    assert "s3cret-Pw" not in proc.stderr and "serving on" not in proc.stderr


def test_app_start_bad_prediction_db_url_exits_naming_variable_not_value(tmp_path: Path) -> None:
    proc = run_app(tmp_path, PREDICTION_DB_URL="mysql://records:s3cret-Pw@db/predictions")
    assert proc.returncode == 2, proc.stderr
    assert "PREDICTION_DB_URL: unsupported database 'mysql'" in proc.stderr
    assert "s3cret-Pw" not in proc.stderr
