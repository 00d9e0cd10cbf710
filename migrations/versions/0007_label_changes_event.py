"""label changes point at the dataset-level label event (a merge) that made them, so a merge can be undone

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-03 13:30:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("label_changes", schema=None) as batch_op:
        batch_op.add_column(sa.Column("label_event_id", sa.Integer(), nullable=True))
        batch_op.create_foreign_key(
            batch_op.f("fk_label_changes_label_event_id_label_events"),
            "label_events",
            ["label_event_id"],
            ["id"],
            ondelete="SET NULL",
        )
        batch_op.create_index(batch_op.f("ix_label_changes_label_event_id"), ["label_event_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("label_changes", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_label_changes_label_event_id"))
        batch_op.drop_constraint(batch_op.f("fk_label_changes_label_event_id_label_events"), type_="foreignkey")
        batch_op.drop_column("label_event_id")
