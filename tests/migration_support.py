"""Checking a set of tables (SQLAlchemy metadata) against its Alembic migration tree: what the scripts created
differs from the declaration how, and which head the scripts end at."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, MetaData

from etl.db import Migrations


def schema_differences(
    connection: Connection,
    migrations: Migrations,
    metadata: MetaData,
    own_table: Callable[[str], bool] = lambda _name: True,
) -> list[Any]:
    """Alembic's differences between the database's tables (those ``own_table`` accepts, without the version
    table) and ``metadata``, types compared: [] when the scripts create exactly the declared tables."""
    context = MigrationContext.configure(
        connection,
        opts={
            "compare_type": True,
            "include_name": lambda name, kind, _parent: (
                kind != "table" or (name != migrations.version_table and own_table(name))
            ),
        },
    )
    return list(compare_metadata(context, metadata))


def script_heads(migrations: Migrations) -> list[str]:
    """The heads of the migration scripts themselves (not the ``head`` constant)."""
    config = Config()
    config.set_main_option("script_location", str(migrations.versions))
    config.set_main_option("version_locations", str(migrations.versions))
    config.set_main_option("path_separator", "os")
    return list(ScriptDirectory.from_config(config).get_heads())
