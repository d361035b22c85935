"""A Drive test server that can go down completely (connection refused) and come back on the same port.

It reuses the Drive test server's app and state (tests/drive_server); only the lifecycle differs: the same
port, certificate and state across a stop and a start, so a running service configured once sees an outage
and a recovery.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import trustme
import uvicorn

from tests.conftest import free_port
from tests.drive_server import DriveEnv, DriveState, RunningDriveServer, make_service_account_key
from tests.drive_server.app import create_drive_app
from tests.waiting import wait_until


class RestartableDrive:
    def __init__(self, workdir: Path) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.state = DriveState()
        ca = trustme.CA()
        self.cert_path = workdir / "drive-server.pem"
        self.ca_path = workdir / "drive-test-ca.pem"
        ca.issue_cert("127.0.0.1").private_key_and_cert_chain_pem.write_to_path(str(self.cert_path))
        ca.cert_pem.write_to_path(str(self.ca_path))
        self.port = free_port()
        self.state.base_url = f"https://127.0.0.1:{self.port}"
        parent = self.state.add_folder("Model backups")
        key_path = workdir / "drive_sa.json"
        pem = make_service_account_key(key_path, self.state)
        self.env = DriveEnv(
            RunningDriveServer(self.state, self.state.base_url, self.ca_path), parent, key_path, pem
        )
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._sock: socket.socket | None = None

    def start(self) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", self.port))
        config = uvicorn.Config(
            create_drive_app(self.state),
            log_level="warning",
            lifespan="off",
            ssl_certfile=str(self.cert_path),
            timeout_graceful_shutdown=1,
            access_log=False,
        )
        server = uvicorn.Server(config)
        thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
        thread.start()
        wait_until(
            lambda: server.started or not thread.is_alive(),
            15,
            "the Drive test server to start",
            interval=0.02,
        )
        if not server.started:
            raise RuntimeError("the Drive test server did not start")
        self._server, self._thread, self._sock = server, thread, sock

    def stop(self) -> None:
        if self._server is None:
            return
        self._server.should_exit = True
        assert self._thread is not None and self._sock is not None
        self._thread.join(timeout=10)
        self._sock.close()
        self._server = self._thread = self._sock = None

    def service_env(self, **extra: str) -> dict[str, str]:
        """Service environment pointing at this server, with quick retries."""
        return (
            self.env.env()
            | {
                "DRIVE_RETRIES": "2",
                "DRIVE_RETRY_BASE_SECONDS": "0.05",
                "DRIVE_RETRY_MAX_SECONDS": "5",
                "DRIVE_TIMEOUT": "2",
            }
            | extra
        )


@contextlib.contextmanager
def restartable_drive(workdir: Path) -> Iterator[RestartableDrive]:
    drive = RestartableDrive(workdir)
    drive.start()
    try:
        yield drive
    finally:
        drive.stop()
