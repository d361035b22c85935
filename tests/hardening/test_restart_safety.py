"""Restart safety of the pipeline: concurrent and retried steps, as Airflow's retries produce them.

* Two /train at once: the training lock lets one run; the other gets 409 at once.
* /train retried after a client timeout: the first request keeps running server-side and registers its
  version. The registry guarantees no version is servable until it is evaluated and passes the gate, and
  the DAG evaluates only the newest version, so the orphan stays ``trained`` (servable false) and only one
  new version from the retried run is ever served. Versions are never overwritten or merged: every train
  is its own version by design (lineage), so the guarantee is about what can be served, not about count.
* /upload retried after a client timeout: uploads are serialised by a lock and the version's Drive state
  (folder id, file ids) is recorded in the registry as it progresses, so the retry reuses the folder and the
  files already there: Drive ends with one folder holding one copy of each file.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import BUNDLED_CSV, Service, start_service
from tests.hardening.conftest import (
    TOKEN,
    DataServer,
    Route,
    check_registry_consistent,
    client,
    data_server,
    models,
    train_and_promote,
)
from tests.hardening.drive import RestartableDrive, restartable_drive
from tests.registry_support import meta_of
from tests.waiting import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SLOW = 2.0  # seconds the slow data source waits before answering


@pytest.fixture
def slow_source() -> Iterator[DataServer]:
    with data_server({"/slow.csv": Route(BUNDLED_CSV.read_bytes(), delay_before=SLOW)}) as server:
        yield server


@pytest.fixture
def service(tmp_path: Path, bundled_csv: Path) -> Iterator[tuple[Service, str]]:
    # the slow data source is an override on loopback: allow it explicitly (test_data_sources.py)
    env = {"DATA_URL_ALLOWED_HOSTS": "127.0.0.1", "DATA_URL_ALLOW_PRIVATE_NETWORKS": "true"}
    svc = start_service(tmp_path / "svc", data_url=str(bundled_csv), token=TOKEN, extra_env=env)
    try:
        yield svc, train_and_promote(svc)
    finally:
        svc.stop()


def test_train_two_at_once_one_409(service: tuple[Service, str], slow_source: DataServer) -> None:
    svc, served = service
    before = {m["version"] for m in models(svc)["models"]}
    barrier = threading.Barrier(2)
    results: list[httpx.Response] = []

    def fire() -> None:
        with client(svc) as c:
            barrier.wait()
            # force: the slow source serves the bundled bytes, which an unforced /train finds unchanged
            results.append(c.post("/train", json={"data_url": slow_source.url("/slow.csv"), "force": True}))

    threads = [threading.Thread(target=fire) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    statuses = sorted(r.status_code for r in results)
    print(f"\ntwo /train at once: {statuses}")
    assert statuses == [200, 409], [r.text for r in results]
    conflict = next(r for r in results if r.status_code == 409)
    assert "already running" in conflict.json()["detail"], conflict.text
    new = {m["version"] for m in models(svc)["models"]} - before
    assert new == {next(r for r in results if r.status_code == 200).json()["version"]}
    assert models(svc)["served_version"] == served


def test_train_retry_after_client_timeout_leaves_one_servable_version(
    service: tuple[Service, str], slow_source: DataServer
) -> None:
    svc, served = service
    before = {m["version"] for m in models(svc)["models"]}
    body = {"data_url": slow_source.url("/slow.csv"), "force": True}  # the bundled bytes: see above
    impatient = httpx.Client(base_url=svc.url, headers=svc.auth(), timeout=0.5)
    with impatient, pytest.raises(httpx.ReadTimeout):
        impatient.post("/train", json=body)
    # Airflow retries; while the first run holds the lock a retry gets 409 and is retried again
    attempts: list[int] = []
    with client(svc) as c:

        def not_busy() -> httpx.Response | None:
            response = c.post("/train", json=body)
            attempts.append(response.status_code)
            return None if response.status_code == 409 else response

        r = wait_until(not_busy, 60, lambda: f"a /train not refused as busy: {attempts}", interval=0.2)
        assert r.status_code == 200, r.text
        retried = r.json()["version"]
        # the abandoned first run finishes server-side and registers its own version
        wait_until(
            lambda: len({m["version"] for m in models(svc)["models"]} - before) == 2,
            30,
            "the abandoned run's version in the registry",
        )
        listing = models(svc)
        new = [m for m in listing["models"] if m["version"] not in before]
        assert all(m["status"] == "trained" and not m["servable"] for m in new), new
        assert listing["served_version"] == served
        # the DAG's next task evaluates the newest version: only the retry's version becomes servable
        r = c.post("/evaluate")
        assert r.status_code == 200 and r.json()["version"] == retried and r.json()["promoted"], r.text
    listing = check_registry_consistent(svc)
    new = [m for m in listing["models"] if m["version"] not in before]
    servable = [m["version"] for m in new if m["servable"]]
    print(f"\ntrain retry: attempts {attempts}; new versions {[(m['version'], m['status']) for m in new]}")
    assert servable == [retried], new
    assert listing["served_version"] == retried


@pytest.fixture
def drive(tmp_path: Path) -> Iterator[RestartableDrive]:
    with restartable_drive(tmp_path / "drive") as d:
        yield d


def test_upload_retry_after_client_timeout_no_second_drive_copy(
    tmp_path: Path, bundled_csv: Path, drive: RestartableDrive
) -> None:
    svc = start_service(
        tmp_path / "svc-drive",
        data_url=str(bundled_csv),
        token=TOKEN,
        extra_env=drive.service_env(DRIVE_TIMEOUT="10"),
    )
    try:
        version = train_and_promote(svc)
        # Drive is slow (each file creation answers after 2 s): the caller gives up before the upload ends
        drive.state.inject("files.create", "slow", delay=SLOW, times=3)
        drive.state.inject("upload.multipart", "slow", delay=SLOW, times=3)
        drive.state.inject("upload.init", "slow", delay=SLOW, times=3)
        impatient = httpx.Client(base_url=svc.url, headers=svc.auth(), timeout=0.5)
        with impatient, pytest.raises(httpx.ReadTimeout):
            impatient.post("/upload")
        with client(svc) as c:
            r = c.post("/upload")  # Airflow's retry: waits for the first upload, then reuses its Drive state
        assert r.status_code == 200, r.text
        result = r.json()
        meta = json.dumps(meta_of(svc.results_dir, version))
    finally:
        svc.stop()
    folders = drive.state.children(drive.env.parent_id, folders=True)
    assert [f.id for f in folders] == [result["drive"]["folder_id"]], [(f.name, f.id) for f in folders]
    stored = sorted(f.name for f in drive.state.children(folders[0].id))
    print(f"\nupload retry: {len(folders)} Drive folder, files {stored}; drive {result['drive']['status']}")
    assert stored == ["metrics.json", "model.joblib", "report.html"], stored
    assert meta.count('"drive_status": "uploaded"') == 2, meta
