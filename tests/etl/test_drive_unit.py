"""etl.drive without a server: reading credentials files, classifying errors, each step's retry bounds and the
error that ends it."""

from __future__ import annotations

import json
from pathlib import Path

import httplib2
import pytest
from google.auth import exceptions as auth_exceptions
from googleapiclient.errors import HttpError

from etl.drive import LoadedCredentials, is_transient, load_credentials, mime_type_of
from etl.drive.errors import Target
from etl.drive.upload import Steps, drive_retrier
from etl.errors import DriveConfigError, StorageError
from etl.retry import RetryPolicy
from tests.drive_server import DriveState, make_authorized_user_file, make_service_account_key
from tests.etl.conftest import FakeClock

SCOPES = ["https://www.googleapis.com/auth/drive"]
SA = "up@proj.iam.gserviceaccount.com"
EXPECTED = 'expected a Google service-account JSON key ("type": "service_account"'


def http_error(status: int, reason: str = "backendError") -> HttpError:
    body = {"error": {"code": status, "message": "m", "errors": [{"reason": reason, "message": "m"}]}}
    return HttpError(httplib2.Response({"status": status}), json.dumps(body).encode(), uri="https://x/y")


@pytest.fixture
def state() -> DriveState:
    s = DriveState()
    s.base_url = "https://127.0.0.1:9"
    return s


def test_load_credentials_service_account_names_its_client_email(tmp_path: Path, state: DriveState):
    key = tmp_path / "sa.json"
    make_service_account_key(key, state, client_email="up@proj.iam.gserviceaccount.com")

    loaded = load_credentials(key, SCOPES)

    assert loaded.kind == "service_account"
    assert loaded.principal == "up@proj.iam.gserviceaccount.com"
    assert loaded.credentials.requires_scopes is False  # scopes were applied


def test_load_credentials_impersonation_uses_with_subject(tmp_path: Path, state: DriveState):
    key = tmp_path / "sa.json"
    make_service_account_key(key, state)

    loaded = load_credentials(key, SCOPES, impersonate="alice@example.com")

    assert loaded.principal == "alice@example.com"
    assert loaded.credentials._subject == "alice@example.com"  # type: ignore[attr-defined]


def test_load_credentials_authorized_user_file_is_accepted(tmp_path: Path, state: DriveState):
    path = tmp_path / "user.json"
    make_authorized_user_file(path, state)

    loaded = load_credentials(path, SCOPES)

    assert loaded.kind == "authorized_user"
    assert str(path) in loaded.principal


def test_load_credentials_missing_file_names_path_and_expected_type(tmp_path: Path):
    path = tmp_path / "secrets" / "drive_sa.json"

    with pytest.raises(DriveConfigError) as info:
        load_credentials(path, SCOPES)

    message = str(info.value)
    assert f"Google credentials file not found: {path}" in message
    assert "GOOGLE_APPLICATION_CREDENTIALS" in message
    assert "Expected a Google service-account JSON key" in message
    assert info.value.step == "read credentials"


def test_load_credentials_directory_in_place_of_the_key_is_explained(tmp_path: Path):
    path = tmp_path / "drive_sa.json"
    path.mkdir()

    with pytest.raises(DriveConfigError) as info:
        load_credentials(path, SCOPES)

    assert str(info.value).startswith(f"Google credentials file {path} is a directory")
    assert EXPECTED in str(info.value)


def test_load_credentials_unreadable_file_names_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    path = tmp_path / "drive_sa.json"
    path.write_text("{}")

    def deny(self: Path, *args: object, **kwargs: object) -> str:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(Path, "read_text", deny)
    with pytest.raises(DriveConfigError) as info:
        load_credentials(path, SCOPES)

    assert str(info.value).startswith(f"Google credentials file {path} cannot be read (Permission denied)")
    assert EXPECTED in str(info.value)


@pytest.mark.parametrize(
    ("content", "why"),
    [
        (b"\x30\x82\x0a\x1b\xff\xfe binary p12", "not a JSON text file; a .p12 key is not supported"),
        (b"not json at all", "not a JSON object"),
        (b'["a", "list"]', "not a JSON object"),
        (b'{"type": "external_account", "audience": "x"}', "its \"type\" is 'external_account'"),
        (b'{"installed": {"client_id": "x"}}', "its \"type\" is 'missing'"),
        (b'{"type": "service_account", "private_key": "x"}', "missing fields"),
        (
            b'{"type": "service_account", "client_email": "a@b", "token_uri": "https://t", '
            b'"private_key": "-----BEGIN PRIVATE KEY-----\\nnot-a-key\\n-----END PRIVATE KEY-----\\n"}',
            "could not be parsed",
        ),
    ],
)
def test_load_credentials_not_a_google_file_names_path_and_expected_type(
    tmp_path: Path, content: bytes, why: str
):
    path = tmp_path / "drive_sa.json"
    path.write_bytes(content)

    with pytest.raises(DriveConfigError) as info:
        load_credentials(path, SCOPES)

    message = str(info.value)
    assert str(path) in message
    assert why in message
    assert EXPECTED in message
    assert "not-a-key" not in message  # key material never echoed


def test_load_credentials_impersonation_with_a_user_credential_is_refused(tmp_path: Path, state: DriveState):
    path = tmp_path / "user.json"
    make_authorized_user_file(path, state)

    with pytest.raises(DriveConfigError, match="domain-wide delegation needs a service-account key"):
        load_credentials(path, SCOPES, impersonate="alice@example.com")


def test_load_credentials_errors_never_contain_the_private_key(tmp_path: Path, state: DriveState):
    key = tmp_path / "sa.json"
    pem = make_service_account_key(key, state)
    info = json.loads(key.read_text())
    del info["client_email"]
    key.write_text(json.dumps(info))

    with pytest.raises(DriveConfigError) as err:
        load_credentials(key, SCOPES)

    body_lines = [line for line in pem.splitlines() if "-----" not in line]
    assert "client_email" in str(err.value)
    assert not any(line in str(err.value) for line in body_lines)


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (http_error(429, "rateLimitExceeded"), True),
        (http_error(500), True),
        (http_error(502), True),
        (http_error(503), True),
        (http_error(504), True),
        (http_error(403, "userRateLimitExceeded"), True),
        (http_error(403, "storageQuotaExceeded"), False),
        (http_error(403, "insufficientFilePermissions"), False),
        (http_error(404, "notFound"), False),
        (http_error(400, "invalid"), False),
        (ConnectionResetError(104, "Connection reset by peer"), True),
        (TimeoutError("timed out"), True),
        (auth_exceptions.TransportError("boom"), True),
        (auth_exceptions.RefreshError("invalid_grant", retryable=False), False),
        (ValueError("bug"), False),
    ],
)
def test_is_transient_classifies_errors(exc: BaseException, expected: bool):
    assert is_transient(exc) is expected


def steps(policy: RetryPolicy, **clock: object) -> Steps:
    """Drive's step runner as the upload makes it, the retries' clock and sleep under the test's control."""
    creds = LoadedCredentials(None, "service_account", SA, Path("drive_sa.json"))  # type: ignore[arg-type]
    return Steps(drive_retrier(policy, **clock), Target("1Parent", creds))


def test_drive_steps_retry_transient_errors_then_succeed():
    sleeps: list[float] = []
    outcomes: list[BaseException | str] = [http_error(503), http_error(429), ConnectionResetError(), "ok"]

    def flaky() -> str:
        item = outcomes.pop(0)
        if isinstance(item, BaseException):
            raise item
        return item

    runner = steps(RetryPolicy(retries=5, base_seconds=1.0, deadline_seconds=100), sleep=sleeps.append)

    assert runner.run("upload model.joblib", flaky) == "ok"
    assert runner.retries == 3
    # exponential with equal jitter: each delay in [base*2^(n-1)/2, base*2^(n-1)]
    assert [0.5 <= sleeps[0] <= 1.0, 1.0 <= sleeps[1] <= 2.0, 2.0 <= sleeps[2] <= 4.0] == [True] * 3


def test_drive_steps_give_up_after_the_retry_count_with_a_storage_error():
    sleeps: list[float] = []
    runner = steps(RetryPolicy(retries=2, base_seconds=0.5, deadline_seconds=100), sleep=sleeps.append)

    def down() -> None:
        raise http_error(503)

    with pytest.raises(StorageError) as info:
        runner.run("create folder", down)

    assert not isinstance(info.value, DriveConfigError)
    assert info.value.step == "create folder"
    assert info.value.retries == 2
    assert len(sleeps) == 2
    assert "HTTP 503 backendError" in str(info.value)


def test_drive_steps_give_up_when_the_time_budget_would_be_exceeded(fake_clock: FakeClock):
    runner = steps(
        RetryPolicy(retries=50, base_seconds=1.0, deadline_seconds=10.0),
        sleep=fake_clock.sleep,
        clock=fake_clock,
        draw=lambda: 1.0,  # no jitter: delays 1, 2, 4, 8, ...
    )

    def down() -> None:
        fake_clock.now += 0.5  # each attempt takes half a second (a timeout)
        raise TimeoutError("timed out")

    with pytest.raises(StorageError) as info:
        runner.run("list folder", down)

    # attempts at t=0.5, 2, 4.5, 9: the next delay (8 s) would end past the 10 s budget
    assert fake_clock.sleeps == [1.0, 2.0, 4.0]
    assert info.value.retries == 3
    assert "limits 50 retries per step, 10s in all" in str(info.value)
    assert "TimeoutError: timed out" in str(info.value)


def test_drive_steps_do_not_retry_a_permanent_error_and_say_what_to_fix():
    sleeps: list[float] = []
    runner = steps(RetryPolicy(), sleep=sleeps.append)

    def forbidden() -> None:
        raise http_error(403, "insufficientFilePermissions")

    with pytest.raises(DriveConfigError) as info:
        runner.run("check folder", forbidden)
    assert isinstance(info.value.__context__, HttpError)
    assert sleeps == []
    assert info.value.step == "check folder" and info.value.retries == 0
    message = str(info.value)
    assert f"GDRIVE_FOLDER_ID=1Parent was not found, or {SA} is not allowed to add files to it" in message


@pytest.mark.parametrize(
    ("name", "mime"),
    [
        ("model.joblib", "application/octet-stream"),
        ("metrics.json", "application/json"),
        ("report.html", "text/html"),
        ("x.csv", "text/csv"),
    ],
)
def test_mime_type_of_known_artifacts(name: str, mime: str):
    assert mime_type_of(Path(name)) == mime
