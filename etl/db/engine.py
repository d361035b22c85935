"""An SQLAlchemy engine from a database URL, set up so that several processes can write at once.

SQLite (the default: a file, nothing to set up) runs in WAL mode, where readers never wait for the writer,
with a busy timeout so that a second writer (another uvicorn worker, the CLI) waits its turn instead of
failing with "database is locked". PostgreSQL is reached with psycopg 3, a bounded connect timeout and a
liveness check of pooled connections, so a restarted server costs one failed statement at most.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

# how long a writer waits for another one's transaction before it gives up (SQLite)
SQLITE_BUSY_TIMEOUT_SECONDS = 10.0
# how long opening a connection may take before the database counts as down (PostgreSQL)
CONNECT_TIMEOUT_SECONDS = 5
# the URL schemes accepted, and the driver each one is run with
_DRIVERS = {
    "sqlite": "sqlite+pysqlite",
    "sqlite+pysqlite": "sqlite+pysqlite",
    "postgresql": "postgresql+psycopg",
    "postgres": "postgresql+psycopg",
    "postgresql+psycopg": "postgresql+psycopg",
}


def sqlite_url(path: Path) -> str:
    """The URL of an SQLite file (made absolute, so it names the same file from any working directory)."""
    return f"sqlite:///{Path(path).resolve()}"


def parse_url(url: str | URL) -> URL:
    """``url`` with its driver made explicit: ``sqlite:`` -> pysqlite, ``postgresql:`` -> psycopg 3.

    Raises:
        ValueError: not a database URL, another database, or an SQLite database that is not a file.
    """
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise ValueError("not a database URL (expected sqlite:///path or postgresql://...)") from None
    driver = _DRIVERS.get(parsed.drivername)
    if driver is None:
        raise ValueError(
            f"unsupported database {parsed.drivername!r}: use sqlite:///path or postgresql://user:password@host/db"
        )
    if driver.startswith("sqlite") and parsed.database in (None, "", ":memory:"):
        raise ValueError("an SQLite database must be a file (sqlite:///path): memory is not shared")
    return parsed.set(drivername=driver)


def display_url(url: str | URL) -> str:
    """The URL as it may be logged: the password replaced by ``***``."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "<not a database URL>"


def is_sqlite(engine: Engine) -> bool:
    return engine.dialect.name == "sqlite"


def make_engine(url: str | URL, *, durable: bool = False) -> Engine:
    """An engine for ``url`` (``parse_url``); connections are opened when first used.

    Args:
        url: ``sqlite:///path`` (the folder is created) or ``postgresql://user:password@host:port/db``.
        durable: SQLite only: flush the WAL to disk at every commit (``synchronous=FULL``), so a committed
            transaction survives a power cut too; otherwise (``NORMAL``) it survives a crash of the process.
    """
    parsed = parse_url(url)
    if parsed.get_backend_name() == "sqlite":
        return _sqlite_engine(parsed, durable)
    return create_engine(
        parsed,
        pool_pre_ping=True,  # a connection from before a server restart is replaced, not handed out
        pool_size=5,
        max_overflow=10,
        connect_args={"connect_timeout": CONNECT_TIMEOUT_SECONDS, "application_name": "bcd-service"},
    )


def _sqlite_engine(url: URL, durable: bool) -> Engine:
    assert url.database is not None
    Path(url.database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(
        url,
        # the pool hands connections to the writer thread and to request threads in turn
        connect_args={"check_same_thread": False, "timeout": SQLITE_BUSY_TIMEOUT_SECONDS},
    )
    synchronous = "FULL" if durable else "NORMAL"

    @event.listens_for(engine, "connect")
    def _configure(dbapi_connection: sqlite3.Connection, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(f"PRAGMA busy_timeout = {int(SQLITE_BUSY_TIMEOUT_SECONDS * 1000)}")
            cursor.execute("PRAGMA journal_mode = WAL")  # stored in the file; a no-op once set
            cursor.execute(f"PRAGMA synchronous = {synchronous}")
            cursor.execute("PRAGMA foreign_keys = ON")
        finally:
            cursor.close()

    return engine
