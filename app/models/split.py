from __future__ import annotations

from typing import Any

from sqlalchemy import ForeignKey, Index, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from app.models.base import Base, DatasetScopedMixin, TimestampMixin
from app.splits.states import SplitStatus

SUBSETS = ("train", "train_dev", "dev", "test")


class Split(DatasetScopedMixin, TimestampMixin, Base):
    """An immutable split version: its parameters, seed, and (once built) its assignments."""

    __tablename__ = "splits"
    __table_args__ = (UniqueConstraint("dataset_id", "version"),)

    version: Mapped[int]
    parent_id: Mapped[int | None] = mapped_column(ForeignKey("splits.id"))
    status: Mapped[str] = mapped_column(String(16), default=SplitStatus.QUEUED.value)
    params: Mapped[dict[str, Any]] = mapped_column(default=dict)
    counts: Mapped[dict[str, Any]] = mapped_column(default=dict)
    warnings: Mapped[list[Any]] = mapped_column(default=list)
    groups: Mapped[dict[str, Any]] = mapped_column(default=dict)
    job_id: Mapped[int | None] = mapped_column(ForeignKey("jobs.id", ondelete="SET NULL"))
    created_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))


class SplitAssignment(Base):
    __tablename__ = "split_assignments"
    __table_args__ = (Index("ix_split_assignments_subset", "split_id", "subset"),)

    split_id: Mapped[int] = mapped_column(ForeignKey("splits.id", ondelete="CASCADE"), primary_key=True)
    # No foreign key to images on purpose (migration 0003): a per-row check made million-row writes 5x slower
    # on Postgres, and the split job only writes ids it has just read from the (never deleted) images.
    image_id: Mapped[int] = mapped_column(primary_key=True)
    subset: Mapped[str] = mapped_column(String(16))
    position: Mapped[int] = mapped_column(default=0)  # order after the within-subset shuffle
