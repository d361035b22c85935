"""The registry's tables (SQLAlchemy Core) and the tree of migrations that creates them.

``registry_versions``: one row per published version: its training metadata, the sha256 of every file in the
artifact store, the HMAC signature of model.json (all written once, with the row), its status and current
evaluation, and ``state``, the only mutable part (Drive progress, upload records). ``registry_evaluations``:
every evaluation of a version (metrics, the gate's verdict, its report's files in the store).
``registry_pointer``: one row, the served version and its epoch, which rises by one per promotion;
``registry_promotions``: every promotion, keyed by the epoch it made (so no two can make the same one).
``registry_leases``: the training and upload leases (holder, token, generation, expiry).
``registry_reference``: the pinned reference sets, newest last.

The migration scripts in etl/registry_db/migrations/ must create exactly these tables (tests/etl/
test_registry_db.py compares them on SQLite and PostgreSQL).
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Table,
)

from etl.db import Migrations, new_metadata

VERSION_LENGTH = 32  # YYYYMMDDTHHMMSSZ-xxxxxxxx is 25
POINTER_ROW = 1  # the id of the pointer's one row
LEASE_NAMES = ("training", "upload")

metadata = new_metadata()

versions = Table(
    "registry_versions",
    metadata,
    Column("version", String(VERSION_LENGTH), primary_key=True),
    Column("created_ns", BigInteger, nullable=False),
    Column("created_at", String(40), nullable=False),
    Column("meta", JSON, nullable=False),
    Column("files", JSON, nullable=False),
    Column("model_signature", String(64), nullable=False),
    Column("fingerprint", String(64), nullable=True),
    Column("status", String(16), nullable=False),
    Column("evaluation_id", Integer, nullable=True),
    Column("state", JSON, nullable=False),
    Column("lease_generation", BigInteger, nullable=True),
)
Index("ix_registry_versions_fingerprint", versions.c.fingerprint)

evaluations = Table(
    "registry_evaluations",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("version", String(VERSION_LENGTH), ForeignKey(versions.c.version), nullable=False),
    Column("evaluated_at", Float, nullable=False),
    Column("passed", Boolean, nullable=False),
    Column("metrics", JSON, nullable=False),
    Column("report", JSON, nullable=True),
)
Index("ix_registry_evaluations_version", evaluations.c.version)

pointer = Table(
    "registry_pointer",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("version", String(VERSION_LENGTH), ForeignKey(versions.c.version), nullable=True),
    Column("epoch", BigInteger, nullable=False),
    Column("promoted_at", Float, nullable=True),
)

promotions = Table(
    "registry_promotions",
    metadata,
    Column("epoch", BigInteger, primary_key=True, autoincrement=False),
    Column("version", String(VERSION_LENGTH), ForeignKey(versions.c.version), nullable=False),
    Column("previous", String(VERSION_LENGTH), nullable=True),
    Column("promoted_at", Float, nullable=False),
    Column("lease_generation", BigInteger, nullable=True),
)

leases = Table(
    "registry_leases",
    metadata,
    Column("name", String(32), primary_key=True),
    Column("token", String(64), nullable=True),
    Column("generation", BigInteger, nullable=False),
    Column("holder", String(300), nullable=True),
    Column("acquired_at", Float, nullable=True),
    Column("expires_at", Float, nullable=True),
)

reference = Table(
    "registry_reference",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("sha256", String(64), nullable=False),
    Column("rows", Integer, nullable=False),
    Column("source", String(300), nullable=False),
    Column("pinned_at", String(40), nullable=False),
    Column("key", String(200), nullable=False),
)

MIGRATIONS = Migrations(
    name="registry",
    versions=Path(__file__).resolve().parent / "migrations",
    version_table="alembic_version_registry",
    head="0001",
)
