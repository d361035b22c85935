"""Where the prediction record lives, and bringing its database to the current schema. Apart from the rest
of app/records (no metrics, no FastAPI), so ``python -m app`` can migrate before it starts the workers."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from app.records.tables import MIGRATIONS
from etl.db import make_engine, sqlite_url, upgrade

if TYPE_CHECKING:
    from app.settings import ServiceSettings

DB_FILE = "predictions.sqlite3"  # the default database, in DATA_DIR


def database_url(settings: ServiceSettings) -> str:
    """PREDICTION_DB_URL, or the SQLite file DATA_DIR/predictions.sqlite3 when it is empty."""
    return settings.prediction_db_url.get_secret_value() or sqlite_url(Path(settings.data_dir) / DB_FILE)


def migrate(settings: ServiceSettings) -> bool:
    """Bring the prediction record's database to the current schema (``python -m app`` does this once
    before starting the workers). Returns True when migrations ran.

    Raises:
        DatabaseUnavailableError: the database cannot be reached or migrated.
    """
    engine = make_engine(database_url(settings))
    try:
        return upgrade(engine, MIGRATIONS)
    finally:
        engine.dispose()
