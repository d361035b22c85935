"""etl/registry_db/tables.py against its migrations: the scripts create exactly the declared tables, on
SQLite and PostgreSQL, with the pointer's and the leases' rows; MIGRATIONS.head is the scripts' head."""

from __future__ import annotations

from sqlalchemy import select

from etl.db import make_engine, upgrade
from etl.registry_db.tables import LEASE_NAMES, MIGRATIONS, leases, metadata, pointer
from tests.migration_support import schema_differences, script_heads


def test_registry_tables_migrations_create_exactly_the_declared_tables(database_url: str) -> None:
    engine = make_engine(database_url)
    assert upgrade(engine, MIGRATIONS)
    with engine.connect() as connection:
        own = lambda name: name.startswith("registry_")  # noqa: E731  (the prediction record may share it)
        assert schema_differences(connection, MIGRATIONS, metadata, own) == []
        assert [tuple(r) for r in connection.execute(select(pointer))] == [(1, None, 0, None)]
        rows = connection.execute(select(leases.c.name, leases.c.token, leases.c.generation)).all()
        assert sorted(tuple(r) for r in rows) == sorted((name, None, 0) for name in LEASE_NAMES)
    engine.dispose()


def test_registry_tables_head_constant_is_the_scripts_head() -> None:
    assert script_heads(MIGRATIONS) == [MIGRATIONS.head]
