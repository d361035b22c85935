"""app/records/tables.py against its migrations: the scripts create exactly the declared tables, on SQLite
and PostgreSQL, and MIGRATIONS.head is the scripts' head."""

from __future__ import annotations

from app.records.tables import MIGRATIONS, metadata
from etl.db import make_engine, upgrade
from tests.migration_support import schema_differences, script_heads


def test_tables_migrations_create_exactly_the_declared_tables(database_url: str) -> None:
    engine = make_engine(database_url)
    assert upgrade(engine, MIGRATIONS)
    with engine.connect() as connection:
        assert schema_differences(connection, MIGRATIONS, metadata) == []
    engine.dispose()


def test_tables_head_constant_is_the_scripts_head() -> None:
    assert script_heads(MIGRATIONS) == [MIGRATIONS.head]
