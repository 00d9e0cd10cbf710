"""a second dHash per image, of its inner view, so that near-duplicate grouping finds lightly cropped copies

Images stored before this revision keep NULL: they are compared by their whole view only (their blobs are not
decoded again). The split read's covering index gains the column.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-06 21:30:00.000000
"""

from __future__ import annotations

from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

_OLD_INDEX = ("dataset_id", "id", "label_id", "source", "phash", "imported_subset")
_NEW_INDEX = ("dataset_id", "id", "label_id", "source", "phash", "inner_phash", "imported_subset")


def upgrade() -> None:
    op.drop_index("ix_images_split_columns", table_name="images")
    # A plain ALTER TABLE on both databases: no batch copy of `images` (on SQLite a recreated `images` would take
    # its children with it, see 0009).
    op.execute("ALTER TABLE images ADD COLUMN inner_phash BIGINT")
    op.create_index("ix_images_split_columns", "images", list(_NEW_INDEX))


def downgrade() -> None:
    op.drop_index("ix_images_split_columns", table_name="images")
    op.execute("ALTER TABLE images DROP COLUMN inner_phash")  # SQLite 3.35+
    op.create_index("ix_images_split_columns", "images", list(_OLD_INDEX))
