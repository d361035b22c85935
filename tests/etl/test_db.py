"""etl/db: engines from URLs, and Alembic migrations applied once however many processes start together,
on SQLite and on a real PostgreSQL (tests/postgres.py)."""

from __future__ import annotations

import logging
import multiprocessing
import os
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import inspect, text

from etl.db import Migrations, current_revision, display_url, make_engine, parse_url, sqlite_url, upgrade
from etl.errors import DatabaseUnavailableError
from tests.conftest import free_port
from tests.postgres import PostgresCluster
from tests.waiting import wait_until

FIRST = '''
"""things"""
import sqlalchemy as sa
from alembic import op

revision = "a1"
down_revision = None


def upgrade():
    op.create_table("things", sa.Column("id", sa.Integer, primary_key=True))
'''
SECOND = '''
"""things get a name"""
import sqlalchemy as sa
from alembic import op

revision = "a2"
down_revision = "a1"


def upgrade():
    with op.batch_alter_table("things") as batch:
        batch.add_column(sa.Column("name", sa.String(20), nullable=True))
'''
# a migration that holds its (locked) upgrade open until the test writes RELEASE beside it
HELD = '''
"""held open"""
import sqlalchemy as sa
import time
from pathlib import Path
from alembic import op

revision = "h1"
down_revision = None
HERE = Path(__file__).parent


def upgrade():
    (HERE / f"entered-{__import__('os').getpid()}").touch()
    deadline = time.monotonic() + 120
    while not (HERE / "RELEASE").exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    op.create_table("held", sa.Column("id", sa.Integer, primary_key=True))
'''


def tree(folder: Path, head: str, **scripts: str) -> Migrations:
    folder.mkdir(parents=True, exist_ok=True)
    for name, body in scripts.items():
        (folder / f"{name}.py").write_text(body)
    return Migrations("test", folder, "alembic_version_test", head)


# --- URLs and engines -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "driver"),
    [
        ("sqlite:////tmp/x.db", "sqlite+pysqlite"),
        ("postgresql://u:p@h/db", "postgresql+psycopg"),
        ("postgres://u:p@h:5433/db", "postgresql+psycopg"),
        ("postgresql+psycopg://u:p@h/db", "postgresql+psycopg"),
    ],
)
def test_parse_url_driver_made_explicit(url: str, driver: str) -> None:
    assert parse_url(url).drivername == driver


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("mysql://u:p@h/db", "unsupported database"),
        ("postgresql+psycopg2://u:p@h/db", "unsupported database"),
        ("sqlite://", "must be a file"),
        ("sqlite:///:memory:", "must be a file"),
        ("not a url", "not a database URL"),
    ],
)
def test_parse_url_refused_naming_rule(url: str, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        parse_url(url)


def test_display_url_hides_password() -> None:
    shown = display_url("postgresql://predictions:s3cret-pw@db:5432/predictions")
    assert "s3cret-pw" not in shown and shown == "postgresql://predictions:***@db:5432/predictions"


def test_make_engine_sqlite_wal_busy_timeout_and_folder(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "folder" / "x.sqlite3"
    engine = make_engine(sqlite_url(path))
    with engine.connect() as connection:
        assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert connection.exec_driver_sql("PRAGMA busy_timeout").scalar() == 10_000
        assert connection.exec_driver_sql("PRAGMA synchronous").scalar() == 1  # NORMAL
    durable = make_engine(sqlite_url(path), durable=True)
    with durable.connect() as connection:
        assert connection.exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL
    engine.dispose()
    durable.dispose()
    assert sqlite3.connect(path).execute("PRAGMA journal_mode").fetchone() == ("wal",)  # stored in the file


# --- migrations -----------------------------------------------------------------------------------------


def test_upgrade_empty_database_once_then_noop(database_url: str, tmp_path: Path) -> None:
    engine = make_engine(database_url)
    first = tree(tmp_path / "versions", "a1", first=FIRST)
    assert upgrade(engine, first) is True
    assert upgrade(engine, first) is False
    with engine.connect() as connection:
        assert current_revision(connection, first) == "a1"
        assert "things" in inspect(connection).get_table_names()
    second = tree(tmp_path / "versions", "a2", second=SECOND)
    assert upgrade(engine, second) is True
    with engine.connect() as connection:
        assert current_revision(connection, second) == "a2"
        assert {c["name"] for c in inspect(connection).get_columns("things")} == {"id", "name"}
    engine.dispose()


def test_upgrade_two_trees_share_database(database_url: str, tmp_path: Path) -> None:
    engine = make_engine(database_url)
    one = tree(tmp_path / "one", "a1", first=FIRST)
    other = Migrations("other", tree(tmp_path / "other", "h1").versions, "alembic_version_other", "h1")
    (other.versions / "held.py").write_text(HELD)
    (other.versions / "RELEASE").touch()
    assert upgrade(engine, one) and upgrade(engine, other)
    with engine.connect() as connection:
        assert (current_revision(connection, one), current_revision(connection, other)) == ("a1", "h1")
    engine.dispose()


def _upgrade_in_process(url: str, versions: str, results: Any) -> None:
    handler = logging.FileHandler(Path(versions) / f"log-{os.getpid()}.txt")
    logging.getLogger("etl.db").addHandler(handler)
    logging.getLogger("etl.db").setLevel(logging.DEBUG)
    try:
        migrated = upgrade(make_engine(url), Migrations("test", Path(versions), "alembic_version_test", "h1"))
        results.put(("ok", migrated))
    except Exception as exc:  # reported to the test, which asserts
        results.put(("error", repr(exc)))


def _waiting_for_lock(url: str, versions: Path, postgres: PostgresCluster | None) -> bool:
    """All four processes found the database behind and went for the migration lock (their DEBUG log says
    so: one holds it) and, on PostgreSQL, three are blocked on it (pg_locks)."""
    logs = [path.read_text() for path in versions.glob("log-*.txt")]
    if sum("taking the migration lock" in text for text in logs) != 4:
        return False
    if postgres is None:
        return True
    database = parse_url(url).database
    blocked = postgres.sql(
        "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
        f"WHERE l.locktype = 'advisory' AND NOT l.granted AND a.datname = '{database}'"
    )
    return int(blocked) == 3


@pytest.mark.integration
def test_upgrade_concurrent_processes_migrate_once(
    database_url: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """Four processes start together on an empty database: one migrates (held open until the others wait
    on the lock), the others find it done; no migration runs twice."""
    versions = tmp_path / "versions"
    tree(versions, "h1", held=HELD)
    postgres = request.getfixturevalue("postgres") if database_url.startswith("postgresql") else None
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    processes = [
        context.Process(target=_upgrade_in_process, args=(database_url, str(versions), results))
        for _ in range(4)
    ]
    for process in processes:
        process.start()
    try:
        wait_until(
            lambda: len(list(versions.glob("entered-*"))) == 1, 120, "one process inside the migration"
        )
        wait_until(
            lambda: _waiting_for_lock(database_url, versions, postgres),
            60,
            "the three others waiting for the migration lock",
            interval=0.1,
        )
        (versions / "RELEASE").touch()
        outcomes = [results.get(timeout=120) for _ in processes]
    finally:
        for process in processes:
            process.join(60)
    assert sorted(outcomes) == [("ok", False)] * 3 + [("ok", True)], outcomes
    assert len(list(versions.glob("entered-*"))) == 1


@pytest.mark.integration
def test_upgrade_unreachable_postgres_raises_unavailable(tmp_path: Path) -> None:
    engine = make_engine(f"postgresql://u:secret-pw@127.0.0.1:{free_port()}/nothing")
    with pytest.raises(DatabaseUnavailableError) as caught:
        upgrade(engine, tree(tmp_path / "v", "a1", first=FIRST))
    assert "secret-pw" not in str(caught.value) and "OperationalError" in str(caught.value)


def test_current_revision_empty_database_none(tmp_path: Path) -> None:
    engine = make_engine(sqlite_url(tmp_path / "x.sqlite3"))
    with engine.connect() as connection:
        assert current_revision(connection, tree(tmp_path / "v", "a1", first=FIRST)) is None
        assert connection.execute(text("SELECT 1")).scalar() == 1
