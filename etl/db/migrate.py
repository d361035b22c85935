"""Alembic migrations, applied once however many processes start at the same moment.

Each set of tables that evolves on its own (the service's prediction record today, the registry's tables
later) is one ``Migrations`` tree: a folder of Alembic revision scripts and the table that records how far a
database has come, so several trees can share one database. ``upgrade`` brings a database to the tree's head
under a lock (a file lock beside an SQLite file, a PostgreSQL advisory lock otherwise), so when several
uvicorn workers start together one migrates and the others find the work done. A database already at the
head costs one query and never imports Alembic.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Connection, Engine, MetaData, inspect, text
from sqlalchemy.exc import SQLAlchemyError

from etl.db.engine import display_url, is_sqlite
from etl.errors import DatabaseUnavailableError
from etl.locks import file_lock

log = logging.getLogger(__name__)

ENV_DIR = Path(__file__).resolve().parent / "alembic"  # env.py, shared by every tree


@dataclass(frozen=True)
class Migrations:
    """One tree of migrations.

    Attributes:
        name: what the tables are, for messages ("prediction record").
        versions: the folder of Alembic revision scripts.
        version_table: the table that holds the database's revision of this tree.
        head: the newest revision; ``upgrade`` skips Alembic when the database is there (a test checks that
            it is the scripts' head).
    """

    name: str
    versions: Path
    version_table: str
    head: str


def current_revision(connection: Connection, migrations: Migrations) -> str | None:
    """The revision of ``migrations`` the database is at, or None before the first migration."""
    if not inspect(connection).has_table(migrations.version_table):
        return None
    table = connection.dialect.identifier_preparer.quote(migrations.version_table)
    return connection.execute(text(f"SELECT version_num FROM {table}")).scalar()  # noqa: S608


def upgrade(engine: Engine, migrations: Migrations) -> bool:
    """Bring the database to ``migrations.head``. Returns True when this call ran migrations.

    Raises:
        DatabaseUnavailableError: the database cannot be reached, or a migration failed (rolled back where
            the database can roll back DDL, as PostgreSQL can).
    """
    try:
        with engine.connect() as connection:
            found = current_revision(connection, migrations)
        if found == migrations.head:
            return False
        log.debug(
            "%s database at revision %s, not %s: taking the migration lock",
            migrations.name,
            found,
            migrations.head,
        )
        with _migration_lock(engine, migrations) as connection:
            found = current_revision(connection, migrations)
            if found == migrations.head:
                return False
            _run_alembic(connection, migrations)
            connection.commit()
    except SQLAlchemyError as exc:
        raise DatabaseUnavailableError(
            f"cannot migrate the {migrations.name} database at {display_url(engine.url)}: "
            f"{type(getattr(exc, 'orig', None) or exc).__name__}"
        ) from exc
    log.info("%s database migrated from %s to %s", migrations.name, found or "empty", migrations.head)
    return True


def _run_alembic(connection: Connection, migrations: Migrations) -> None:
    from alembic import command
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(ENV_DIR))
    config.set_main_option("version_locations", str(migrations.versions))
    config.set_main_option("path_separator", "os")
    config.attributes["connection"] = connection
    config.attributes["version_table"] = migrations.version_table
    command.upgrade(config, "head")


@contextlib.contextmanager
def _migration_lock(engine: Engine, migrations: Migrations) -> Iterator[Connection]:
    """A connection held while no other process migrates the same tree of the same database."""
    if is_sqlite(engine):
        database = engine.url.database
        assert database is not None
        with file_lock(Path(f"{database}.migrate.lock")), engine.connect() as connection:
            yield connection
        return
    key = int.from_bytes(hashlib.sha256(migrations.version_table.encode()).digest()[:8], "big", signed=True)
    with engine.connect() as connection:
        connection.execute(text("SELECT pg_advisory_lock(:key)"), {"key": key})
        connection.commit()  # the lock belongs to the session, not to this transaction
        try:
            yield connection
        finally:
            connection.rollback()
            connection.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": key})
            connection.commit()


def new_metadata() -> MetaData:
    """A MetaData for one set of tables, with the constraint names every set uses (Alembic can then find,
    alter and drop a constraint by name on every database)."""
    return MetaData(
        naming_convention={
            "ix": "ix_%(table_name)s_%(column_0_N_name)s",
            "uq": "uq_%(table_name)s_%(column_0_N_name)s",
            "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
            "pk": "pk_%(table_name)s",
        }
    )
