"""The Drive v3 calls the upload makes, through google-api-python-client.

Every call passes ``supportsAllDrives=True`` (and listings ``includeItemsFromAllDrives=True``), so a folder in
a Shared Drive works the same as one shared from a user's My Drive. Each function is one step's work; the
caller (etl/drive/upload.py) retries and names it.
"""

from __future__ import annotations

import contextlib
import logging
import mimetypes
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import google_auth_httplib2
import httplib2
from google.auth.credentials import Credentials
from googleapiclient.discovery import build
from googleapiclient.errors import HttpError
from googleapiclient.http import MediaFileUpload

from etl.drive.config import DriveConfig
from etl.drive.errors import Target, no_access_message, not_a_folder
from etl.errors import DriveConfigError

log = logging.getLogger(__name__)

FOLDER_MIME = "application/vnd.google-apps.folder"
KNOWN_MIME_TYPES = {
    ".joblib": "application/octet-stream",
    ".json": "application/json",
    ".csv": "text/csv",
    ".html": "text/html",
}


@dataclass(frozen=True)
class DriveFile:
    name: str
    id: str
    size: int
    md5: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


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


@dataclass(frozen=True)
class Session:
    """One connection pool for the token endpoint and the API, and the Drive client over it."""

    http: httplib2.Http
    service: Any

    def authenticate(self, credentials: Credentials) -> None:
        """Fetch a token now, so that credential problems surface as their own step."""
        credentials.refresh(google_auth_httplib2.Request(self.http))


@contextlib.contextmanager
def session(config: DriveConfig, credentials: Credentials) -> Iterator[Session]:
    """A :class:`Session` whose sockets are all closed on exit (no keep-alive outlives the upload)."""
    # ``timeout`` bounds every socket wait
    http = httplib2.Http(timeout=config.timeout, ca_certs=str(config.ca_bundle) if config.ca_bundle else None)
    # Drive answers 308 "Resume Incomplete" to resumable chunks; it is no redirect (googleapiclient's own
    # build_http() does the same)
    http.redirect_codes = http.redirect_codes - {308}
    try:
        yield Session(http, build_drive_service(credentials, http, api_endpoint=config.api_endpoint))
    finally:
        for conn in list(http.connections.values()):
            conn.close()


def check_parent(service: Any, target: Target) -> None:
    """The parent folder exists, is a folder, and the account may add to it.

    Raises:
        DriveConfigError: not a folder (or trashed), or read-only for the account.
    """
    meta = (
        service.files()
        .get(
            fileId=target.parent_folder_id,
            fields="id,name,mimeType,trashed,capabilities(canAddChildren)",
            supportsAllDrives=True,
        )
        .execute()
    )
    if meta.get("mimeType") != FOLDER_MIME or meta.get("trashed"):
        raise not_a_folder(target.parent_folder_id)
    if not (meta.get("capabilities") or {}).get("canAddChildren", False):
        raise DriveConfigError(no_access_message(target, "can see but not write to"), step="check folder")


def existing_folder(service: Any, folder_id: str, parent_folder_id: str) -> str | None:
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
    if meta.get("trashed") or parent_folder_id not in (meta.get("parents") or []):
        log.warning("drive folder %s recorded earlier is trashed or moved; making a new one", folder_id)
        return None
    return str(meta["id"])


def _find_folder(service: Any, name: str, parent_folder_id: str) -> str | None:
    q = (
        f"name = {_quote(name)} and {_quote(parent_folder_id)} in parents and "
        f"mimeType = '{FOLDER_MIME}' and trashed = false"
    )
    found = _list(service, q, "id,name,createdTime")
    if not found:
        return None
    if len(found) > 1:
        log.warning(
            "drive parent %s holds %d folders named %s; using the oldest", parent_folder_id, len(found), name
        )
    return str(found[0]["id"])


def find_or_create_folder(service: Any, name: str, parent_folder_id: str) -> tuple[str, bool]:
    """(id, found): looks before creating, on every attempt, so a create whose response was lost does not
    make a twin."""
    existing = _find_folder(service, name, parent_folder_id)
    if existing is not None:
        return existing, True
    body = {"name": name, "mimeType": FOLDER_MIME, "parents": [parent_folder_id]}
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


def list_files(service: Any, folder_id: str) -> dict[str, list[DriveFile]]:
    """The files in a folder, by name."""
    q = f"{_quote(folder_id)} in parents and mimeType != '{FOLDER_MIME}' and trashed = false"
    by_name: dict[str, list[DriveFile]] = {}
    for item in _list(service, q, "id,name,size,md5Checksum"):
        by_name.setdefault(item["name"], []).append(
            DriveFile(item["name"], item["id"], int(item.get("size", -1)), str(item.get("md5Checksum", "")))
        )
    return by_name


def upload_file(
    service: Any, folder_id: str, path: Path, chunk_size: int, retry: Callable[[Callable[[], Any]], Any]
) -> DriveFile:
    """Send ``path`` through a resumable session, one chunk per ``retry(...)`` call: after an error the next
    call first asks the session how far it got, then sends the rest, so nothing is uploaded twice."""
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
            status, response = retry(lambda: request.next_chunk(num_retries=0))
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
