"""app/records/tables.py against its migrations: the scripts create exactly the declared tables, on SQLite
and PostgreSQL, and MIGRATIONS.head is the scripts' head."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory

from app.records.tables import MIGRATIONS, metadata
from etl.db import make_engine, upgrade


def test_tables_migrations_create_exactly_the_declared_tables(database_url: str) -> None:
    engine = make_engine(database_url)
    assert upgrade(engine, MIGRATIONS)
    with engine.connect() as connection:
        context = MigrationContext.configure(
            connection,
            opts={
                "compare_type": True,
                "include_name": lambda name, kind, _parent: (
                    not (kind == "table" and name == MIGRATIONS.version_table)
                ),
            },
        )
        assert compare_metadata(context, metadata) == []
    engine.dispose()


def test_tables_head_constant_is_the_scripts_head() -> None:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS.versions))
    config.set_main_option("version_locations", str(MIGRATIONS.versions))
    config.set_main_option("path_separator", "os")
    assert ScriptDirectory.from_config(config).get_heads() == [MIGRATIONS.head]
