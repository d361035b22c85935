"""What the Drive test server knows: files and folders, upload sessions, credentials, tokens and faults."""

from __future__ import annotations

import hashlib
import itertools
import secrets
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

FOLDER_MIME = "application/vnd.google-apps.folder"
DRIVE_SCOPE = "https://www.googleapis.com/auth/drive"

# operations a fault can target; "*" matches every one
OPERATIONS = (
    "token",
    "files.get",
    "files.list",
    "files.create",
    "upload.init",
    "upload.chunk",  # a PUT carrying bytes of a resumable session
    "upload.status",  # a PUT asking a resumable session how far it got (Content-Range: bytes */total)
    "upload.multipart",
)


@dataclass
class StoredFile:
    id: str
    name: str
    mime_type: str
    parents: list[str]
    content: bytes = b""
    created_time: str = ""
    trashed: bool = False
    writable: bool = True

    @property
    def is_folder(self) -> bool:
        return self.mime_type == FOLDER_MIME

    @property
    def md5(self) -> str:
        return hashlib.md5(self.content).hexdigest()

    def resource(self) -> dict[str, Any]:
        """Every field Drive v3 would report for this file (filtered later by ``fields``)."""
        body: dict[str, Any] = {
            "kind": "drive#file",
            "id": self.id,
            "name": self.name,
            "mimeType": self.mime_type,
            "parents": list(self.parents),
            "createdTime": self.created_time,
            "trashed": self.trashed,
            "capabilities": {"canAddChildren": self.is_folder and self.writable, "canEdit": self.writable},
        }
        if not self.is_folder:
            body["size"] = str(len(self.content))
            body["md5Checksum"] = self.md5
        return body


@dataclass
class UploadSession:
    id: str
    metadata: dict[str, Any]
    mime_type: str
    total: int | None
    fields: str | None
    received: bytearray = field(default_factory=bytearray)
    file_id: str | None = None


@dataclass
class Fault:
    """One injected failure.

    kind:
      ``status``  answer ``status`` with a Drive-style error body (``reason``) without doing anything;
      ``drop``    do the work (for ``upload.chunk``: keep only the first half of the chunk), send the
                  response headers and part of the body, then close the connection;
      ``slow``    do the work, then wait ``delay`` seconds before answering (past the client timeout).
    """

    op: str
    kind: str = "status"
    status: int = 503
    reason: str = "backendError"
    times: int = 1
    delay: float = 0.0


class DriveState:
    """Thread-safe store behind the test server; tests read it directly."""

    def __init__(self, *, required_scope: str = DRIVE_SCOPE) -> None:
        self.lock = threading.RLock()
        self.base_url = ""
        self.required_scope = required_scope
        self.files: dict[str, StoredFile] = {}
        self.sessions: dict[str, UploadSession] = {}
        self.service_accounts: dict[str, bytes] = {}  # client_email -> public key PEM
        self.oauth_clients: dict[str, tuple[str, str]] = {}  # client_id -> (client_secret, refresh_token)
        self.tokens: dict[str, dict[str, Any]] = {}  # access token -> who it was issued to
        self.faults: list[Fault] = []
        self.fired: list[dict[str, Any]] = []
        self.calls: list[dict[str, Any]] = []
        self.hidden: set[str] = set()
        self.quota_exceeded = False
        self._clock = itertools.count()
        self._epoch = datetime(2026, 1, 1, tzinfo=UTC)

    # -- setup -----------------------------------------------------------------------------------
    @property
    def token_uri(self) -> str:
        return f"{self.base_url}/token"

    @property
    def api_endpoint(self) -> str:
        """The value for ``client_options={"api_endpoint": ...}`` (GDRIVE_API_ENDPOINT)."""
        return f"{self.base_url}/drive/v3/"

    def new_id(self) -> str:
        return "1" + secrets.token_urlsafe(24).replace("-", "x").replace("_", "y")

    def add_folder(self, name: str, parent: str | None = None, *, writable: bool = True) -> str:
        with self.lock:
            folder = StoredFile(
                id=self.new_id(),
                name=name,
                mime_type=FOLDER_MIME,
                parents=[parent] if parent else [],
                created_time=self._now(),
                writable=writable,
            )
            self.files[folder.id] = folder
            return folder.id

    def add_file(
        self, name: str, parent: str, content: bytes, mime_type: str = "application/octet-stream"
    ) -> str:
        with self.lock:
            stored = StoredFile(
                id=self.new_id(),
                name=name,
                mime_type=mime_type,
                parents=[parent],
                content=content,
                created_time=self._now(),
            )
            self.files[stored.id] = stored
            return stored.id

    def register_service_account(self, client_email: str, public_key_pem: bytes) -> None:
        with self.lock:
            self.service_accounts[client_email] = public_key_pem

    def register_oauth_client(self, client_id: str, client_secret: str, refresh_token: str) -> None:
        with self.lock:
            self.oauth_clients[client_id] = (client_secret, refresh_token)

    def inject(
        self,
        op: str,
        kind: str = "status",
        *,
        status: int = 503,
        reason: str = "backendError",
        times: int = 1,
        delay: float = 0.0,
    ) -> None:
        if op != "*" and op not in OPERATIONS:
            raise ValueError(f"unknown operation {op!r}; one of {OPERATIONS}")
        if kind not in ("status", "drop", "slow"):
            raise ValueError(f"unknown fault kind {kind!r}")
        with self.lock:
            self.faults.append(Fault(op, kind, status, reason, times, delay))

    def clear_faults(self) -> None:
        with self.lock:
            self.faults.clear()

    # -- reading ---------------------------------------------------------------------------------
    def children(self, folder_id: str, *, folders: bool | None = None) -> list[StoredFile]:
        with self.lock:
            return [
                f
                for f in self.files.values()
                if folder_id in f.parents and not f.trashed and (folders is None or f.is_folder == folders)
            ]

    def calls_for(self, op: str) -> list[dict[str, Any]]:
        with self.lock:
            return [c for c in self.calls if c["op"] == op]

    # -- used by the app -------------------------------------------------------------------------
    def take_fault(self, op: str) -> Fault | None:
        with self.lock:
            for fault in self.faults:
                if fault.times > 0 and fault.op in (op, "*"):
                    fault.times -= 1
                    self.fired.append({"op": op, "kind": fault.kind, "status": fault.status})
                    if fault.times == 0:
                        self.faults.remove(fault)
                    return fault
        return None

    def _now(self) -> str:
        # strictly increasing creation times, so "oldest first" is well defined
        tick = next(self._clock)
        return (self._epoch + timedelta(seconds=tick)).isoformat().replace("+00:00", "Z")

    def now(self) -> str:
        with self.lock:
            return self._now()
