"""upload_to_storage: the local backup always, then Google Drive (the Drive test server) when configured."""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from etl.errors import (
    ArtifactIntegrityError,
    DriveConfigError,
    ModelNotFoundError,
    NotEvaluatedError,
    StorageError,
)
from etl.hashing import md5_file
from etl.pipeline import evaluate_version, open_registry
from etl.registry import Registry, new_version_name
from etl.settings import Settings
from etl.upload_results import upload_to_storage
from tests.drive_server import DriveEnv, drive_env
from tests.drive_server.keys import SA_EMAIL
from tests.etl.conftest import trained_copy
from tests.pipeline_support import make_settings
from tests.registry_support import (
    registry_db_url,
    report_path,
    report_record,
    sql,
    uploaded_bytes,
    version_dir,
)

NOW = datetime(2026, 3, 15, 10, 15, 0, tzinfo=UTC)
STAMP = "20260315_101500"
UPLOADED = ("model.joblib", "metrics.json", "report.html")


def make_version(registry: Registry, *, evaluated: bool = True, recall: float = 0.99) -> str:
    """A registry version with a (tiny) model.joblib and, when ``evaluated``, an evaluation and a stand-in
    report.html."""
    version = new_version_name("upload-test")
    files = {"model.json": b"{}", "model.joblib": b"a tiny stand-in", "holdout.csv": b"Class\n0\n1\n"}
    registry.create_version(version, files, {"threshold": 0.5})
    if evaluated:
        registry.write_metrics(version, {"recall": recall, "quality_gate": {"passed": True, "reasons": []}})
        registry.publish_report(version, {"report.html": f"<p>report of {version}</p>\n".encode()})
    return version


def stored(registry: Registry, version: str) -> dict[str, bytes]:
    return uploaded_bytes(registry.root, version)


@pytest.fixture
def local(tmp_path: Path) -> tuple[Settings, Registry, str]:
    settings = make_settings(tmp_path)
    registry = open_registry(settings)
    return settings, registry, make_version(registry)


def test_upload_to_storage_without_folder_id_backs_up_locally_and_skips_drive(
    local: tuple[Settings, Registry, str],
):
    settings, registry, version = local

    result = upload_to_storage(version, registry=registry, settings=settings, now=NOW)

    backup = settings.upload_dir / STAMP
    expected = stored(registry, version)
    assert result.to_dict() == {
        "version": version,
        "timestamp": STAMP,
        "backup_dir": str(backup),
        "files": [
            {
                "name": name,
                "size": len(expected[name]),
                "md5": hashlib.md5(expected[name]).hexdigest(),
                "path": str(backup / name),
            }
            for name in UPLOADED
        ],
        "drive": {
            "status": "skipped",
            "reason": "GDRIVE_FOLDER_ID is not set",
            "folder_id": None,
            "folder_name": None,
            "files": [],
            "retries": 0,
        },
    }
    for name in UPLOADED:
        assert (backup / name).read_bytes() == expected[name]
    assert sorted(p.name for p in backup.iterdir()) == sorted(UPLOADED)
    assert sorted(p.name for p in settings.upload_dir.iterdir()) == [STAMP]  # no temporary folder left
    (record,) = registry.read_meta(version)["uploads"]
    assert record["timestamp"] == STAMP and record["drive_status"] == "skipped"


def test_upload_to_storage_unknown_version_is_model_not_found(local: tuple[Settings, Registry, str]):
    settings, registry, _ = local

    with pytest.raises(ModelNotFoundError, match="does not exist"):
        upload_to_storage("20990101T000000Z-deadbeef", registry=registry, settings=settings)
    assert not settings.upload_dir.exists()


def test_upload_to_storage_not_evaluated_version_is_refused(tmp_path: Path):
    settings = make_settings(tmp_path)
    registry = open_registry(settings)
    version = make_version(registry, evaluated=False)

    with pytest.raises(NotEvaluatedError) as info:
        upload_to_storage(version, registry=registry, settings=settings)

    assert str(info.value).startswith(f"version {version} has not been evaluated: run evaluate first")
    assert not settings.upload_dir.exists()


def test_upload_to_storage_missing_model_file_is_refused(local: tuple[Settings, Registry, str]):
    settings, registry, version = local
    (version_dir(registry.root, version) / "model.joblib").unlink()  # gone from the store

    with pytest.raises(ArtifactIntegrityError, match=f"version {version} has no model.joblib"):
        upload_to_storage(version, registry=registry, settings=settings)


def test_upload_to_storage_version_without_report_gets_it_written_first(tmp_path: Path, trained_template):
    settings, trained = trained_copy(trained_template, tmp_path)
    registry = open_registry(settings)
    evaluate_version(settings, registry, trained.version)
    # as for a version evaluated before reports existed: its evaluation names no report
    sql(registry_db_url(settings.results_dir), "UPDATE registry_evaluations SET report = NULL")

    result = upload_to_storage(trained.version, registry=registry, settings=settings, now=NOW)

    report = report_path(settings.results_dir, trained.version).read_bytes()
    assert report.startswith(b"<!DOCTYPE html>")
    assert report_path(settings.results_dir, trained.version, "report/roc.png").is_file()
    assert (Path(result.backup_dir) / "report.html").read_bytes() == report
    assert [f["name"] for f in result.files] == list(UPLOADED)
    record = report_record(settings.results_dir, trained.version)
    assert record is not None and record["files"]["report.html"] == hashlib.sha256(report).hexdigest()


def test_upload_to_storage_twice_in_one_second_reuses_an_identical_backup(
    local: tuple[Settings, Registry, str],
):
    settings, registry, version = local
    other = make_version(registry, recall=0.97)  # other bytes

    first = upload_to_storage(version, registry=registry, settings=settings, now=NOW)
    again = upload_to_storage(version, registry=registry, settings=settings, now=NOW)
    different = upload_to_storage(other, registry=registry, settings=settings, now=NOW)

    assert first.backup_dir == again.backup_dir == str(settings.upload_dir / STAMP)
    assert different.backup_dir == str(settings.upload_dir / f"{STAMP}_2")
    assert different.timestamp == STAMP
    assert sorted(p.name for p in settings.upload_dir.iterdir()) == [STAMP, f"{STAMP}_2"]


def test_upload_to_storage_keeps_the_newest_backup_retention_folders(tmp_path: Path):
    settings = make_settings(tmp_path, backup_retention=3)
    registry = open_registry(settings)
    versions = [make_version(registry, recall=0.90 + i / 100) for i in range(4)]  # distinct bytes
    settings.upload_dir.mkdir(parents=True)
    (settings.upload_dir / ".tmp-pruned-20200101_000000").mkdir()  # left by an interrupted prune
    (settings.upload_dir / "notes").mkdir()  # not a backup: never touched
    earlier = datetime(2026, 3, 15, 10, 14, 0, tzinfo=UTC)
    for version in versions:
        upload_to_storage(version, registry=registry, settings=settings, now=NOW)  # STAMP, _2, _3, _4
    result = upload_to_storage(versions[0], registry=registry, settings=settings, now=earlier)

    names = sorted(p.name for p in settings.upload_dir.iterdir())
    # the three newest ("_2" after the plain stamp), plus the one just written though its stamp is older
    assert names == sorted(["notes", f"{STAMP}_2", f"{STAMP}_3", f"{STAMP}_4", Path(result.backup_dir).name])


def test_upload_to_storage_backup_retention_0_keeps_all(local: tuple[Settings, Registry, str]):
    settings, registry, version = local
    settings = settings.model_copy(update={"backup_retention": 0})
    for minute in range(4):
        now = datetime(2026, 3, 15, 10, minute, 0, tzinfo=UTC)
        upload_to_storage(version, registry=registry, settings=settings, now=now)
    assert len(list(settings.upload_dir.iterdir())) == 4


def test_upload_to_storage_failed_copy_leaves_no_partial_backup(
    local: tuple[Settings, Registry, str], monkeypatch: pytest.MonkeyPatch
):
    settings, registry, version = local
    real_md5 = md5_file
    calls: list[Path] = []

    def failing_after_first(path: Path) -> str:  # the second file of the backup cannot be written whole
        calls.append(path)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        return real_md5(path)

    monkeypatch.setattr("etl.upload_results.md5_file", failing_after_first)

    with pytest.raises(OSError, match="No space left"):
        upload_to_storage(version, registry=registry, settings=settings, now=NOW)
    assert list(settings.upload_dir.iterdir()) == []


# -- with the Drive test server --------------------------------------------------------------------
@pytest.fixture
def drive(tmp_path: Path) -> Iterator[DriveEnv]:
    with drive_env(tmp_path / "drive") as env:
        yield env


@pytest.fixture
def with_drive(tmp_path: Path, drive: DriveEnv) -> tuple[Settings, Registry, str]:
    settings = make_settings(tmp_path, **drive.settings_overrides())
    registry = open_registry(settings)
    return settings, registry, make_version(registry)


@pytest.mark.integration
def test_upload_to_storage_uploads_to_drive_and_records_ids_in_meta(
    drive: DriveEnv, with_drive: tuple[Settings, Registry, str]
):
    settings, registry, version = with_drive

    result = upload_to_storage(version, registry=registry, settings=settings, now=NOW)

    d = result.drive
    assert d["status"] == "uploaded" and d["reason"] is None
    assert d["folder_name"] == STAMP and d["retries"] == 0
    (folder,) = drive.state.children(drive.parent_id, folders=True)
    assert d["folder_id"] == folder.id and folder.name == STAMP
    expected = stored(registry, version)
    in_drive = {f.name: f for f in drive.state.children(folder.id)}
    assert [(f["name"], f["id"], f["md5"]) for f in d["files"]] == [
        (name, in_drive[name].id, hashlib.md5(expected[name]).hexdigest()) for name in UPLOADED
    ]
    assert all(in_drive[n].content == expected[n] for n in in_drive)
    meta = registry.read_meta(version)
    assert meta["drive"] == {
        "parent_folder_id": drive.parent_id,
        "folder_name": STAMP,
        "folder_id": folder.id,
        "files": {f["name"]: {"id": f["id"], "size": f["size"], "md5": f["md5"]} for f in d["files"]},
        "status": "uploaded",
    }
    assert meta["uploads"][-1]["drive_folder_id"] == folder.id


@pytest.mark.integration
def test_upload_to_storage_drive_down_keeps_the_backup_then_a_retry_completes_without_duplicates(
    drive: DriveEnv, with_drive: tuple[Settings, Registry, str]
):
    settings, registry, version = with_drive
    expected = stored(registry, version)
    # the folder gets made, then every media upload fails: Drive "stays down" for this attempt
    drive.state.inject("upload.init", status=503, times=1000)

    with pytest.raises(StorageError) as info:
        upload_to_storage(version, registry=registry, settings=settings, now=NOW)

    backup = settings.upload_dir / STAMP
    assert info.value.step == "upload model.joblib"
    assert info.value.backup_dir == str(backup)
    assert info.value.retries == settings.drive_retries
    assert all((backup / n).read_bytes() == expected[n] for n in UPLOADED)
    failed = registry.read_meta(version)["drive"]
    assert failed["status"] == "failed" and failed["step"] == "upload model.joblib"
    assert failed["folder_name"] == STAMP and failed["folder_id"]

    drive.state.clear_faults()
    later = datetime(2026, 3, 15, 11, 0, 0, tzinfo=UTC)
    result = upload_to_storage(version, registry=registry, settings=settings, now=later)

    assert result.drive["status"] == "uploaded"
    assert result.drive["folder_id"] == failed["folder_id"] and result.drive["folder_name"] == STAMP
    assert result.backup_dir == str(settings.upload_dir / "20260315_110000")
    (folder,) = drive.state.children(drive.parent_id, folders=True)
    in_drive = sorted((f.name, f.md5) for f in drive.state.children(folder.id))
    assert in_drive == sorted((n, hashlib.md5(expected[n]).hexdigest()) for n in UPLOADED)

    # and once more: nothing new in Drive
    third = upload_to_storage(version, registry=registry, settings=settings)
    assert third.drive["skipped"] == list(UPLOADED)
    assert len(drive.state.children(folder.id)) == len(UPLOADED)
    assert len(drive.state.children(drive.parent_id, folders=True)) == 1


@pytest.mark.integration
def test_upload_to_storage_concurrent_uploads_of_one_version_make_one_folder(
    drive: DriveEnv, with_drive: tuple[Settings, Registry, str]
):
    settings, registry, version = with_drive
    # slow listings widen the window in which two unsynchronised uploads would both create a folder
    drive.state.inject("files.list", "slow", delay=0.5, times=2)
    outcomes: list[object] = []

    def upload() -> None:
        try:
            outcomes.append(upload_to_storage(version, registry=registry, settings=settings, now=NOW))
        except Exception as exc:  # collected, then asserted below
            outcomes.append(exc)

    threads = [threading.Thread(target=upload) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)

    assert all(not isinstance(o, Exception) for o in outcomes) and len(outcomes) == 2, outcomes
    (folder,) = drive.state.children(drive.parent_id, folders=True)
    assert sorted(f.name for f in drive.state.children(folder.id)) == sorted(UPLOADED)


@pytest.mark.integration
def test_upload_to_storage_drive_config_error_keeps_the_backup_and_names_it(
    drive: DriveEnv, tmp_path: Path, with_drive: tuple[Settings, Registry, str]
):
    _, registry, version = with_drive
    settings = make_settings(tmp_path, **drive.settings_overrides(gdrive_folder_id="1Missing"))

    with pytest.raises(DriveConfigError) as info:
        upload_to_storage(version, registry=registry, settings=settings, now=NOW)

    assert info.value.backup_dir == str(settings.upload_dir / STAMP)
    assert (settings.upload_dir / STAMP / "model.joblib").is_file()
    assert "GDRIVE_FOLDER_ID=1Missing" in str(info.value) and SA_EMAIL in str(info.value)
    meta = registry.read_meta(version)
    assert meta["drive"]["status"] == "failed" and meta["drive"]["step"] == "check folder"


@pytest.mark.integration
def test_upload_to_storage_missing_key_file_keeps_the_backup(
    drive: DriveEnv, tmp_path: Path, with_drive: tuple[Settings, Registry, str]
):
    _, registry, version = with_drive
    absent = tmp_path / "secrets" / "drive_sa.json"
    settings = make_settings(tmp_path, **drive.settings_overrides(google_application_credentials=absent))

    with pytest.raises(DriveConfigError) as info:
        upload_to_storage(version, registry=registry, settings=settings, now=NOW)

    assert f"Google credentials file not found: {absent}" in str(info.value)
    assert info.value.backup_dir == str(settings.upload_dir / STAMP)
    assert drive.state.calls == []


@pytest.mark.integration
def test_upload_to_storage_meta_never_holds_key_material_or_tokens(
    drive: DriveEnv, with_drive: tuple[Settings, Registry, str]
):
    settings, registry, version = with_drive
    drive.state.inject("upload.chunk", "drop")

    upload_to_storage(version, registry=registry, settings=settings, now=NOW)

    meta_text = json.dumps(registry.read_meta(version))
    assert [s for s in drive.leaked_secrets() if s in meta_text] == []
