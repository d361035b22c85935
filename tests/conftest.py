"""Fixtures shared by the whole suite: the bundled CSV, free ports, a static HTTP server, a live service."""

from __future__ import annotations

import contextlib
import functools
import http.server
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from tests.postgres import PostgresCluster, postgres_cluster
from tests.waiting import wait_until

# One BLAS/OpenMP thread per process, set before numpy is loaded and inherited by the xdist workers and by
# every process a test starts. The fits are tiny (hundreds of rows): a second thread gains nothing, and with
# two test processes on two cores each one's threads spin waiting for a core the other holds, which made
# every scikit-learn fit several times slower. The results do not depend on it.
for _variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(_variable, "1")

ROOT = Path(__file__).resolve().parents[1]
BUNDLED_CSV = ROOT / "etl" / "data" / "BreastCancer.csv"
BUNDLED_SHA256 = "7efcfc593f86f3d898df92a8fec32e64ce84195647bd3a8a2d48c68c005767f4"  # etl/data/README.md


@pytest.fixture(scope="session")
def bundled_csv() -> Path:
    if not BUNDLED_CSV.is_file():
        pytest.fail(f"the bundled dataset is missing: {BUNDLED_CSV}")
    return BUNDLED_CSV


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    """Terminate a server process, and kill it if it has not exited within ``timeout`` seconds."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@contextlib.contextmanager
def static_server(directory: Path) -> Iterator[str]:
    """Serve ``directory`` over HTTP on 127.0.0.1; yields the base URL."""
    handler = functools.partial(_QuietHandler, directory=str(directory))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    # shutdown() waits for the loop to look at its flag: every 0.05 s rather than the default 0.5 s
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def csv_url(bundled_csv: Path) -> Iterator[str]:
    """The bundled CSV served over a real local HTTP server."""
    with static_server(bundled_csv.parent) as base:
        yield f"{base}/{bundled_csv.name}"


@dataclass
class Service:
    """A real uvicorn process running the service on loopback."""

    url: str
    workdir: Path
    env: dict[str, str]
    proc: subprocess.Popen[bytes]
    log_path: Path
    token: str = ""
    extra: dict[str, object] = field(default_factory=dict)

    @property
    def results_dir(self) -> Path:
        return Path(self.env["RESULTS_DIR"])

    @property
    def upload_dir(self) -> Path:
        return Path(self.env["UPLOAD_DIR"])

    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> None:
        stop_process(self.proc)


def start_service(
    workdir: Path,
    *,
    data_url: str,
    token: str = "",
    extra_env: dict[str, str] | None = None,
    wait_ready: bool = False,
    timeout: float = 60.0,
    port: int | None = None,
) -> Service:
    """Start the service as production does (``python -m app``) on a free loopback port, state in ``workdir``.

    ``python -m app`` is the one uvicorn configuration (HTTP protocol with bounded request heads, logging,
    no access log), so the tests exercise the settings users run.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "WORKERS": "1",
        "DATA_URL": data_url,
        "DATA_DIR": str(workdir / "data"),
        "RESULTS_DIR": str(workdir / "results"),
        "UPLOAD_DIR": str(workdir / "upload"),
        "API_TOKEN": token,
        "MODEL_POLL_SECONDS": "0.2",
        "LOG_LEVEL": "INFO",
        **(extra_env or {}),
    }
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    log_path = workdir / f"service-{port}.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "app"],
        cwd=workdir,
        env=env,
        stdout=log_path.open("wb"),
        stderr=subprocess.STDOUT,
    )
    service = Service(f"http://127.0.0.1:{port}", workdir, env, proc, log_path, token)
    wait_for(service, "/ready" if wait_ready else "/health", timeout)
    return service


def wait_for(service: Service, path: str, timeout: float) -> None:
    """Until ``path`` answers 200; a service that exits (or never answers) is stopped and its log shown."""

    def answers() -> bool:
        if service.proc.poll() is not None:
            raise RuntimeError(f"service exited with {service.proc.returncode}:\n{service.log()}")
        return httpx.get(service.url + path, timeout=2).status_code == 200

    try:
        wait_until(
            answers,
            timeout,
            lambda: f"200 on {path}:\n{service.log()}",
            interval=0.1,
            ignore=(httpx.TransportError,),
        )
    except BaseException:
        service.stop()
        raise


@pytest.fixture
def live_service(tmp_path: Path, csv_url: str) -> Iterator[Service]:
    """A real service with no model yet, data served over local HTTP, token required."""
    service = start_service(tmp_path / "svc", data_url=csv_url, token="test-token-0123456789")
    try:
        yield service
    finally:
        service.stop()


# --- databases ---------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresCluster]:
    """A private PostgreSQL cluster for the session (tests/postgres.py)."""
    with postgres_cluster() as cluster:
        yield cluster


_DATABASES = 0


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.integration)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty database for one test: an SQLite file, or a new database on the private PostgreSQL."""
    global _DATABASES
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'test.sqlite3'}"
    _DATABASES += 1
    cluster: PostgresCluster = request.getfixturevalue("postgres")
    return cluster.create_database(f"test_{os.getpid()}_{_DATABASES}")
