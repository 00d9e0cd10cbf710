"""job shards: a parent job's work split into shard jobs, and what each shard produced

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-06 21:30:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "job_shards",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("parent_job_id", sa.Integer(), nullable=False),
        sa.Column("job_id", sa.Integer(), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("items", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("result_sha256", sa.String(length=64), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("finished_at", sa.DateTime(), nullable=True),
        sa.ForeignKeyConstraint(
            ["parent_job_id"], ["jobs.id"], name=op.f("fk_job_shards_parent_job_id_jobs"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], name=op.f("fk_job_shards_job_id_jobs"), ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_job_shards")),
        sa.UniqueConstraint("job_id", name=op.f("uq_job_shards_job_id")),
        sa.UniqueConstraint("parent_job_id", "position", name=op.f("uq_job_shards_parent_job_id_position")),
    )
    op.create_index(op.f("ix_job_shards_parent_job_id"), "job_shards", ["parent_job_id"])
    op.create_index(op.f("ix_job_shards_result_sha256"), "job_shards", ["result_sha256"])


def downgrade() -> None:
    op.drop_index(op.f("ix_job_shards_result_sha256"), table_name="job_shards")
    op.drop_index(op.f("ix_job_shards_parent_job_id"), table_name="job_shards")
    op.drop_table("job_shards")
