"""Drive outage end to end: Drive is down (connection refused) for a whole POST /upload.

The local backup must be written and intact, the answer a 502 naming the step and the backup; when Drive is
back, /upload completes and Drive holds one folder with one copy of each file, byte-identical.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Service, start_service
from tests.hardening.conftest import TOKEN, client, train_and_promote
from tests.hardening.drive import RestartableDrive, restartable_drive
from tests.registry_support import meta_of, uploaded_bytes

pytestmark = pytest.mark.integration


@pytest.fixture
def drive(tmp_path: Path) -> Iterator[RestartableDrive]:
    with restartable_drive(tmp_path / "drive") as d:
        yield d


@pytest.fixture
def service(tmp_path: Path, bundled_csv: Path, drive: RestartableDrive) -> Iterator[tuple[Service, str]]:
    svc = start_service(
        tmp_path / "svc", data_url=str(bundled_csv), token=TOKEN, extra_env=drive.service_env()
    )
    try:
        yield svc, train_and_promote(svc)
    finally:
        svc.stop()


def test_upload_drive_down_whole_upload_502_backup_intact_then_completes_once(
    service: tuple[Service, str], drive: RestartableDrive
) -> None:
    svc, version = service
    expected = uploaded_bytes(svc.results_dir, version)
    drive.stop()  # Drive is down: every connection is refused, the token endpoint included

    with client(svc) as c:
        started = time.monotonic()
        r = c.post("/upload")
        outage_seconds = time.monotonic() - started
    assert r.status_code == 502, r.text
    detail = r.json()["detail"]
    assert "upload failed at step" in detail and "local backup is intact at" in detail, detail
    backup = Path(detail.rsplit("local backup is intact at ", 1)[1].strip())
    assert backup.parent == svc.upload_dir, detail
    assert {p.name for p in backup.iterdir()} == {"model.joblib", "metrics.json", "report.html"}
    for name in ("model.joblib", "metrics.json", "report.html"):
        assert (backup / name).read_bytes() == expected[name], f"backup {name} differs"
    assert drive.state.children(drive.env.parent_id) == [], "something reached Drive while it was down"
    meta = meta_of(svc.results_dir, version)
    assert meta["drive"]["status"] == "failed", meta

    drive.start()  # Drive is back on the same address
    with client(svc) as c:
        r = c.post("/upload")
        assert r.status_code == 200, r.text
        first = r.json()
        r = c.post("/upload")  # a retry after success (e.g. Airflow re-running the task): no new copies
        assert r.status_code == 200, r.text
        second = r.json()
    assert first["drive"]["status"] == "uploaded" and first["version"] == version, first
    assert second["drive"]["folder_id"] == first["drive"]["folder_id"], (first["drive"], second["drive"])

    folders = drive.state.children(drive.env.parent_id, folders=True)
    assert [f.id for f in folders] == [first["drive"]["folder_id"]], [(f.name, f.id) for f in folders]
    stored = drive.state.children(folders[0].id)
    assert sorted(f.name for f in stored) == ["metrics.json", "model.joblib", "report.html"], [
        f.name for f in stored
    ]
    for f in stored:
        assert f.md5 == hashlib.md5(expected[f.name]).hexdigest(), (
            f"{f.name} on Drive differs from the version's"
        )
    log = svc.log()
    leaked = [s for s in drive.env.leaked_secrets() if s in log] + ([TOKEN] if TOKEN in log else [])
    assert not leaked, "a key line or token is in the service log"
    print(
        f"\ndrive outage: 502 after {outage_seconds:.1f}s with the backup intact at {backup.name}; "
        f"after recovery 1 folder, {len(stored)} files on Drive after 2 uploads"
    )
