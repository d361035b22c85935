"""etl.drive through the real google-auth and google-api-python-client against the Drive test server.

The server (tests/drive_server) runs on 127.0.0.1 over TLS; it checks the service-account JWT, keeps every
byte it receives and injects faults. Each test starts its own server and key.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import httplib2
import pytest
from googleapiclient.errors import HttpError
from googleapiclient.http import MediaFileUpload

from etl.drive import DriveConfig, DriveResult, build_drive_service, load_credentials, upload_to_drive
from etl.errors import DriveConfigError, StorageError
from etl.hashing import md5_file
from etl.retry import RetryPolicy
from tests.drive_server import DriveEnv, StoredFile, drive_env, make_authorized_user_file
from tests.drive_server.keys import SA_EMAIL
from tests.drive_server.state import FOLDER_MIME

pytestmark = pytest.mark.integration

STAMP = "20260315_101500"


@pytest.fixture
def drive(tmp_path: Path) -> Iterator[DriveEnv]:
    with drive_env(tmp_path / "drive") as env:
        yield env


@pytest.fixture
def artifacts(tmp_path: Path) -> list[Path]:
    """What an upload carries: a model bigger than one 256 KiB chunk (so resumable sessions take several
    PUTs), a metrics file and an evaluation report."""
    folder = tmp_path / "backup"
    folder.mkdir()
    model = folder / "model.joblib"
    model.write_bytes(os.urandom(700_000))
    metrics = folder / "metrics.json"
    metrics.write_text('{"recall": 0.99, "precision": 0.97}\n')
    report = folder / "report.html"
    report.write_text("<!DOCTYPE html>\n<html><body><h1>Evaluation report</h1></body></html>\n")
    return [model, metrics, report]


CALL_ARGUMENTS = ("folder_name", "previous", "on_progress")


def run(drive: DriveEnv, files: list[Path], **overrides: Any) -> DriveResult:
    """``upload_to_drive`` against the test server; ``overrides`` replace DriveConfig fields or arguments."""
    call = {k: overrides.pop(k) for k in CALL_ARGUMENTS if k in overrides}
    config = DriveConfig(
        parent_folder_id=drive.parent_id,
        credentials_path=drive.key_path,
        api_endpoint=drive.server.api_endpoint,
        ca_bundle=drive.server.ca_bundle,
        timeout=2.0,
        retry=RetryPolicy(retries=4, base_seconds=0.01, deadline_seconds=30),
        chunk_size=256 * 1024,
    )
    return upload_to_drive(files, call.pop("folder_name", STAMP), replace(config, **overrides), **call)


def stored(drive: DriveEnv, folder_id: str) -> dict[str, list[StoredFile]]:
    by_name: dict[str, list[StoredFile]] = {}
    for f in drive.state.children(folder_id):
        by_name.setdefault(f.name, []).append(f)
    return by_name


def assert_uploaded_once(drive: DriveEnv, result: DriveResult, files: list[Path]) -> None:
    """One subfolder in the parent, holding each file exactly once, byte-identical to the local file."""
    folders = drive.state.children(drive.parent_id, folders=True)
    assert [(f.name, f.id) for f in folders] == [(result.folder_name, result.folder_id)]
    in_folder = stored(drive, result.folder_id)
    assert sorted(in_folder) == sorted(p.name for p in files)
    for path in files:
        (copy,) = in_folder[path.name]
        assert copy.content == path.read_bytes()
        assert copy.md5 == md5_file(path)
    assert [(f.name, f.size, f.md5) for f in result.files] == [
        (p.name, p.stat().st_size, md5_file(p)) for p in files
    ]
    assert [f.id for f in result.files] == [in_folder[p.name][0].id for p in files]


def test_upload_to_drive_puts_each_file_once_byte_identical(drive: DriveEnv, artifacts: list[Path]):
    result = run(drive, artifacts)

    assert_uploaded_once(drive, result, artifacts)
    assert result.folder_name == STAMP and result.retries == 0 and not result.reused_folder
    mime_types = [drive.state.files[f.id].mime_type for f in result.files]
    assert mime_types == ["application/octet-stream", "application/json", "text/html"]
    folder = drive.state.files[result.folder_id]
    assert folder.mime_type == FOLDER_MIME and folder.parents == [drive.parent_id]


def test_upload_to_drive_passes_supports_all_drives_on_every_call(drive: DriveEnv, artifacts: list[Path]):
    run(drive, artifacts)

    api_calls = [c for c in drive.state.calls if c["op"] not in ("token", "upload.chunk")]
    assert {c["op"] for c in api_calls} == {"files.get", "files.list", "files.create", "upload.init"}
    assert all(c["query"].get("supportsAllDrives") == "true" for c in api_calls), api_calls
    assert all(
        c["query"].get("includeItemsFromAllDrives") == "true" for c in drive.state.calls_for("files.list")
    )
    assert {c["query"].get("uploadType") for c in drive.state.calls_for("upload.init")} == {"resumable"}


def test_upload_to_drive_sends_the_model_in_several_resumable_chunks(drive: DriveEnv, artifacts: list[Path]):
    run(drive, artifacts)

    ranges = [c["content_range"] for c in drive.state.calls_for("upload.chunk")]
    assert ranges == [
        "bytes 0-262143/700000",
        "bytes 262144-524287/700000",
        "bytes 524288-699999/700000",
        f"bytes 0-{artifacts[1].stat().st_size - 1}/{artifacts[1].stat().st_size}",
        f"bytes 0-{artifacts[2].stat().st_size - 1}/{artifacts[2].stat().st_size}",
    ]


def test_upload_to_drive_authenticates_with_a_signed_jwt_for_the_drive_scope(
    drive: DriveEnv, artifacts: list[Path]
):
    run(drive, artifacts)

    assert [c["grant_type"] for c in drive.state.calls_for("token")] == [
        "urn:ietf:params:oauth:grant-type:jwt-bearer"
    ]
    (principal,) = drive.state.tokens.values()
    assert principal == {"iss": SA_EMAIL, "sub": None, "scope": "https://www.googleapis.com/auth/drive"}


def test_upload_to_drive_impersonation_sends_the_subject(drive: DriveEnv, artifacts: list[Path]):
    result = run(drive, artifacts, impersonate="backup-owner@example.com")

    (principal,) = drive.state.tokens.values()
    assert principal["iss"] == SA_EMAIL and principal["sub"] == "backup-owner@example.com"
    assert_uploaded_once(drive, result, artifacts)


def test_upload_to_drive_with_an_authorized_user_file(drive: DriveEnv, artifacts: list[Path], tmp_path: Path):
    user_file = tmp_path / "user.json"
    make_authorized_user_file(user_file, drive.state)

    # google-auth sends authorized-user refreshes to Google whatever the file says: GDRIVE_TOKEN_URI redirects
    result = run(drive, artifacts, credentials_path=user_file, token_uri=drive.state.token_uri)

    assert [c["grant_type"] for c in drive.state.calls_for("token")] == ["refresh_token"]
    assert_uploaded_once(drive, result, artifacts)


def test_upload_to_drive_key_unknown_to_google_is_a_clear_error(drive: DriveEnv, artifacts: list[Path]):
    drive.state.service_accounts.clear()  # as if the key had been deleted in IAM

    with pytest.raises(DriveConfigError) as info:
        run(drive, artifacts)

    assert info.value.step == "authenticate"
    assert f"Google rejected the credentials in {drive.key_path}" in str(info.value)
    assert "invalid_grant" in str(info.value)


def test_upload_to_drive_narrow_scope_is_refused_by_the_token_endpoint(
    drive: DriveEnv, artifacts: list[Path]
):
    with pytest.raises(DriveConfigError) as info:
        run(drive, artifacts, scopes=("https://www.googleapis.com/auth/drive.file",))

    assert info.value.step == "authenticate"
    assert "invalid_scope" in str(info.value)


# -- transient faults ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("op", "status", "reason"),
    [
        ("token", 503, "backendError"),
        ("files.get", 500, "backendError"),
        ("files.list", 429, "rateLimitExceeded"),
        ("files.create", 503, "backendError"),
        ("upload.init", 502, "backendError"),
        ("upload.chunk", 503, "backendError"),
        ("upload.chunk", 403, "userRateLimitExceeded"),
        ("upload.chunk", 504, "backendError"),
    ],
)
def test_upload_to_drive_retries_a_burst_of_transient_errors(
    drive: DriveEnv, artifacts: list[Path], op: str, status: int, reason: str
):
    drive.state.inject(op, status=status, reason=reason, times=3)

    result = run(drive, artifacts)

    fired = [f for f in drive.state.fired if f["op"] == op]
    assert len(fired) == 3
    # google-auth makes up to 3 attempts per token request itself, then we retry the refresh once
    assert result.retries == (1 if op == "token" else 3)
    assert_uploaded_once(drive, result, artifacts)


def test_upload_to_drive_resumes_after_a_dropped_connection_mid_upload(
    drive: DriveEnv, artifacts: list[Path]
):
    drive.state.inject("upload.chunk", "drop", times=2)

    result = run(drive, artifacts)

    assert result.retries == 2
    assert_uploaded_once(drive, result, artifacts)
    ranges = [c.get("content_range") for c in drive.state.calls if c["op"].startswith("upload.")]
    # each drop keeps half the chunk (128 KiB); the client asks the session where it stands and goes on
    # from there
    assert ranges[:7] == [
        None,  # upload.init
        "bytes 0-262143/700000",
        "bytes */700000",
        "bytes 131072-393215/700000",
        "bytes */700000",
        "bytes 262144-524287/700000",
        "bytes 524288-699999/700000",
    ]
    assert len(drive.state.calls_for("upload.init")) == 3  # one session per file, none restarted


def test_upload_to_drive_slow_response_past_the_timeout_is_retried_without_duplicates(
    drive: DriveEnv, artifacts: list[Path]
):
    # the server stores the first chunk, and lists the folder, but answers only after the client's 2 s timeout
    drive.state.inject("upload.chunk", "slow", delay=3.0, times=1)
    drive.state.inject("files.list", "slow", delay=3.0, times=1)

    result = run(drive, artifacts)

    assert result.retries == 2
    assert [f["kind"] for f in drive.state.fired] == ["slow", "slow"]
    assert_uploaded_once(drive, result, artifacts)


def test_upload_to_drive_lost_folder_create_response_makes_no_second_folder(
    drive: DriveEnv, artifacts: list[Path]
):
    drive.state.inject("files.create", "drop")  # the folder is created, the answer never arrives

    result = run(drive, artifacts)

    assert result.retries == 1
    assert len(drive.state.calls_for("files.create")) == 1
    assert_uploaded_once(drive, result, artifacts)


def test_upload_to_drive_lost_final_chunk_response_makes_no_second_file(drive: DriveEnv, tmp_path: Path):
    small = tmp_path / "metrics.json"
    small.write_text('{"a": 1}')
    # one chunk holds the whole file: Drive stores it, but its answer comes after the client gave up
    drive.state.inject("upload.chunk", "slow", delay=3.0)

    result = run(drive, [small])

    assert result.retries == 1
    assert_uploaded_once(drive, result, [small])


def test_upload_to_drive_gives_up_with_a_storage_error_naming_the_step(
    drive: DriveEnv, artifacts: list[Path]
):
    drive.state.inject("upload.chunk", status=503, times=1000)

    with pytest.raises(StorageError) as info:
        run(drive, artifacts, retry=RetryPolicy(retries=3, base_seconds=0.01, deadline_seconds=30))

    assert not isinstance(info.value, DriveConfigError)
    assert info.value.step == "upload model.joblib"
    assert info.value.retries == 3
    assert len(drive.state.fired) == 4
    assert "Google Drive kept failing with transient errors, last HTTP 503 backendError" in str(info.value)


# -- idempotency -----------------------------------------------------------------------------------
def test_upload_to_drive_rerun_with_recorded_progress_uploads_nothing_twice(
    drive: DriveEnv, artifacts: list[Path]
):
    progress: list[dict[str, Any]] = []
    first = run(drive, artifacts, on_progress=progress.append)
    uploads_before = len(drive.state.calls_for("upload.init"))

    second = run(drive, artifacts, folder_name="20260316_000000", previous=progress[-1])

    assert second.folder_id == first.folder_id and second.folder_name == STAMP
    assert second.reused_folder and second.skipped == ["model.joblib", "metrics.json", "report.html"]
    assert len(drive.state.calls_for("upload.init")) == uploads_before
    assert len(drive.state.calls_for("files.create")) == 1
    assert_uploaded_once(drive, second, artifacts)


def test_upload_to_drive_progress_records_the_folder_name_before_creating_it(
    drive: DriveEnv, artifacts: list[Path]
):
    progress: list[dict[str, Any]] = []

    result = run(drive, artifacts, on_progress=progress.append)

    assert progress[0] == {
        "parent_folder_id": drive.parent_id,
        "folder_name": STAMP,
        "folder_id": None,
        "files": {},
        "status": "in_progress",
    }
    assert progress[1]["folder_id"] == result.folder_id and progress[1]["files"] == {}
    model = result.files[0]
    assert progress[2]["files"] == {"model.joblib": {"id": model.id, "size": model.size, "md5": model.md5}}
    assert progress[-1]["status"] == "uploaded"
    assert progress[-1]["files"] == {f.name: {"id": f.id, "size": f.size, "md5": f.md5} for f in result.files}


def test_upload_to_drive_completes_a_half_finished_attempt(drive: DriveEnv, artifacts: list[Path]):
    # attempt 1 dies after the folder and the model were uploaded, before anything but the name was recorded
    progress: list[dict[str, Any]] = []
    drive.state.inject("upload.init", status=503, times=1000)
    with pytest.raises(StorageError):
        run(drive, artifacts[1:], on_progress=progress.append)
    drive.state.clear_faults()
    folder_id = drive.state.children(drive.parent_id, folders=True)[0].id
    drive.state.add_file("model.joblib", folder_id, artifacts[0].read_bytes(), "application/octet-stream")
    recorded = {"parent_folder_id": drive.parent_id, "folder_name": STAMP, "folder_id": None, "files": {}}

    result = run(drive, artifacts, folder_name="20260316_000000", previous=recorded)

    assert result.folder_id == folder_id and result.reused_folder
    assert result.skipped == ["model.joblib"]
    assert_uploaded_once(drive, result, artifacts)


def test_upload_to_drive_reuploads_a_file_whose_copy_differs(drive: DriveEnv, artifacts: list[Path]):
    progress: list[dict[str, Any]] = []
    first = run(drive, artifacts, on_progress=progress.append)
    artifacts[1].write_text('{"recall": 0.5}\n')

    second = run(drive, artifacts, previous=progress[-1])

    assert second.skipped == ["model.joblib", "report.html"]
    assert second.files[1].md5 == md5_file(artifacts[1]) and second.files[1].id != first.files[1].id


def test_upload_to_drive_after_the_recorded_folder_was_deleted_makes_a_new_one(
    drive: DriveEnv, artifacts: list[Path]
):
    progress: list[dict[str, Any]] = []
    first = run(drive, artifacts, on_progress=progress.append)
    for f in drive.state.files.values():
        if f.id == first.folder_id or first.folder_id in f.parents:
            f.trashed = True

    second = run(drive, artifacts, folder_name="20260316_000000", previous=progress[-1])

    assert second.folder_id != first.folder_id and second.folder_name == STAMP
    assert [f.name for f in second.files] == ["model.joblib", "metrics.json", "report.html"]
    assert not second.skipped


# -- configuration errors ------------------------------------------------------------------------
def test_upload_to_drive_unknown_folder_names_the_variable_and_the_account(
    drive: DriveEnv, artifacts: list[Path]
):
    with pytest.raises(DriveConfigError) as info:
        run(drive, artifacts, parent_folder_id="1NoSuchFolder")

    message = str(info.value)
    assert info.value.step == "check folder"
    assert "Google Drive folder GDRIVE_FOLDER_ID=1NoSuchFolder was not found" in message
    assert f"share the folder with {SA_EMAIL} as Editor" in message


def test_upload_to_drive_folder_not_shared_is_a_404_naming_the_account(
    drive: DriveEnv, artifacts: list[Path]
):
    drive.state.hidden.add(drive.parent_id)  # Drive answers 404 for a folder the account cannot see

    with pytest.raises(DriveConfigError) as info:
        run(drive, artifacts)

    assert f"GDRIVE_FOLDER_ID={drive.parent_id}" in str(info.value)
    assert f"{SA_EMAIL} has no access to it" in str(info.value)


def test_upload_to_drive_read_only_folder_is_a_403_naming_the_account(drive: DriveEnv, artifacts: list[Path]):
    drive.state.files[drive.parent_id].writable = False

    with pytest.raises(DriveConfigError) as info:
        run(drive, artifacts)

    assert f"GDRIVE_FOLDER_ID={drive.parent_id}" in str(info.value)
    assert f"{SA_EMAIL} can see but not write to it" in str(info.value)
    assert drive.state.children(drive.parent_id) == []


@pytest.mark.parametrize(
    ("op", "step"), [("files.create", "create folder"), ("upload.init", "upload model.joblib")]
)
def test_upload_to_drive_403_no_access_names_the_variable_and_the_account(
    drive: DriveEnv, artifacts: list[Path], op: str, step: str
):
    drive.state.inject(op, status=403, reason="insufficientFilePermissions")

    with pytest.raises(DriveConfigError) as info:
        run(drive, artifacts)

    assert info.value.step == step and info.value.retries == 0
    assert str(info.value).startswith(
        f"Google Drive folder GDRIVE_FOLDER_ID={drive.parent_id} was not found, or {SA_EMAIL} is not "
        f"allowed to add files to it: check GDRIVE_FOLDER_ID and share the folder with {SA_EMAIL} as Editor"
    )


def test_upload_to_drive_storage_quota_explains_shared_drive_delegation_and_oauth(
    drive: DriveEnv, artifacts: list[Path]
):
    drive.state.quota_exceeded = True

    with pytest.raises(DriveConfigError) as info:
        run(drive, artifacts)

    message = str(info.value)
    assert info.value.step == "upload model.joblib"
    assert "storageQuotaExceeded" in message
    assert "service accounts have no storage of their own in a user's My Drive" in message
    assert f"put GDRIVE_FOLDER_ID in a Shared Drive and add {SA_EMAIL} as a member" in message
    assert "domain-wide delegation (GDRIVE_IMPERSONATE=" in message
    assert '"type": "authorized_user"' in message


def test_upload_to_drive_missing_key_file_fails_before_any_request(drive: DriveEnv, artifacts: list[Path]):
    with pytest.raises(DriveConfigError, match="Google credentials file not found"):
        run(drive, artifacts, credentials_path=drive.key_path.with_name("absent.json"))

    assert drive.state.calls == []


# -- secrets ---------------------------------------------------------------------------------------
def test_upload_to_drive_logs_ids_sizes_and_retries_but_no_key_or_token(
    drive: DriveEnv, artifacts: list[Path], caplog: pytest.LogCaptureFixture
):
    caplog.set_level(logging.DEBUG)  # every logger, the Google libraries' included
    drive.state.inject("upload.chunk", "drop")
    drive.state.inject("files.list", status=503)

    result = run(drive, artifacts)
    # and a failure, whose message must be clean too
    drive.state.quota_exceeded = True
    with pytest.raises(DriveConfigError) as info:
        run(drive, artifacts, folder_name="20260316_000000")

    text = caplog.text + str(info.value)
    assert result.folder_id in caplog.text
    assert all(f.id in caplog.text for f in result.files)
    assert "700000 bytes" in caplog.text and "2 retries" in caplog.text
    leaked = [s for s in drive.leaked_secrets() if s in text]
    assert len(drive.leaked_secrets()) > 10 and leaked == []


# -- the test server itself ------------------------------------------------------------------------
def test_drive_server_multipart_upload_stores_the_bytes(drive: DriveEnv, artifacts: list[Path]):
    """The server's multipart path (uploadType=multipart), driven by the real client with resumable=False."""
    loaded = load_credentials(drive.key_path, ["https://www.googleapis.com/auth/drive"])
    http = httplib2.Http(timeout=5, ca_certs=str(drive.server.ca_bundle))
    service = build_drive_service(loaded.credentials, http, api_endpoint=drive.server.api_endpoint)
    media = MediaFileUpload(str(artifacts[0]), mimetype="application/octet-stream", resumable=False)

    created = (
        service.files()
        .create(
            body={"name": "model.joblib", "parents": [drive.parent_id]},
            media_body=media,
            fields="id,size,md5Checksum",
            supportsAllDrives=True,
        )
        .execute()
    )

    assert [c["query"]["uploadType"] for c in drive.state.calls_for("upload.multipart")] == ["multipart"]
    assert created == {"id": created["id"], "size": "700000", "md5Checksum": md5_file(artifacts[0])}
    assert drive.state.files[created["id"]].content == artifacts[0].read_bytes()


def test_drive_server_honours_fields_and_rejects_unknown_query_terms(drive: DriveEnv):
    loaded = load_credentials(drive.key_path, ["https://www.googleapis.com/auth/drive"])
    http = httplib2.Http(timeout=5, ca_certs=str(drive.server.ca_bundle))
    service = build_drive_service(loaded.credentials, http, api_endpoint=drive.server.api_endpoint)

    got = service.files().get(fileId=drive.parent_id, fields="id", supportsAllDrives=True).execute()
    with pytest.raises(HttpError) as info:
        service.files().list(q="fullText contains 'x'", supportsAllDrives=True).execute()

    assert got == {"id": drive.parent_id}
    assert info.value.resp.status == 400
