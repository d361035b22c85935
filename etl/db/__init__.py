"""The databases behind the service and the pipeline: an engine from a URL (etl/db/engine.py) and Alembic
migrations applied once however many processes start (etl/db/migrate.py). Each user of a database brings
its own tables and its own tree of migrations (the prediction record: app/records/)."""

from etl.db.engine import display_url, is_sqlite, make_engine, parse_url, sqlite_url
from etl.db.migrate import Migrations, current_revision, new_metadata, upgrade

__all__ = [
    "Migrations",
    "current_revision",
    "display_url",
    "is_sqlite",
    "make_engine",
    "new_metadata",
    "parse_url",
    "sqlite_url",
    "upgrade",
]
