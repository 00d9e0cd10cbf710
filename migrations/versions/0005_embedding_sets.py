"""embedding sets: which backbone's vectors exist for which dataset (issue 16)

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-03 13:55:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "embedding_sets",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("dataset_id", sa.Integer(), nullable=False),
        sa.Column("backbone", sa.String(length=100), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("count", sa.Integer(), nullable=False),
        sa.Column("dims", sa.Integer(), nullable=False),
        sa.Column("index_kind", sa.String(length=16), nullable=False),
        sa.Column("job_id", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["dataset_id"], ["datasets.id"], name=op.f("fk_embedding_sets_dataset_id_datasets"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["job_id"], ["jobs.id"], name=op.f("fk_embedding_sets_job_id_jobs"), ondelete="SET NULL"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_embedding_sets")),
        sa.UniqueConstraint("dataset_id", "backbone", name=op.f("uq_embedding_sets_dataset_id_backbone")),
    )
    op.create_index(op.f("ix_embedding_sets_dataset_id"), "embedding_sets", ["dataset_id"])


def downgrade() -> None:
    op.drop_index(op.f("ix_embedding_sets_dataset_id"), table_name="embedding_sets")
    op.drop_table("embedding_sets")
