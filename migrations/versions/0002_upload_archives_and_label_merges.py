"""upload entries know their archive; labels know what they were merged into

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28 10:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # A zip's members are staged as entries of their own; this links each back to its archive, so the archive
    # can be failed as a whole and labels are read from paths inside it.
    with op.batch_alter_table("upload_entries", schema=None) as batch_op:
        batch_op.add_column(sa.Column("archive_entry_id", sa.Integer(), nullable=True))
        batch_op.create_foreign_key(
            batch_op.f("fk_upload_entries_archive_entry_id_upload_entries"),
            "upload_entries",
            ["archive_entry_id"],
            ["id"],
            ondelete="CASCADE",
        )
        batch_op.create_index(batch_op.f("ix_upload_entries_archive_entry_id"), ["archive_entry_id"], unique=False)
    # A merged label keeps its row (history and predictions point at it) but is no longer offered.
    with op.batch_alter_table("labels", schema=None) as batch_op:
        batch_op.add_column(sa.Column("merged_into_id", sa.Integer(), nullable=True))
        batch_op.create_foreign_key(batch_op.f("fk_labels_merged_into_id_labels"), "labels", ["merged_into_id"], ["id"])


def downgrade() -> None:
    with op.batch_alter_table("labels", schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f("fk_labels_merged_into_id_labels"), type_="foreignkey")
        batch_op.drop_column("merged_into_id")
    with op.batch_alter_table("upload_entries", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_upload_entries_archive_entry_id"))
        batch_op.drop_constraint(batch_op.f("fk_upload_entries_archive_entry_id_upload_entries"), type_="foreignkey")
        batch_op.drop_column("archive_entry_id")
