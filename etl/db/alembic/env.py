"""Alembic's environment for every tree of migrations (etl/db/migrate.py): it runs on the connection
``upgrade`` hands over, recording the revision in the tree's own version table. Online only: the service
migrates the database it is connected to; there is no SQL-script (offline) mode."""

from __future__ import annotations

from alembic import context

config = context.config
connection = config.attributes.get("connection")
if context.is_offline_mode() or connection is None:
    raise RuntimeError("run migrations through etl.db.migrate.upgrade (online, on a connection)")

context.configure(
    connection=connection,
    version_table=config.attributes["version_table"],
    # SQLite cannot ALTER most things in place: Alembic's batch mode copies the table instead
    render_as_batch=connection.dialect.name == "sqlite",
)
with context.begin_transaction():
    context.run_migrations()
