"""Run the Drive test server with uvicorn over TLS on 127.0.0.1 (a free port), in a background thread.

TLS is needed because google-api-python-client keeps the scheme of the discovery document's media upload
URL (``https://www.googleapis.com/upload/...``) and only swaps in the host of ``api_endpoint``. The
certificate comes from a ``trustme`` test CA whose PEM the client is told to trust (GDRIVE_CA_BUNDLE).
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import trustme
import uvicorn

from tests.drive_server.app import create_drive_app
from tests.drive_server.state import DriveState
from tests.waiting import wait_until


@dataclass
class RunningDriveServer:
    state: DriveState
    base_url: str
    ca_bundle: Path

    @property
    def api_endpoint(self) -> str:
        return self.state.api_endpoint


@contextlib.contextmanager
def run_drive_server(workdir: Path, state: DriveState | None = None) -> Iterator[RunningDriveServer]:
    """Start the server; yield its state, base URL and the CA bundle to trust; stop it on exit."""
    state = state or DriveState()
    ca = trustme.CA()
    server_cert = ca.issue_cert("127.0.0.1")
    workdir.mkdir(parents=True, exist_ok=True)
    cert_path = workdir / "drive-server.pem"
    ca_path = workdir / "drive-test-ca.pem"
    server_cert.private_key_and_cert_chain_pem.write_to_path(str(cert_path))
    ca.cert_pem.write_to_path(str(ca_path))

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    state.base_url = f"https://127.0.0.1:{port}"

    config = uvicorn.Config(
        create_drive_app(state),
        log_level="warning",
        lifespan="off",
        ssl_certfile=str(cert_path),
        timeout_graceful_shutdown=1,
        access_log=False,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True, name="drive-server")
    thread.start()
    wait_until(lambda: server.started or not thread.is_alive(), 15, "the Drive server", interval=0.02)
    if not server.started:
        raise RuntimeError("the Drive test server did not start")
    try:
        yield RunningDriveServer(state=state, base_url=state.base_url, ca_bundle=ca_path)
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


@dataclass
class DriveEnv:
    """A running server plus what a client needs: a parent folder shared with a generated service account."""

    server: RunningDriveServer
    parent_id: str
    key_path: Path
    private_key_pem: str

    @property
    def state(self) -> DriveState:
        return self.server.state

    def settings_overrides(self, **extra: object) -> dict[str, object]:
        """Settings fields that point the project at this server (fast retries for tests)."""
        return {
            "gdrive_folder_id": self.parent_id,
            "google_application_credentials": self.key_path,
            "gdrive_api_endpoint": self.server.api_endpoint,
            "gdrive_token_uri": self.state.token_uri,
            "gdrive_ca_bundle": str(self.server.ca_bundle),
            "drive_retries": 4,
            "drive_retry_base_seconds": 0.01,
            "drive_retry_max_seconds": 30.0,
            "drive_timeout": 2.0,
            "drive_chunk_bytes": 256 * 1024,
        } | extra

    def env(self) -> dict[str, str]:
        """The same as environment variables, for a service started as a subprocess."""
        return {k.upper(): str(v) for k, v in self.settings_overrides().items()}

    def leaked_secrets(self) -> list[str]:
        """Strings that must never appear in a log or a message: the private key's body and every token."""
        body = [line for line in self.private_key_pem.splitlines() if line and "-----" not in line]
        with self.state.lock:
            tokens = list(self.state.tokens)
        return body + tokens


@contextlib.contextmanager
def drive_env(workdir: Path) -> Iterator[DriveEnv]:
    """Start the server with a parent folder ``Model backups`` and a registered service-account key."""
    from tests.drive_server.keys import make_service_account_key

    with run_drive_server(workdir) as server:
        parent = server.state.add_folder("Model backups")
        key_path = workdir / "drive_sa.json"
        pem = make_service_account_key(key_path, server.state)
        yield DriveEnv(server, parent, key_path, pem)
