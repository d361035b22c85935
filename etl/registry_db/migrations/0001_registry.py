"""The registry: versions, evaluations, the served pointer and its promotions, leases, reference sets.

Revision ID: 0001
Revises: (none)
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "registry_versions",
        sa.Column("version", sa.String(32), nullable=False),
        sa.Column("created_ns", sa.BigInteger(), nullable=False),
        sa.Column("created_at", sa.String(40), nullable=False),
        sa.Column("meta", sa.JSON(), nullable=False),
        sa.Column("files", sa.JSON(), nullable=False),
        sa.Column("model_signature", sa.String(64), nullable=False),
        sa.Column("fingerprint", sa.String(64), nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("evaluation_id", sa.Integer(), nullable=True),
        sa.Column("state", sa.JSON(), nullable=False),
        sa.Column("lease_generation", sa.BigInteger(), nullable=True),
        sa.PrimaryKeyConstraint("version", name="pk_registry_versions"),
    )
    op.create_index("ix_registry_versions_fingerprint", "registry_versions", ["fingerprint"])
    op.create_table(
        "registry_evaluations",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("version", sa.String(32), nullable=False),
        sa.Column("evaluated_at", sa.Float(), nullable=False),
        sa.Column("passed", sa.Boolean(), nullable=False),
        sa.Column("metrics", sa.JSON(), nullable=False),
        sa.Column("report", sa.JSON(), nullable=True),
        sa.ForeignKeyConstraint(
            ["version"],
            ["registry_versions.version"],
            name="fk_registry_evaluations_version_registry_versions",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_registry_evaluations"),
    )
    op.create_index("ix_registry_evaluations_version", "registry_evaluations", ["version"])
    pointer = op.create_table(
        "registry_pointer",
        sa.Column("id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("version", sa.String(32), nullable=True),
        sa.Column("epoch", sa.BigInteger(), nullable=False),
        sa.Column("promoted_at", sa.Float(), nullable=True),
        sa.ForeignKeyConstraint(
            ["version"], ["registry_versions.version"], name="fk_registry_pointer_version_registry_versions"
        ),
        sa.PrimaryKeyConstraint("id", name="pk_registry_pointer"),
    )
    op.create_table(
        "registry_promotions",
        sa.Column("epoch", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("version", sa.String(32), nullable=False),
        sa.Column("previous", sa.String(32), nullable=True),
        sa.Column("promoted_at", sa.Float(), nullable=False),
        sa.Column("lease_generation", sa.BigInteger(), nullable=True),
        sa.ForeignKeyConstraint(
            ["version"],
            ["registry_versions.version"],
            name="fk_registry_promotions_version_registry_versions",
        ),
        sa.PrimaryKeyConstraint("epoch", name="pk_registry_promotions"),
    )
    leases = op.create_table(
        "registry_leases",
        sa.Column("name", sa.String(32), nullable=False),
        sa.Column("token", sa.String(64), nullable=True),
        sa.Column("generation", sa.BigInteger(), nullable=False),
        sa.Column("holder", sa.String(300), nullable=True),
        sa.Column("acquired_at", sa.Float(), nullable=True),
        sa.Column("expires_at", sa.Float(), nullable=True),
        sa.PrimaryKeyConstraint("name", name="pk_registry_leases"),
    )
    op.create_table(
        "registry_reference",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("rows", sa.Integer(), nullable=False),
        sa.Column("source", sa.String(300), nullable=False),
        sa.Column("pinned_at", sa.String(40), nullable=False),
        sa.Column("key", sa.String(200), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_registry_reference"),
    )
    # the rows that are only ever updated: the pointer (nothing served, epoch 0) and the two leases (free)
    op.bulk_insert(pointer, [{"id": 1, "version": None, "epoch": 0, "promoted_at": None}])
    op.bulk_insert(leases, [{"name": name, "generation": 0} for name in ("training", "upload")])
