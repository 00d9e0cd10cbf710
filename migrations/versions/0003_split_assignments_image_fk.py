"""split assignments no longer check their image per row

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-27 03:40:00.000000
"""

from __future__ import annotations

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # A split job writes one row per image (a million for a million images). On Postgres the foreign key to
    # images fired a check per row and made the write five times slower; the split job only writes ids it has
    # just read from images, and images are never deleted (they are immutable; exclusion is a flag).
    with op.batch_alter_table("split_assignments", schema=None) as batch_op:
        batch_op.drop_constraint("fk_split_assignments_image_id_images", type_="foreignkey")


def downgrade() -> None:
    with op.batch_alter_table("split_assignments", schema=None) as batch_op:
        batch_op.create_foreign_key(
            "fk_split_assignments_image_id_images", "images", ["image_id"], ["id"], ondelete="CASCADE"
        )
