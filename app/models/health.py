from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Double, ForeignKey, Index, String
from sqlalchemy.orm import Mapped, mapped_column

from app.models.base import Base, TimestampMixin, utcnow


class HealthScan(TimestampMixin, Base):
    """A dataset's latest data-health scan: its summary (counts and examples per issue type) is what the health
    page reads, one row, however large the dataset; the per-image findings are in `image_issues`."""

    __tablename__ = "health_scans"

    id: Mapped[int] = mapped_column(primary_key=True)
    dataset_id: Mapped[int] = mapped_column(ForeignKey("datasets.id", ondelete="CASCADE"), unique=True)
    status: Mapped[str] = mapped_column(String(16), default="queued")  # queued, running, ready, failed
    job_id: Mapped[int | None] = mapped_column(ForeignKey("jobs.id", ondelete="SET NULL"))
    image_count: Mapped[int] = mapped_column(default=0)
    last_image_id: Mapped[int] = mapped_column(default=0)
    backbone: Mapped[str | None] = mapped_column(String(100))  # the embeddings the outlier check read
    summary: Mapped[list[Any]] = mapped_column(default=list)
    scanned_at: Mapped[datetime | None]
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class ImageIssue(Base):
    """One image's finding of one issue type in the dataset's latest scan, with its severity."""

    __tablename__ = "image_issues"
    __table_args__ = (
        Index("ix_image_issues_dataset_type_score", "dataset_id", "type", "score", "group_key", "image_id"),
    )

    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"), primary_key=True)
    type: Mapped[str] = mapped_column(String(24), primary_key=True)
    dataset_id: Mapped[int] = mapped_column(ForeignKey("datasets.id", ondelete="CASCADE"))
    score: Mapped[float] = mapped_column(Double)  # higher = worse, comparable within one type
    group_key: Mapped[int | None]  # duplicate and conflict groups: the same key for each member
