"""the unlabeled pool: images without a label, and a run's scores on them (suggestions, uncertainty, embedding)

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-04 19:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def _sqlite_foreign_keys(on: bool) -> None:
    """SQLite recreates a table to change a column; dropping the old `images` with foreign keys on would cascade
    into every table that points at it. The pragma only takes effect outside a transaction, so the migration
    commits what came before (its stamp included) and carries on in a new one."""
    if op.get_bind().dialect.name != "sqlite":
        return
    op.execute("COMMIT")
    op.execute(f"PRAGMA foreign_keys={'ON' if on else 'OFF'}")
    op.execute("BEGIN IMMEDIATE")


def upgrade() -> None:
    _sqlite_foreign_keys(False)
    with op.batch_alter_table("images", schema=None) as batch_op:
        batch_op.alter_column("label_id", existing_type=sa.Integer(), nullable=True)
        batch_op.add_column(sa.Column("from_pool", sa.Boolean(), server_default=sa.false(), nullable=False))
    with op.batch_alter_table("uploads", schema=None) as batch_op:
        batch_op.add_column(sa.Column("unlabeled", sa.Boolean(), server_default=sa.false(), nullable=False))
    _sqlite_foreign_keys(True)
    op.create_table(
        "pool_scorings",
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("job_id", sa.Integer(), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("scored", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("finished_at", sa.DateTime(), nullable=True),
        sa.ForeignKeyConstraint(
            ["job_id"], ["jobs.id"], name=op.f("fk_pool_scorings_job_id_jobs"), ondelete="SET NULL"
        ),
        sa.ForeignKeyConstraint(["run_id"], ["runs.id"], name=op.f("fk_pool_scorings_run_id_runs"), ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("run_id", name=op.f("pk_pool_scorings")),
    )
    op.create_table(
        "pool_scores",
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("image_id", sa.Integer(), nullable=False),
        sa.Column("predicted_label_id", sa.Integer(), nullable=True),
        sa.Column("confidence", sa.Float(), nullable=False),
        sa.Column("margin", sa.Float(), nullable=False),
        sa.Column("entropy", sa.Float(), nullable=False),
        sa.Column("probs", sa.LargeBinary(), nullable=False),
        sa.Column("embedding", sa.LargeBinary(), nullable=False),
        sa.ForeignKeyConstraint(
            ["image_id"], ["images.id"], name=op.f("fk_pool_scores_image_id_images"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["predicted_label_id"],
            ["labels.id"],
            name=op.f("fk_pool_scores_predicted_label_id_labels"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(["run_id"], ["runs.id"], name=op.f("fk_pool_scores_run_id_runs"), ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("run_id", "image_id", name=op.f("pk_pool_scores")),
    )
    op.create_index("ix_pool_scores_image_id", "pool_scores", ["image_id"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_pool_scores_image_id", table_name="pool_scores")
    op.drop_table("pool_scores")
    op.drop_table("pool_scorings")
    # Pool images have no label to keep under NOT NULL: they go first.
    op.execute("DELETE FROM images WHERE label_id IS NULL")
    _sqlite_foreign_keys(False)
    with op.batch_alter_table("uploads", schema=None) as batch_op:
        batch_op.drop_column("unlabeled")
    with op.batch_alter_table("images", schema=None) as batch_op:
        batch_op.drop_column("from_pool")
        batch_op.alter_column("label_id", existing_type=sa.Integer(), nullable=False)
    _sqlite_foreign_keys(True)
