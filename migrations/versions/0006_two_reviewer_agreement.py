"""two-reviewer agreement: campaigns that require it, label proposals, and who confirmed a change

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-03 13:45:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Campaigns started before this keep working as they did: one reviewer's relabel applies at once.
    with op.batch_alter_table("reviews", schema=None) as batch_op:
        batch_op.add_column(sa.Column("require_agreement", sa.Boolean(), server_default=sa.false(), nullable=False))
    with op.batch_alter_table("label_changes", schema=None) as batch_op:
        batch_op.add_column(sa.Column("confirmed_by_id", sa.Integer(), nullable=True))
        batch_op.create_foreign_key(
            batch_op.f("fk_label_changes_confirmed_by_id_users"),
            "users",
            ["confirmed_by_id"],
            ["id"],
            ondelete="SET NULL",
        )
    op.create_table(
        "label_proposals",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("review_id", sa.Integer(), nullable=False),
        sa.Column("image_id", sa.Integer(), nullable=False),
        sa.Column("old_label_id", sa.Integer(), nullable=False),
        sa.Column("new_label_id", sa.Integer(), nullable=False),
        sa.Column("base_version", sa.Integer(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("proposed_by_id", sa.Integer(), nullable=True),
        sa.Column("proposed_at", sa.DateTime(), nullable=False),
        sa.Column("decided_by_id", sa.Integer(), nullable=True),
        sa.Column("decided_at", sa.DateTime(), nullable=True),
        sa.Column("decision_reason", sa.Text(), nullable=False),
        sa.Column("change_id", sa.Integer(), nullable=True),
        sa.ForeignKeyConstraint(
            ["change_id"],
            ["label_changes.id"],
            name=op.f("fk_label_proposals_change_id_label_changes"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["decided_by_id"], ["users.id"], name=op.f("fk_label_proposals_decided_by_id_users"), ondelete="SET NULL"
        ),
        sa.ForeignKeyConstraint(
            ["image_id"], ["images.id"], name=op.f("fk_label_proposals_image_id_images"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(["new_label_id"], ["labels.id"], name=op.f("fk_label_proposals_new_label_id_labels")),
        sa.ForeignKeyConstraint(["old_label_id"], ["labels.id"], name=op.f("fk_label_proposals_old_label_id_labels")),
        sa.ForeignKeyConstraint(
            ["proposed_by_id"], ["users.id"], name=op.f("fk_label_proposals_proposed_by_id_users"), ondelete="SET NULL"
        ),
        sa.ForeignKeyConstraint(
            ["review_id"], ["reviews.id"], name=op.f("fk_label_proposals_review_id_reviews"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_label_proposals")),
    )
    op.create_index("ix_label_proposals_review_id_image_id", "label_proposals", ["review_id", "image_id"])


def downgrade() -> None:
    op.drop_index("ix_label_proposals_review_id_image_id", table_name="label_proposals")
    op.drop_table("label_proposals")
    with op.batch_alter_table("label_changes", schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f("fk_label_changes_confirmed_by_id_users"), type_="foreignkey")
        batch_op.drop_column("confirmed_by_id")
    with op.batch_alter_table("reviews", schema=None) as batch_op:
        batch_op.drop_column("require_agreement")
