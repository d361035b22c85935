"""A private PostgreSQL cluster for the tests (Debian package ``postgresql``; ``make system-deps``).

``initdb`` makes a cluster in a temporary folder and ``pg_ctl`` runs it on 127.0.0.1 on a free port, with
its socket in the same folder, password authentication over TCP and a generated superuser password: the
service reaches it as it reaches the compose stack's PostgreSQL. PostgreSQL refuses to run as root, so as
root every command runs as the ``postgres`` user (``runuser``) and the folder belongs to that user.
``stop()`` and ``start()`` take the server down and bring it back on the same port and data (an outage).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

SUPERUSER = "postgres"


def _bindir() -> Path:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parts[-3]))
    if not found:
        pytest.fail("PostgreSQL is not installed: run `make system-deps` (Debian package postgresql)")
    return found[-1].parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class PostgresCluster:
    root: Path
    port: int
    password: str
    bindir: Path
    as_user: list[str]

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def log_path(self) -> Path:
        return self.root / "server.log"

    def _run(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*self.as_user, *args], capture_output=True, text=True, timeout=timeout, check=False
        )

    def _check(self, *args: str, timeout: float = 120) -> None:
        result = self._run(*args, timeout=timeout)
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(args)} failed:\n{result.stdout}\n{result.stderr}\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def start(self) -> None:
        options = f"-c listen_addresses=127.0.0.1 -c port={self.port} -c unix_socket_directories={self.root}"
        self._check(
            str(self.bindir / "pg_ctl"), "start", "-w", "-t", "60", "-D", str(self.data),
            "-l", str(self.log_path), "-o", options,
        )  # fmt: skip

    def stop(self) -> None:
        self._check(str(self.bindir / "pg_ctl"), "stop", "-w", "-t", "60", "-m", "fast", "-D", str(self.data))

    def url(self, database: str = "postgres", user: str = SUPERUSER, password: str | None = None) -> str:
        password = self.password if password is None else password
        return f"postgresql://{user}:{password}@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str, owner: str = SUPERUSER) -> str:
        """A new empty database (dropped first if it exists); returns its URL for the superuser."""
        self.sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        self.sql(f'CREATE DATABASE "{name}" OWNER "{owner}"')
        return self.url(name)

    def sql(self, statement: str, database: str = "postgres") -> str:
        """Run one statement as the superuser over the cluster's socket; returns psql's plain output."""
        result = subprocess.run(
            ["psql", "-h", str(self.root), "-p", str(self.port), "-U", SUPERUSER, "-d", database, "-X", "-A",
             "-t", "-v", "ON_ERROR_STOP=1", "-c", statement],
            capture_output=True, text=True, timeout=60, check=False,
            env={**os.environ, "PGPASSWORD": self.password},
        )  # fmt: skip
        if result.returncode != 0:
            raise RuntimeError(f"psql failed on {statement!r}: {result.stderr}")
        return result.stdout.strip()


@contextlib.contextmanager
def postgres_cluster() -> Iterator[PostgresCluster]:
    """A running private cluster, removed afterwards."""
    bindir = _bindir()
    root = Path(tempfile.mkdtemp(prefix="bcd-pg-"))
    as_user: list[str] = []
    if os.geteuid() == 0:
        try:
            account = pwd.getpwnam("postgres")
        except KeyError:
            pytest.fail("running as root and there is no postgres user (the postgresql package makes one)")
        os.chown(root, account.pw_uid, account.pw_gid)
        as_user = ["runuser", "-u", "postgres", "--"]
    password = secrets.token_urlsafe(24)
    pwfile = root / "pwfile"
    pwfile.write_text(password + "\n")
    if as_user:
        os.chown(pwfile, account.pw_uid, account.pw_gid)
    cluster = PostgresCluster(root, _free_port(), password, bindir, as_user)
    try:
        cluster._check(
            str(bindir / "initdb"), "-D", str(cluster.data), "-U", SUPERUSER, f"--pwfile={pwfile}",
            "--auth-host=scram-sha-256", "--auth-local=scram-sha-256", "-E", "UTF8", "--no-sync",
        )  # fmt: skip
        pwfile.unlink()
        # fsync off: the tests kill and restart the server, never the machine
        with (cluster.data / "postgresql.conf").open("a") as conf:
            conf.write("\nfsync = off\nsynchronous_commit = off\nfull_page_writes = off\n")
        cluster.start()
        yield cluster
    finally:
        if (cluster.data / "postmaster.pid").exists():
            with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
                cluster.stop()
        shutil.rmtree(root, ignore_errors=True)
