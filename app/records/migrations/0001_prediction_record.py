"""The prediction record: predictions, their outcome reports, the writing processes.

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

FEATURES = (
    "clump_thickness",
    "cell_size_uniformity",
    "cell_shape_uniformity",
    "marginal_adhesion",
    "epithelial_cell_size",
    "bare_nuclei",
    "bland_chromatin",
    "normal_nucleoli",
    "mitoses",
)


def upgrade() -> None:
    op.create_table(
        "predictions",
        sa.Column("id", sa.String(40), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("model_version", sa.String(64), nullable=False),
        sa.Column("threshold", sa.Float(), nullable=False),
        sa.Column("probability_malignant", sa.Float(), nullable=False),
        sa.Column("predicted_class", sa.SmallInteger(), nullable=False),
        *(sa.Column(name, sa.SmallInteger(), nullable=False) for name in FEATURES),
        sa.Column("actual_class", sa.SmallInteger(), nullable=True),
        sa.Column("labelled_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_predictions"),
    )
    op.create_index("ix_predictions_created_at", "predictions", ["created_at", "id"])
    labelled = sa.text("actual_class IS NOT NULL")
    op.create_index(
        "ix_predictions_labelled",
        "predictions",
        ["model_version", "created_at", "id"],
        sqlite_where=labelled,
        postgresql_where=labelled,
    )
    op.create_table(
        "prediction_outcomes",
        sa.Column(
            "id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False
        ),
        sa.Column("prediction_id", sa.String(40), nullable=False),
        sa.Column("actual_class", sa.SmallInteger(), nullable=False),
        sa.Column("reported_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_prediction_outcomes"),
        sa.ForeignKeyConstraint(
            ["prediction_id"],
            ["predictions.id"],
            name="fk_prediction_outcomes_prediction_id_predictions",
            ondelete="CASCADE",
        ),
    )
    op.create_index("ix_prediction_outcomes_prediction_id", "prediction_outcomes", ["prediction_id"])
    op.create_table(
        "prediction_writers",
        sa.Column("prefix", sa.String(16), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("flushed_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("prefix", name="pk_prediction_writers"),
    )


def downgrade() -> None:
    op.drop_table("prediction_writers")
    op.drop_index("ix_prediction_outcomes_prediction_id", table_name="prediction_outcomes")
    op.drop_table("prediction_outcomes")
    op.drop_index("ix_predictions_labelled", table_name="predictions")
    op.drop_index("ix_predictions_created_at", table_name="predictions")
    op.drop_table("predictions")
