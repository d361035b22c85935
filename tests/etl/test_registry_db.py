"""etl/registry_db/tables.py against its migrations: the scripts create exactly the declared tables, on
SQLite and PostgreSQL, with the pointer's and the leases' rows; MIGRATIONS.head is the scripts' head."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import select

from etl.db import make_engine, upgrade
from etl.registry_db.tables import LEASE_NAMES, MIGRATIONS, leases, metadata, pointer


def test_registry_tables_migrations_create_exactly_the_declared_tables(database_url: str) -> None:
    engine = make_engine(database_url)
    assert upgrade(engine, MIGRATIONS)
    with engine.connect() as connection:
        context = MigrationContext.configure(
            connection,
            opts={
                "compare_type": True,
                "include_name": lambda name, kind, _parent: (
                    not (
                        kind == "table"
                        and (name == MIGRATIONS.version_table or not name.startswith("registry_"))
                    )
                ),
            },
        )
        assert compare_metadata(context, metadata) == []
        assert [tuple(r) for r in connection.execute(select(pointer))] == [(1, None, 0, None)]
        rows = connection.execute(select(leases.c.name, leases.c.token, leases.c.generation)).all()
        assert sorted(tuple(r) for r in rows) == sorted((name, None, 0) for name in LEASE_NAMES)
    engine.dispose()


def test_registry_tables_head_constant_is_the_scripts_head() -> None:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS.versions))
    config.set_main_option("version_locations", str(MIGRATIONS.versions))
    config.set_main_option("path_separator", "os")
    assert ScriptDirectory.from_config(config).get_heads() == [MIGRATIONS.head]
