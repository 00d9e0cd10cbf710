from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, Index, String, Text, UniqueConstraint, false
from sqlalchemy.orm import Mapped, mapped_column

from app.models.base import Base, DatasetScopedMixin, TimestampMixin, utcnow


class Tag(DatasetScopedMixin, TimestampMixin, Base):
    """An error category, defined per dataset; ``mislabeled`` always exists."""

    __tablename__ = "tags"
    __table_args__ = (UniqueConstraint("dataset_id", "name"),)

    name: Mapped[str] = mapped_column(String(100))
    color: Mapped[str] = mapped_column(String(7), default="#888888")
    position: Mapped[int] = mapped_column(default=0)


class ErrorSample(TimestampMixin, Base):
    """The sample of a run's errors that reviewers look at; stays put until someone asks for a new one."""

    __tablename__ = "error_samples"

    id: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), index=True)
    subset: Mapped[str] = mapped_column(String(16))
    seed: Mapped[int]
    size: Mapped[int]
    include_correct: Mapped[int] = mapped_column(default=0)
    total_errors: Mapped[int] = mapped_column(default=0)
    is_current: Mapped[bool] = mapped_column(default=True)
    created_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))


class ErrorSampleItem(Base):
    __tablename__ = "error_sample_items"

    sample_id: Mapped[int] = mapped_column(ForeignKey("error_samples.id", ondelete="CASCADE"), primary_key=True)
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"), primary_key=True)
    position: Mapped[int]
    is_error: Mapped[bool] = mapped_column(default=True)


class ErrorAnnotation(Base):
    """One reviewer's spreadsheet row for an example of a run: its tags and a short note."""

    __tablename__ = "error_annotations"
    __table_args__ = (UniqueConstraint("run_id", "image_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), index=True)
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"))
    note: Mapped[str] = mapped_column(Text, default="")
    updated_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class ErrorAnnotationTag(Base):
    __tablename__ = "error_annotation_tags"

    annotation_id: Mapped[int] = mapped_column(ForeignKey("error_annotations.id", ondelete="CASCADE"), primary_key=True)
    tag_id: Mapped[int] = mapped_column(ForeignKey("tags.id", ondelete="CASCADE"), primary_key=True)


class Review(DatasetScopedMixin, TimestampMixin, Base):
    """A label-review campaign: always dev and test together, by one selection rule."""

    __tablename__ = "reviews"

    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    subsets: Mapped[str] = mapped_column(String(64))
    suspicious_per_subset: Mapped[int]
    correct_per_subset: Mapped[int]
    seed: Mapped[int]
    status: Mapped[str] = mapped_column(String(16), default="open")
    created_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    # A relabel in the campaign is a proposal until a second reviewer confirms it.
    require_agreement: Mapped[bool] = mapped_column(default=False, server_default=false())


class ReviewItem(Base):
    __tablename__ = "review_items"
    __table_args__ = (UniqueConstraint("review_id", "image_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    review_id: Mapped[int] = mapped_column(ForeignKey("reviews.id", ondelete="CASCADE"), index=True)
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"))
    subset: Mapped[str] = mapped_column(String(16))
    selection: Mapped[str] = mapped_column(String(16))  # suspicious, correct_sample
    rank: Mapped[int]
    suspicion: Mapped[float]
    status: Mapped[str] = mapped_column(String(16), default="pending")  # pending, kept, relabeled, ambiguous
    claimed_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    claim_expires_at: Mapped[datetime | None]
    decided_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    decided_at: Mapped[datetime | None]
    note: Mapped[str] = mapped_column(Text, default="")


class LabelProposal(Base):
    """A relabel proposed in a campaign that requires two reviewers: applied only when another reviewer confirms it
    (against the label version it was proposed on), or rejected."""

    __tablename__ = "label_proposals"
    __table_args__ = (Index("ix_label_proposals_review_id_image_id", "review_id", "image_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    review_id: Mapped[int] = mapped_column(ForeignKey("reviews.id", ondelete="CASCADE"))
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"))
    old_label_id: Mapped[int] = mapped_column(ForeignKey("labels.id"))
    new_label_id: Mapped[int] = mapped_column(ForeignKey("labels.id"))
    base_version: Mapped[int]  # the image's label_version the proposer saw
    reason: Mapped[str] = mapped_column(Text, default="")
    state: Mapped[str] = mapped_column(String(16), default="proposed")  # proposed, confirmed, rejected
    proposed_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    proposed_at: Mapped[datetime] = mapped_column(default=utcnow)
    decided_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    decided_at: Mapped[datetime | None]
    decision_reason: Mapped[str] = mapped_column(Text, default="")
    change_id: Mapped[int | None] = mapped_column(ForeignKey("label_changes.id", ondelete="SET NULL"))
