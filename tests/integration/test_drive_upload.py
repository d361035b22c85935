"""POST /upload of the real service (uvicorn subprocess) against the Drive test server (TLS, 127.0.0.1).

Train and evaluate over HTTP, then upload: the files arrive in Drive byte-identical, exactly once; while
Drive is down the service answers 502 naming the step and the local backup, which is intact; a later
upload completes into the same folder without duplicates. No key material or token reaches the log.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import Service, start_service
from tests.drive_server import DriveEnv, drive_env
from tests.registry_support import uploaded_bytes

pytestmark = pytest.mark.integration

TOKEN = "drive-test-token-0123456789"


@pytest.fixture
def drive(tmp_path: Path) -> Iterator[DriveEnv]:
    with drive_env(tmp_path / "drive") as env:
        yield env


@pytest.fixture
def service(tmp_path: Path, csv_url: str, drive: DriveEnv) -> Iterator[Service]:
    svc = start_service(tmp_path / "svc", data_url=csv_url, token=TOKEN, extra_env=drive.env())
    try:
        yield svc
    finally:
        svc.stop()


def post(
    service: Service, path: str, body: dict[str, Any] | None = None, timeout: float = 120
) -> httpx.Response:
    return httpx.post(service.url + path, json=body or {}, headers=service.auth(), timeout=timeout)


def train_and_promote(service: Service) -> str:
    trained = post(service, "/train")
    assert trained.status_code == 200, trained.text
    version = str(trained.json()["version"])
    evaluated = post(service, "/evaluate", {"version": version})
    assert evaluated.status_code == 200, evaluated.text
    assert evaluated.json()["promoted"] is True
    return version


def metric(service: Service, name: str) -> float:
    text = httpx.get(service.url + "/metrics", timeout=10).text
    values = [line.split()[-1] for line in text.splitlines() if line.startswith(name + " ")]
    return float(values[0]) if values else 0.0


def test_upload_route_sends_the_served_model_to_drive_once(service: Service, drive: DriveEnv):
    version = train_and_promote(service)

    response = post(service, "/upload")

    assert response.status_code == 200, response.text
    body = response.json()
    expected = uploaded_bytes(service.results_dir, version)
    assert body["version"] == version
    assert Path(body["backup_dir"]) == service.upload_dir / body["timestamp"]
    drive_part = body["drive"]
    assert drive_part["status"] == "uploaded" and drive_part["reason"] is None
    assert drive_part["folder_name"] == body["timestamp"] and drive_part["retries"] == 0
    (folder,) = drive.state.children(drive.parent_id, folders=True)
    assert folder.id == drive_part["folder_id"]
    stored = {f.name: f for f in drive.state.children(folder.id)}
    assert sorted(stored) == ["metrics.json", "model.joblib", "report.html"]
    assert stored["report.html"].mime_type == "text/html"
    assert stored["report.html"].content.startswith(b"<!DOCTYPE html>")
    for item in drive_part["files"]:
        data = expected[item["name"]]
        assert stored[item["name"]].id == item["id"]
        assert stored[item["name"]].content == data
        assert item["md5"] == hashlib.md5(data).hexdigest() and item["size"] == len(data)


def test_upload_route_drive_down_is_502_with_step_and_backup_then_completes_without_duplicates(
    service: Service, drive: DriveEnv
):
    version = train_and_promote(service)
    drive.state.inject("upload.init", status=503, times=10_000)  # Drive accepts the folder, then stays down

    failed = post(service, "/upload", {"version": version})

    assert failed.status_code == 502, failed.text
    detail = failed.json()["detail"]
    assert "upload failed at step 'upload model.joblib' after 4 retries" in detail
    assert "HTTP 503 backendError" in detail
    (backup,) = list(service.upload_dir.iterdir())
    assert f"the local backup is intact at {backup}" in detail
    expected = uploaded_bytes(service.results_dir, version)
    for name in ("model.joblib", "metrics.json", "report.html"):
        assert (backup / name).read_bytes() == expected[name]
    assert metric(service, "bcd_drive_upload_failures_total") == 1
    assert metric(service, "bcd_drive_upload_retries_total") == 4

    drive.state.clear_faults()
    done = post(service, "/upload", {"version": version})
    again = post(service, "/upload", {"version": version})

    assert done.status_code == 200 and again.status_code == 200, (done.text, again.text)
    (folder,) = drive.state.children(drive.parent_id, folders=True)
    assert done.json()["drive"]["folder_id"] == again.json()["drive"]["folder_id"] == folder.id
    assert again.json()["drive"]["skipped"] == ["model.joblib", "metrics.json", "report.html"]
    stored = sorted((f.name, f.md5) for f in drive.state.children(folder.id))
    assert stored == [(name, hashlib.md5(expected[name]).hexdigest()) for name in sorted(expected)]


def test_upload_route_quota_error_is_502_with_the_fix_and_no_secret_in_the_log(
    service: Service, drive: DriveEnv
):
    train_and_promote(service)
    drive.state.quota_exceeded = True

    response = post(service, "/upload")

    assert response.status_code == 502, response.text
    detail = response.json()["detail"]
    assert "upload failed at step 'upload model.joblib'" in detail
    assert "service accounts have no storage of their own in a user's My Drive" in detail
    assert "Shared Drive" in detail and "GDRIVE_IMPERSONATE" in detail and "authorized_user" in detail
    assert "the local backup is intact at" in detail
    assert drive.state.tokens  # tokens were issued ...
    log = service.log()
    assert [s for s in drive.leaked_secrets() if s in log] == []  # ... and none was logged


def test_upload_route_without_drive_configured_says_skipped(tmp_path: Path, csv_url: str):
    svc = start_service(tmp_path / "svc", data_url=csv_url, token=TOKEN, extra_env={"GDRIVE_FOLDER_ID": ""})
    try:
        train_and_promote(svc)
        response = post(svc, "/upload")
    finally:
        svc.stop()

    assert response.status_code == 200, response.text
    assert response.json()["drive"] == {
        "status": "skipped",
        "reason": "GDRIVE_FOLDER_ID is not set",
        "folder_id": None,
        "folder_name": None,
        "files": [],
        "retries": 0,
    }
    backup = Path(response.json()["backup_dir"])
    assert sorted(p.name for p in backup.iterdir()) == ["metrics.json", "model.joblib", "report.html"]
