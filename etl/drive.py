"""Upload files into a timestamped Google Drive folder: google-auth + google-api-python-client (Drive v3).

What it guarantees:

- every call passes ``supportsAllDrives=True`` (and listings ``includeItemsFromAllDrives=True``), so a folder
  in a Shared Drive works the same as one shared from a user's My Drive;
- media goes up through resumable sessions; after a dropped connection the session is asked how far it got
  and continues from there, so nothing is uploaded twice;
- the size and ``md5Checksum`` Drive reports for each file must equal the local file's;
- transient failures (429, 500, 502, 503, 504, Drive's rate-limit 403s, connection resets, timeouts) are
  retried with exponential backoff and jitter, bounded per step in count and overall in time; then
  ``StorageError`` names the step that failed;
- it is idempotent: the caller persists the progress reported through ``on_progress`` (folder name before
  the folder is created, its id right after, each file id after its upload) and hands it back as
  ``previous``; a re-run reuses that folder (or finds it by name when its id was never recorded) and skips
  every file already there whole (same name, size and md5);
- configuration problems (key file, folder access, storage quota) raise ``DriveConfigError`` with the fix.

Key material and tokens never reach a log line or an error message: messages name the key *file* and the
account's ``client_email`` only.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import logging
import mimetypes
import random
import ssl
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import google_auth_httplib2
import httplib2
from google.auth import exceptions as auth_exceptions
from google.auth.credentials import Credentials
from google.oauth2 import credentials as user_credentials
from google.oauth2 import service_account
from googleapiclient.discovery import build
from googleapiclient.errors import HttpError
from googleapiclient.http import MediaFileUpload

from etl.errors import DriveConfigError, StorageError

log = logging.getLogger(__name__)

T = TypeVar("T")

FOLDER_MIME = "application/vnd.google-apps.folder"
DRIVE_SCOPE = "https://www.googleapis.com/auth/drive"
CHUNK_UNIT = 256 * 1024  # resumable chunks must be multiples of 256 KiB (Drive API rule)
DEFAULT_CHUNK_SIZE = 32 * CHUNK_UNIT  # 8 MiB
TRANSIENT_STATUSES = frozenset({429, 500, 502, 503, 504})
RATE_LIMIT_REASONS = frozenset({"rateLimitExceeded", "userRateLimitExceeded"})
NO_ACCESS_REASONS = frozenset({"insufficientFilePermissions", "forbidden", "appNotAuthorizedToFile"})
KNOWN_MIME_TYPES = {".joblib": "application/octet-stream", ".json": "application/json", ".csv": "text/csv"}
EXPECTED_KEY = (
    'a Google service-account JSON key ("type": "service_account", from IAM > Service accounts > Keys) '
    'or an OAuth user credential ("type": "authorized_user")'
)


@dataclass(frozen=True)
class DriveFile:
    name: str
    id: str
    size: int
    md5: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class DriveResult:
    """What was uploaded where. ``skipped`` lists files that were already in the folder whole."""

    folder_id: str
    folder_name: str
    files: list[DriveFile]
    retries: int
    duration_seconds: float
    reused_folder: bool = False
    skipped: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "folder_id": self.folder_id,
            "folder_name": self.folder_name,
            "files": [f.to_dict() for f in self.files],
            "retries": self.retries,
            "duration_seconds": self.duration_seconds,
            "reused_folder": self.reused_folder,
            "skipped": list(self.skipped),
        }


@dataclass(frozen=True)
class RetryPolicy:
    """At most ``retries`` retries per step, all of them within ``max_seconds`` of the upload's start.

    The n-th retry waits ``base_seconds * 2**(n-1)`` (capped at ``max_delay``), with "equal jitter": a uniform
    draw from the upper half of that delay, so parallel clients spread out without ever retrying at once.
    """

    retries: int = 5
    max_seconds: float = 120.0
    base_seconds: float = 1.0
    max_delay: float = 30.0


# -- credentials ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class LoadedCredentials:
    credentials: Credentials
    kind: str  # "service_account" | "authorized_user"
    principal: str  # who must have access to the folder (client_email, the impersonated user, ...)


def load_credentials(
    path: Path, scopes: Sequence[str], impersonate: str | None = None, token_uri: str | None = None
) -> LoadedCredentials:
    """Read a service-account key (optionally with domain-wide delegation) or an authorized-user file.

    ``token_uri`` overrides the token endpoint (tests): a service-account key names its own, but google-auth
    always sends authorized-user refreshes to Google's.

    Raises:
        DriveConfigError: the file is missing, unreadable, not JSON, or not one of the two Google types.
            The message names the path and the expected type, never the file's contents.
    """
    path = Path(path)
    if path.is_dir():
        raise _key_error(
            f"Google credentials file {path} is a directory (docker creates one when the file it should "
            f"mount is missing); expected {EXPECTED_KEY}"
        )
    if not path.is_file():
        raise _key_error(
            f"Google credentials file not found: {path} (GOOGLE_APPLICATION_CREDENTIALS). "
            f"Expected {EXPECTED_KEY}; see secrets/README.md for how to create one."
        )
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise _key_error(
            f"{path} is not a Google credentials file (not a JSON text file; a .p12 key is not supported); "
            f"expected {EXPECTED_KEY}"
        ) from None
    except OSError as exc:
        raise _key_error(
            f"Google credentials file {path} cannot be read ({exc.strerror or type(exc).__name__}); "
            f"expected {EXPECTED_KEY}"
        ) from None
    try:
        info = json.loads(text)
    except ValueError:
        info = None
    if not isinstance(info, dict):
        raise _key_error(
            f"{path} is not a Google credentials file (not a JSON object); expected {EXPECTED_KEY}"
        )
    kind = info.get("type")
    if kind == "service_account":
        try:
            sa = service_account.Credentials.from_service_account_info(info, scopes=list(scopes))
        except (ValueError, TypeError, KeyError) as exc:
            raise _key_error(
                f"{path} is not a usable Google service-account key ({_safe_reason(exc)}); "
                f"expected {EXPECTED_KEY}"
            ) from None
        email = sa.service_account_email
        if token_uri:
            sa = sa.with_token_uri(token_uri)
        if impersonate:
            return LoadedCredentials(sa.with_subject(impersonate), "service_account", impersonate)
        return LoadedCredentials(sa, "service_account", email)
    if kind == "authorized_user":
        if impersonate:
            raise _key_error(
                f"GDRIVE_IMPERSONATE is set but {path} is an OAuth user credential; domain-wide delegation "
                "needs a service-account key"
            )
        try:
            user = user_credentials.Credentials.from_authorized_user_info(info, scopes=list(scopes))
        except (ValueError, TypeError, KeyError) as exc:
            raise _key_error(
                f"{path} is not a usable OAuth user credential ({_safe_reason(exc)}); expected {EXPECTED_KEY}"
            ) from None
        if token_uri:
            user = user.with_token_uri(token_uri)
        return LoadedCredentials(user, "authorized_user", f"the Google account that authorised {path}")
    shown = kind if isinstance(kind, str) and len(kind) <= 40 else "missing"
    raise _key_error(
        f'{path} is not a Google credentials file (its "type" is {shown!r}); expected {EXPECTED_KEY}'
    )


def _key_error(message: str) -> DriveConfigError:
    return DriveConfigError(message, step="read credentials")


def _safe_reason(exc: BaseException) -> str:
    """google-auth names missing fields; anything from the key parser becomes a generic note."""
    text = str(exc)
    if "missing fields" in text or "not in the expected format" in text:
        return text.split("\n", 1)[0][:200]
    return "the private key or a required field could not be parsed"


# -- errors --------------------------------------------------------------------------------------
def _error_reasons(exc: HttpError) -> set[str]:
    try:
        data = json.loads(exc.content.decode("utf-8"))
        return {str(e.get("reason")) for e in data["error"]["errors"]}
    except (ValueError, KeyError, TypeError, AttributeError):
        return set()


def is_transient(exc: BaseException) -> bool:
    """Worth retrying: throttling, server errors, dropped connections, timeouts."""
    if isinstance(exc, HttpError):
        status = exc.resp.status
        return status in TRANSIENT_STATUSES or (
            status == 403 and bool(_error_reasons(exc) & RATE_LIMIT_REASONS)
        )
    if isinstance(exc, auth_exceptions.TransportError):
        return True
    if isinstance(exc, auth_exceptions.RefreshError):
        return bool(getattr(exc, "retryable", False))
    return isinstance(
        exc,
        (
            TimeoutError,  # socket.timeout is an alias
            ConnectionError,  # reset, refused, aborted, broken pipe
            http.client.HTTPException,  # incomplete read, remote end closed
            ssl.SSLEOFError,  # the peer vanished in the middle of TLS
            ssl.SSLZeroReturnError,
        ),
    )


def describe(exc: BaseException) -> str:
    """A one-line account of an error, with no URL (resumable session URLs are capabilities)."""
    if isinstance(exc, HttpError):
        reasons = ", ".join(sorted(_error_reasons(exc))) or exc.resp.reason
        return f"HTTP {exc.resp.status} {reasons}: {exc.reason}"
    if isinstance(exc, auth_exceptions.RefreshError):
        return f"token request refused: {str(exc.args[0] if exc.args else exc)[:200]}"
    return f"{type(exc).__name__}: {str(exc)[:200]}" if str(exc) else type(exc).__name__


class _Retrier:
    """Runs one step at a time, retrying transient errors under one ``RetryPolicy`` and one clock."""

    def __init__(
        self,
        policy: RetryPolicy,
        *,
        sleep: Callable[[float], None] = time.sleep,
        rand: Callable[[], float] = random.random,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.policy = policy
        self.retries = 0
        self._clock = clock
        self.started = clock()
        self._sleep = sleep
        self._rand = rand

    def call(self, step: str, fn: Callable[[], T]) -> T:
        attempt = 0
        while True:
            try:
                return fn()
            except Exception as exc:
                if not is_transient(exc):
                    raise
                attempt += 1
                delay = min(self.policy.max_delay, self.policy.base_seconds * 2 ** (attempt - 1))
                delay = delay / 2 + self._rand() * delay / 2
                elapsed = self._clock() - self.started
                if attempt > self.policy.retries or elapsed + delay > self.policy.max_seconds:
                    raise StorageError(
                        f"Google Drive kept failing with transient errors, last {describe(exc)} "
                        f"({elapsed:.1f}s; limits {self.policy.retries} retries per step, "
                        f"{self.policy.max_seconds:g}s in all)",
                        step=step,
                        retries=self.retries,
                    ) from exc
                self.retries += 1
                log.warning(
                    "drive %s: transient error (%s); retry %d/%d in %.2fs",
                    step,
                    describe(exc),
                    attempt,
                    self.policy.retries,
                    delay,
                )
                self._sleep(delay)


# -- the upload ----------------------------------------------------------------------------------
def file_md5(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with path.open("rb") as fh:
        while block := fh.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def mime_type_of(path: Path) -> str:
    return (
        KNOWN_MIME_TYPES.get(path.suffix.lower())
        or mimetypes.guess_type(path.name)[0]
        or ("application/octet-stream")
    )


def _quote(value: str) -> str:
    """A string literal for a Drive ``q`` query."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def build_drive_service(credentials: Credentials, http: httplib2.Http, *, api_endpoint: str | None) -> Any:
    """A Drive v3 client over ``http``, from the discovery document shipped with googleapiclient (no network
    fetch). ``api_endpoint`` replaces Google's base URL ``https://www.googleapis.com/drive/v3/`` (tests)."""
    authed = google_auth_httplib2.AuthorizedHttp(credentials, http=http)
    return build(
        "drive",
        "v3",
        http=authed,
        cache_discovery=False,
        static_discovery=True,
        client_options={"api_endpoint": api_endpoint} if api_endpoint else None,
    )


def upload_to_drive(
    files: Sequence[Path],
    *,
    folder_name: str,
    parent_folder_id: str,
    credentials_path: Path,
    scopes: Sequence[str] = (DRIVE_SCOPE,),
    impersonate: str | None = None,
    api_endpoint: str | None = None,
    token_uri: str | None = None,
    ca_bundle: Path | None = None,
    timeout: float = 60.0,
    retry: RetryPolicy | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    previous: dict[str, Any] | None = None,
    on_progress: Callable[[dict[str, Any]], None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> DriveResult:
    """Upload ``files`` into the subfolder ``folder_name`` of the Drive folder ``parent_folder_id``.

    Args:
        files: local files; each keeps its name in Drive.
        folder_name: the subfolder to create (ignored when ``previous`` names a folder already made).
        parent_folder_id: GDRIVE_FOLDER_ID.
        credentials_path: service-account key or authorized-user file (GOOGLE_APPLICATION_CREDENTIALS).
        scopes: OAuth scopes (the full ``drive`` scope: ``drive.file`` cannot add to a folder the account
            did not create).
        impersonate: a Workspace user to act as (domain-wide delegation); service-account keys only.
        api_endpoint: Drive base URL override, ``https://host:port/drive/v3/`` (tests); None = Google.
        token_uri: OAuth2 token endpoint override (tests); None = the credentials' own (Google's).
        ca_bundle: PEM of CAs to trust instead of httplib2's bundle (tests); None = default.
        timeout: socket timeout of each HTTP request, seconds.
        retry: bounds of the retries of transient failures.
        chunk_size: resumable chunk size, a multiple of 256 KiB.
        previous: the progress recorded by an earlier attempt for the same files (see ``on_progress``).
        on_progress: called with the progress dict (``parent_folder_id``, ``folder_name``, ``folder_id``,
            ``files``: {name: {id, size, md5}}, ``status``) before the folder is created, after it is,
            and after each file; persist it and pass it back as ``previous``.
        sleep: the backoff sleep (tests may pass a recorder).

    Returns:
        DriveResult with the folder, the files (uploaded or found whole), retries and duration.

    Raises:
        DriveConfigError: bad key file, folder missing or not writable, storage quota, rejected credentials.
        StorageError: a step kept failing with transient errors past the retry bounds, or a verification
            mismatch; ``step`` names it.
    """
    if chunk_size <= 0 or chunk_size % CHUNK_UNIT:
        raise ValueError(f"chunk_size must be a positive multiple of {CHUNK_UNIT} bytes, got {chunk_size}")
    started = time.monotonic()
    loaded = load_credentials(credentials_path, scopes, impersonate, token_uri)
    # one connection pool for the token endpoint and the API; ``timeout`` bounds every socket wait
    http = httplib2.Http(timeout=timeout, ca_certs=str(ca_bundle) if ca_bundle else None)
    # Drive answers 308 "Resume Incomplete" to resumable chunks; it is no redirect (googleapiclient's own
    # build_http() does the same)
    http.redirect_codes = http.redirect_codes - {308}
    service = build_drive_service(loaded.credentials, http, api_endpoint=api_endpoint)
    retrier = _Retrier(retry or RetryPolicy(), sleep=sleep)
    ctx = _Context(parent_folder_id, loaded, credentials_path)

    try:
        state: dict[str, Any] = {}
        if previous and previous.get("parent_folder_id") == parent_folder_id:
            state = {k: previous.get(k) for k in ("folder_name", "folder_id")}
            state["files"] = dict(previous.get("files") or {})
        state.update(parent_folder_id=parent_folder_id, status="in_progress")
        state.setdefault("files", {})

        def progress() -> None:
            if on_progress is not None:
                on_progress(json.loads(json.dumps(state)))

        try:
            http_step = "authenticate"  # a token now, so credential problems surface as their own step
            retrier.call(http_step, lambda: loaded.credentials.refresh(google_auth_httplib2.Request(http)))
            http_step = "check folder"
            retrier.call(http_step, lambda: _check_parent(service, parent_folder_id, ctx))

            folder_id, reused = None, False
            if state.get("folder_id"):
                http_step = "find folder"
                folder_id = retrier.call(
                    http_step, lambda: _existing_folder(service, state["folder_id"], ctx)
                )
                reused = folder_id is not None
            if folder_id is None:
                name = state.get("folder_name") or folder_name
                state.update(folder_name=name, folder_id=None, files={})
                progress()  # the name is on record before the folder exists, so a crash cannot orphan it
                http_step = "create folder"
                folder_id, found = retrier.call(http_step, lambda: _find_or_create_folder(service, name, ctx))
                reused = reused or found
                state["folder_id"] = folder_id
                progress()
            log.info(
                "drive folder %s (%s) in %s %s",
                state["folder_name"],
                folder_id,
                parent_folder_id,
                "reused" if reused else "created",
            )

            http_step = "list folder"
            existing = retrier.call(http_step, lambda: _list_files(service, folder_id))
            results: list[DriveFile] = []
            skipped: list[str] = []
            for path in files:
                path = Path(path)
                size, md5 = path.stat().st_size, file_md5(path)
                same = [f for f in existing.get(path.name, []) if f.size == size and f.md5 == md5]
                if same:
                    drive_file = same[0]
                    skipped.append(path.name)
                    log.info(
                        "drive %s already in folder %s whole (id %s); not uploaded again",
                        path.name,
                        folder_id,
                        drive_file.id,
                    )
                else:
                    if existing.get(path.name):
                        log.warning(
                            "drive folder %s holds a %s with other content; uploading this one beside it",
                            folder_id,
                            path.name,
                        )
                    http_step = f"upload {path.name}"
                    t0 = time.monotonic()
                    drive_file = _upload_file(service, retrier, http_step, folder_id, path, chunk_size, ctx)
                    if drive_file.size != size or drive_file.md5 != md5:
                        raise StorageError(
                            f"Google Drive reports size {drive_file.size} and md5 {drive_file.md5} for "
                            f"{path.name} (file {drive_file.id}); the local file has size {size} and "
                            f"md5 {md5}",
                            step=f"verify {path.name}",
                            retries=retrier.retries,
                        )
                    log.info(
                        "drive uploaded %s: id %s, %d bytes, md5 %s verified, %.2fs",
                        path.name,
                        drive_file.id,
                        size,
                        md5,
                        time.monotonic() - t0,
                    )
                results.append(drive_file)
                state["files"][path.name] = {
                    "id": drive_file.id,
                    "size": drive_file.size,
                    "md5": drive_file.md5,
                }
                progress()
        except HttpError as exc:
            raise _config_error(exc, http_step, ctx, retrier.retries) from None
        except auth_exceptions.RefreshError as exc:
            raise _auth_error(exc, ctx, retrier.retries) from None

        state["status"] = "uploaded"
        progress()
        duration = round(time.monotonic() - started, 3)
        log.info(
            "drive upload done: folder %s (%s), %d file(s) [%s], %d skipped, %d retries, %.2fs",
            state["folder_name"],
            folder_id,
            len(results),
            ", ".join(f"{f.name}={f.id} ({f.size} B)" for f in results),
            len(skipped),
            retrier.retries,
            duration,
        )
        return DriveResult(
            folder_id=folder_id,
            folder_name=state["folder_name"],
            files=results,
            retries=retrier.retries,
            duration_seconds=duration,
            reused_folder=reused,
            skipped=skipped,
        )
    finally:
        for conn in list(http.connections.values()):
            conn.close()  # no keep-alive sockets outlive the upload


@dataclass(frozen=True)
class _Context:
    parent_folder_id: str
    creds: LoadedCredentials
    credentials_path: Path


def _check_parent(service: Any, parent_folder_id: str, ctx: _Context) -> None:
    meta = (
        service.files()
        .get(
            fileId=parent_folder_id,
            fields="id,name,mimeType,trashed,capabilities(canAddChildren)",
            supportsAllDrives=True,
        )
        .execute()
    )
    if meta.get("mimeType") != FOLDER_MIME or meta.get("trashed"):
        raise DriveConfigError(
            f"GDRIVE_FOLDER_ID={parent_folder_id} is not a folder (or is in the trash); set it to the id "
            "of a Drive folder (the last part of its URL, https://drive.google.com/drive/folders/<id>)",
            step="check folder",
        )
    if not (meta.get("capabilities") or {}).get("canAddChildren", False):
        raise DriveConfigError(_no_access_message(ctx, "can see but not write to"), step="check folder")


def _existing_folder(service: Any, folder_id: str, ctx: _Context) -> str | None:
    """The recorded folder's id if it still exists (not trashed) inside the parent, else None."""
    try:
        meta = (
            service.files()
            .get(fileId=folder_id, fields="id,trashed,parents,mimeType", supportsAllDrives=True)
            .execute()
        )
    except HttpError as exc:
        if exc.resp.status == 404:
            log.warning("drive folder %s recorded earlier no longer exists; making a new one", folder_id)
            return None
        raise
    if meta.get("trashed") or ctx.parent_folder_id not in (meta.get("parents") or []):
        log.warning("drive folder %s recorded earlier is trashed or moved; making a new one", folder_id)
        return None
    return str(meta["id"])


def _find_folder(service: Any, name: str, ctx: _Context) -> str | None:
    q = (
        f"name = {_quote(name)} and {_quote(ctx.parent_folder_id)} in parents and "
        f"mimeType = '{FOLDER_MIME}' and trashed = false"
    )
    found = _list(service, q, "id,name,createdTime")
    if not found:
        return None
    if len(found) > 1:
        log.warning(
            "drive parent %s holds %d folders named %s; using the oldest",
            ctx.parent_folder_id,
            len(found),
            name,
        )
    return str(found[0]["id"])


def _find_or_create_folder(service: Any, name: str, ctx: _Context) -> tuple[str, bool]:
    """Look before creating, on every attempt: a create whose response was lost must not make a twin."""
    existing = _find_folder(service, name, ctx)
    if existing is not None:
        return existing, True
    body = {"name": name, "mimeType": FOLDER_MIME, "parents": [ctx.parent_folder_id]}
    created = service.files().create(body=body, fields="id,name", supportsAllDrives=True).execute()
    return str(created["id"]), False


def _list(service: Any, q: str, file_fields: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    token: str | None = None
    while True:
        page = (
            service.files()
            .list(
                q=q,
                fields=f"nextPageToken,files({file_fields})",
                orderBy="createdTime",
                pageSize=100,
                pageToken=token,
                supportsAllDrives=True,
                includeItemsFromAllDrives=True,
            )
            .execute()
        )
        items.extend(page.get("files", []))
        token = page.get("nextPageToken")
        if not token:
            return items


def _list_files(service: Any, folder_id: str) -> dict[str, list[DriveFile]]:
    q = f"{_quote(folder_id)} in parents and mimeType != '{FOLDER_MIME}' and trashed = false"
    by_name: dict[str, list[DriveFile]] = {}
    for item in _list(service, q, "id,name,size,md5Checksum"):
        by_name.setdefault(item["name"], []).append(
            DriveFile(item["name"], item["id"], int(item.get("size", -1)), str(item.get("md5Checksum", "")))
        )
    return by_name


def _upload_file(
    service: Any, retrier: _Retrier, step: str, folder_id: str, path: Path, chunk_size: int, ctx: _Context
) -> DriveFile:
    media = MediaFileUpload(str(path), mimetype=mime_type_of(path), resumable=True, chunksize=chunk_size)
    request = service.files().create(
        body={"name": path.name, "parents": [folder_id]},
        media_body=media,
        fields="id,name,size,md5Checksum",
        supportsAllDrives=True,
    )
    response = None
    try:
        while response is None:
            # after an error the next call first asks the session how far it got, then sends the rest
            status, response = retrier.call(step, lambda: request.next_chunk(num_retries=0))
            if status is not None:
                log.debug("drive %s: %d%% sent", path.name, int(status.progress() * 100))
    finally:
        media.stream().close()
    return DriveFile(
        str(response["name"]),
        str(response["id"]),
        int(response.get("size", -1)),
        str(response.get("md5Checksum")),
    )


# -- actionable errors ---------------------------------------------------------------------------
def _no_access_message(ctx: _Context, what: str) -> str:
    who = ctx.creds.principal
    if ctx.creds.kind == "service_account":
        how = (
            f"share the folder with {who} as Editor (Share > add {who}), or, in a Shared Drive, add {who} "
            "as a Content manager member"
        )
    else:
        how = "share the folder with that Google account as Editor"
    return (
        f"Google Drive folder GDRIVE_FOLDER_ID={ctx.parent_folder_id} was not found, or {who} {what} it: "
        f"check GDRIVE_FOLDER_ID and {how}"
    )


def _quota_message(ctx: _Context) -> str:
    who = ctx.creds.principal
    return (
        f"Google Drive refused the upload with storageQuotaExceeded: service accounts have no storage of "
        f"their own in a user's My Drive, so {who} cannot own files in a folder that is merely shared with "
        f"it. Fix one of: put GDRIVE_FOLDER_ID in a Shared Drive and add {who} as a member "
        "(Content manager); "
        "or use domain-wide delegation (GDRIVE_IMPERSONATE=<user in your Workspace domain>) so the files "
        'count against that user\'s storage; or use an OAuth user credential ("type": "authorized_user") '
        "in GOOGLE_APPLICATION_CREDENTIALS"
    )


def _config_error(exc: HttpError, step: str, ctx: _Context, retries: int) -> StorageError:
    """Turn a non-transient Drive answer into the error that says what to fix."""
    status, reasons = exc.resp.status, _error_reasons(exc)
    if "storageQuotaExceeded" in reasons:
        return DriveConfigError(_quota_message(ctx), step=step, retries=retries)
    if status == 401:
        return DriveConfigError(
            f"Google Drive rejected the access token of {ctx.creds.principal} ({describe(exc)}); check "
            f"the credentials in {ctx.credentials_path}",
            step=step,
            retries=retries,
        )
    in_folder_step = step in ("check folder", "create folder") or step.startswith("upload ")
    if status == 404 and in_folder_step:
        return DriveConfigError(_no_access_message(ctx, "has no access to"), step=step, retries=retries)
    if status == 403 and (reasons & NO_ACCESS_REASONS or step in ("check folder", "create folder")):
        return DriveConfigError(
            _no_access_message(ctx, "is not allowed to add files to"), step=step, retries=retries
        )
    if status == 403:
        return DriveConfigError(
            f"Google Drive refused {ctx.creds.principal} ({describe(exc)}): check that it may write to "
            f"GDRIVE_FOLDER_ID={ctx.parent_folder_id} and that the Drive API is enabled in its project",
            step=step,
            retries=retries,
        )
    return StorageError(f"Google Drive answered {describe(exc)}", step=step, retries=retries)


def _auth_error(exc: auth_exceptions.RefreshError, ctx: _Context, retries: int) -> DriveConfigError:
    hint = ""
    if ctx.creds.kind == "service_account" and ctx.creds.principal != getattr(
        ctx.creds.credentials, "service_account_email", None
    ):
        hint = (
            f"; for GDRIVE_IMPERSONATE={ctx.creds.principal} a Workspace admin must grant domain-wide "
            "delegation to the service account's client id for the scopes in GDRIVE_SCOPES"
        )
    return DriveConfigError(
        f"Google rejected the credentials in {ctx.credentials_path} ({describe(exc)}): check that the key "
        f"is current (not deleted or rotated) and the account is enabled{hint}",
        step="authenticate",
        retries=retries,
    )
