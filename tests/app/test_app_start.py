"""``python -m app`` refuses to start when it could not write its state or read the Drive key, naming the
folder or file and the uid (the container runs as APP_UID; a bind mount owned by someone else used to fail
only at the first training or upload). Its ``main()`` runs in this process; what starting imports is checked
in a real subprocess."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import app.__main__
from etl.features import FEATURE_NAMES
from tests.conftest import BUNDLED_CSV, ROOT, free_port
from tests.in_process import Ran, run_in_process, unset_prefixed
from tests.pipeline_support import copy_tree

RunApp = Callable[..., Ran]


@pytest.fixture
def run_app(
    monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> RunApp:
    """``run_app(workdir, **env)``: ``python -m app``'s ``main()`` in this process as the subprocess would run
    it in ``workdir`` (tests/in_process.py); a real ``python -m app`` that refuses its settings is
    tests/etl/test_settings_errors.py."""

    def run(workdir: Path, **env: str) -> Ran:
        return run_in_process(
            monkeypatch,
            capfd,
            caplog,
            app.__main__.main,
            cwd=workdir,
            env={
                "HOST": "127.0.0.1",
                "PORT": str(free_port()),
                "WORKERS": "1",
                "DATA_URL": str(BUNDLED_CSV),
                "DATA_DIR": str(workdir / "data"),
                "RESULTS_DIR": str(workdir / "results"),
                "UPLOAD_DIR": str(workdir / "upload"),
                "API_TOKEN": "",
                "ENVIRONMENT": "development",
                **env,
            },
            unset=unset_prefixed(("GDRIVE_", "GOOGLE_", "PROMETHEUS_")),
        )

    return run


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


def test_app_start_unwritable_results_dir_exits_naming_folder_and_uid(
    tmp_path: Path, run_app: RunApp
) -> None:
    with unwritable(tmp_path / "results"):
        proc = run_app(tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert f"RESULTS_DIR folder {tmp_path / 'results'} is not writable by uid {os.getuid()}" in proc.stderr
    assert "APP_UID" in proc.stderr and "serving on" not in proc.stderr


def test_app_start_drive_key_is_a_directory_exits_naming_file(tmp_path: Path, run_app: RunApp) -> None:
    key = tmp_path / "secrets" / "drive_sa.json"
    key.mkdir(parents=True)  # what Docker makes of a missing file mounted by itself
    proc = run_app(tmp_path, GDRIVE_FOLDER_ID="folder-id", GOOGLE_APPLICATION_CREDENTIALS=str(key))
    assert proc.returncode == 2, proc.stderr
    assert f"GOOGLE_APPLICATION_CREDENTIALS file {key} cannot be read by uid {os.getuid()}" in proc.stderr
    assert "Is a directory" in proc.stderr and "Docker makes a directory" in proc.stderr


def test_app_start_drive_key_missing_with_drive_folder_exits_naming_file(
    tmp_path: Path, run_app: RunApp
) -> None:
    key = tmp_path / "secrets" / "drive_sa.json"
    proc = run_app(tmp_path, GDRIVE_FOLDER_ID="folder-id", GOOGLE_APPLICATION_CREDENTIALS=str(key))
    assert proc.returncode == 2, proc.stderr
    assert f"{key} cannot be read" in proc.stderr and "No such file or directory" in proc.stderr


# what starting the service and answering /predict must leave unimported: plotting belongs to the
# pipeline's report (etl/report/figures.py imports matplotlib when it writes one), never to the service's
# start-up or hot path
_START_AND_PREDICT = """
import json, sys
import app.__main__  # what `python -m app` imports before uvicorn starts
from fastapi.testclient import TestClient
from app.main import create_app
with TestClient(create_app()) as client:
    ready = client.get("/ready")
    assert ready.status_code == 200, ready.text
    version = ready.json()["model_version"]
    body = dict(zip(%r, (5, 1, 1, 1, 2, 1, 3, 1, 1)))
    answers = [client.post("/predict", json=body).status_code]
    answers.append(client.post("/predict/batch", json={"instances": [body]}).status_code)
    for path in ("/models", f"/models/{version}/report", f"/models/{version}/report/roc.png"):
        answers.append(client.get(path).status_code)
plotting = sorted(m for m in sys.modules if m.split(".")[0] in ("matplotlib", "PIL", "seaborn", "plotly"))
print(json.dumps({"answers": answers, "plotting": plotting}))
"""


def test_app_start_and_predict_import_no_plotting_library(template: tuple[Path, str], tmp_path: Path) -> None:
    base = copy_tree(template[0], tmp_path / "state")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GDRIVE_", "GOOGLE_", "PROMETHEUS_"))}
    env.update(
        PYTHONPATH=str(ROOT),
        DATA_URL=str(BUNDLED_CSV),
        DATA_DIR=str(base / "data"),
        RESULTS_DIR=str(base / "results"),
        UPLOAD_DIR=str(base / "upload"),
        MODEL_SIGNING_KEY_FILE=str(base / "secrets" / "model_signing.key"),
        API_TOKEN="",
        MODEL_POLL_SECONDS="0",
    )
    script = _START_AND_PREDICT % (FEATURE_NAMES,)
    proc = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["answers"] == [200, 200, 200, 200, 200]  # the report is served from disk, not drawn
    assert out["plotting"] == []


def run_real_app(workdir: Path, **env: str) -> Ran:
    """A real ``python -m app`` in ``workdir``, with ``run_app``'s environment: its logging set up as users
    get it."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("GDRIVE_", "GOOGLE_", "PROMETHEUS_"))}
    base.update(
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
        **env,
    )
    proc = subprocess.run(
        [sys.executable, "-m", "app"], cwd=workdir, env=base, capture_output=True, text=True, timeout=120
    )
    return Ran(proc.returncode, proc.stdout, proc.stderr)


@pytest.mark.parametrize("real", [False, True], ids=["in-process", "subprocess"])
def test_app_start_sync_record_without_database_exits_naming_it(
    tmp_path: Path, run_app: RunApp, real: bool
) -> None:
    """PREDICTION_LOG=sync answers only with a committed record: without its database it does not start,
    and says so without the URL's password (also as a real process: its log goes through the logging set-up
    users get, which the in-process runs replace)."""
    url = f"postgresql://records:s3cret-Pw@127.0.0.1:{free_port()}/predictions"
    proc = (run_real_app if real else run_app)(tmp_path, PREDICTION_LOG="sync", PREDICTION_DB_URL=url)
    assert proc.returncode == 2, proc.stderr
    assert "not starting: PREDICTION_LOG=sync answers only with a record" in proc.stderr
    assert "s3cret-Pw" not in proc.stderr and "serving on" not in proc.stderr


def test_app_start_bad_prediction_db_url_exits_naming_variable_not_value(
    tmp_path: Path, run_app: RunApp
) -> None:
    proc = run_app(tmp_path, PREDICTION_DB_URL="mysql://records:s3cret-Pw@db/predictions")
    assert proc.returncode == 2, proc.stderr
    assert "PREDICTION_DB_URL: unsupported database 'mysql'" in proc.stderr
    assert "s3cret-Pw" not in proc.stderr
