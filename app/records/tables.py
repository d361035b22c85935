"""The prediction record's tables (SQLAlchemy Core) and the tree of migrations that creates them.

``predictions``: one row per answered prediction: when, which model version and threshold, the nine
scores, the probability and class it answered, and the outcome reported later (``actual_class``, null until
then). No patient identifier is taken by the API, so none is stored. ``prediction_outcomes``: every outcome
report that was accepted, oldest first (a replaced outcome stays here). ``prediction_writers``: one row per
service process that records predictions (its id prefix and how far its queue is written), so a lookup of an
id not yet written can tell "still queued in that process" from "does not exist".

The migration scripts in app/records/migrations/ must create exactly these tables
(tests/app/records/test_tables.py compares them on SQLite and PostgreSQL).
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    SmallInteger,
    String,
    Table,
)

from etl.db import Migrations, new_metadata
from etl.features import FEATURE_NAMES

ID_LENGTH = 40  # room above the 27 characters of app.records.ids (a 16-hex prefix, "-", 10 hex digits)
VERSION_LENGTH = 64

metadata = new_metadata()

predictions = Table(
    "predictions",
    metadata,
    Column("id", String(ID_LENGTH), primary_key=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("model_version", String(VERSION_LENGTH), nullable=False),
    Column("threshold", Float, nullable=False),
    Column("probability_malignant", Float, nullable=False),
    Column("predicted_class", SmallInteger, nullable=False),
    *(Column(name, SmallInteger, nullable=False) for name in FEATURE_NAMES),
    Column("actual_class", SmallInteger, nullable=True),
    Column("labelled_at", DateTime(timezone=True), nullable=True),
)
# the newest predictions (input drift; the id orders a batch's rows, which share a time) and retention
Index("ix_predictions_created_at", predictions.c.created_at, predictions.c.id)
# the newest labelled predictions of a version (live quality): only labelled rows are indexed
Index(
    "ix_predictions_labelled",
    predictions.c.model_version,
    predictions.c.created_at,
    predictions.c.id,
    sqlite_where=predictions.c.actual_class.is_not(None),
    postgresql_where=predictions.c.actual_class.is_not(None),
)

outcomes = Table(
    "prediction_outcomes",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column(
        "prediction_id",
        String(ID_LENGTH),
        ForeignKey("predictions.id", ondelete="CASCADE"),
        nullable=False,
        index=True,
    ),
    Column("actual_class", SmallInteger, nullable=False),
    Column("reported_at", DateTime(timezone=True), nullable=False),
)

writers = Table(
    "prediction_writers",
    metadata,
    Column("prefix", String(16), primary_key=True),
    Column("started_at", DateTime(timezone=True), nullable=False),
    # everything this process queued before this moment is written (or was counted as dropped)
    Column("flushed_at", DateTime(timezone=True), nullable=True),
)

MIGRATIONS = Migrations(
    name="prediction record",
    versions=Path(__file__).resolve().parent / "migrations",
    version_table="alembic_version_predictions",
    head="0001",
)
