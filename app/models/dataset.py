from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, ForeignKey, Index, String, Text, UniqueConstraint, false
from sqlalchemy.orm import Mapped, mapped_column

from app.models.base import Base, DatasetScopedMixin, TimestampMixin, utcnow


class Dataset(TimestampMixin, Base):
    __tablename__ = "datasets"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    description: Mapped[str] = mapped_column(Text, default="")
    # The distribution the model will face in use; dev/test are drawn from it (the seed's rule).
    target_source: Mapped[str | None] = mapped_column(String(100))
    baseline_run_id: Mapped[int | None]
    created_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))


class Label(DatasetScopedMixin, TimestampMixin, Base):
    __tablename__ = "labels"
    __table_args__ = (UniqueConstraint("dataset_id", "name"),)

    name: Mapped[str] = mapped_column(String(100))
    # A merged label keeps its row (history and predictions point at it) but is no longer offered.
    merged_into_id: Mapped[int | None] = mapped_column(ForeignKey("labels.id"))


class Upload(DatasetScopedMixin, TimestampMixin, Base):
    __tablename__ = "uploads"

    status: Mapped[str] = mapped_column(String(16), default="open")  # open, queued, ingesting, done, failed
    source: Mapped[str] = mapped_column(String(100), default="default")
    label: Mapped[str | None] = mapped_column(String(100))
    # Store the images without a label (the unlabeled pool), rather than reject them as "no label".
    unlabeled: Mapped[bool] = mapped_column(default=False, server_default=false())
    labels_csv_sha256: Mapped[str | None] = mapped_column(String(64))
    job_id: Mapped[int | None] = mapped_column(ForeignKey("jobs.id", ondelete="SET NULL"))
    accepted: Mapped[int] = mapped_column(default=0)
    duplicates: Mapped[int] = mapped_column(default=0)
    conflicts: Mapped[int] = mapped_column(default=0)
    rejected: Mapped[int] = mapped_column(default=0)
    created_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))


class UploadEntry(Base):
    """A file as it arrived (staged blob) and, after ingest, what became of it."""

    __tablename__ = "upload_entries"
    __table_args__ = (UniqueConstraint("upload_id", "name"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    upload_id: Mapped[int] = mapped_column(ForeignKey("uploads.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(1000))
    sha256: Mapped[str | None] = mapped_column(String(64))
    size: Mapped[int] = mapped_column(BigInteger, default=0)
    is_archive: Mapped[bool] = mapped_column(default=False)
    # staged, accepted, duplicate, conflict, rejected, expanded (an archive whose entries were staged)
    outcome: Mapped[str] = mapped_column(String(16), default="staged")
    reason: Mapped[str | None] = mapped_column(Text)
    image_id: Mapped[int | None] = mapped_column(ForeignKey("images.id", ondelete="SET NULL"))
    label: Mapped[str | None] = mapped_column(String(100))
    # For a zip's member: the archive entry it came from (its name is "<archive name>/<path in the archive>").
    archive_entry_id: Mapped[int | None] = mapped_column(
        ForeignKey("upload_entries.id", ondelete="CASCADE"), index=True
    )


class Image(TimestampMixin, Base):
    __tablename__ = "images"
    __table_args__ = (
        UniqueConstraint("dataset_id", "sha256"),
        Index("ix_images_dataset_label", "dataset_id", "label_id"),
        Index("ix_images_dataset_source", "dataset_id", "source"),
        # Covering index: a split reads a million images' columns in index order, without table lookups.
        Index(
            "ix_images_split_columns",
            *("dataset_id", "id", "label_id", "source", "phash", "inner_phash", "imported_subset"),
        ),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    dataset_id: Mapped[int] = mapped_column(ForeignKey("datasets.id", ondelete="CASCADE"))
    sha256: Mapped[str] = mapped_column(String(64))
    thumb_sha256: Mapped[str | None] = mapped_column(String(64))
    filename: Mapped[str] = mapped_column(String(1000))
    source: Mapped[str] = mapped_column(String(100), default="default")
    imported_subset: Mapped[str | None] = mapped_column(String(16))
    # None: uploaded unlabeled (the pool); such an image enters no split until someone labels it.
    label_id: Mapped[int | None] = mapped_column(ForeignKey("labels.id"))
    # Uploaded without a label: once labelled it joins train, unless it is from the target source (app/pool).
    from_pool: Mapped[bool] = mapped_column(default=False, server_default=false())
    # Optimistic concurrency: a label change names the version it saw.
    label_version: Mapped[int] = mapped_column(default=1)
    width: Mapped[int] = mapped_column(default=0)
    height: Mapped[int] = mapped_column(default=0)
    format: Mapped[str] = mapped_column(String(16), default="")
    phash: Mapped[int | None] = mapped_column(BigInteger)
    # dHash of the central 94 % (app.ml.images.inner_dhash64): finds cropped copies. None for images stored before
    # migration 0012, which are then compared by their whole view only.
    inner_phash: Mapped[int | None] = mapped_column(BigInteger)
    notes: Mapped[str] = mapped_column(Text, default="")
    excluded_reason: Mapped[str | None] = mapped_column(Text)  # "ambiguous": left out of scoring
    upload_id: Mapped[int | None] = mapped_column(ForeignKey("uploads.id", ondelete="SET NULL"))


class ImageStat(Base):
    """Statistics measured in ingest's decode (app/ml/image_stats.py), read by data health."""

    __tablename__ = "image_stats"

    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"), primary_key=True)
    brightness: Mapped[float]
    contrast: Mapped[float]
    sharpness: Mapped[float]
    entropy: Mapped[float]
    colourfulness: Mapped[float]


class LabelChange(Base):
    """Label history: nothing is overwritten without a trace; any change can be reverted."""

    __tablename__ = "label_changes"

    id: Mapped[int] = mapped_column(primary_key=True)
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"), index=True)
    kind: Mapped[str] = mapped_column(String(16))  # import, relabel, revert, merge, ambiguous, clear
    old_label_id: Mapped[int | None] = mapped_column(ForeignKey("labels.id"))
    new_label_id: Mapped[int | None] = mapped_column(ForeignKey("labels.id"))
    version: Mapped[int]
    reason: Mapped[str] = mapped_column(Text, default="")
    review_id: Mapped[int | None] = mapped_column(ForeignKey("reviews.id", ondelete="SET NULL"))
    reverts_change_id: Mapped[int | None] = mapped_column(ForeignKey("label_changes.id"))
    # The label merge (or its undo) this change was part of: what an undo of that merge moves back.
    label_event_id: Mapped[int | None] = mapped_column(ForeignKey("label_events.id", ondelete="SET NULL"), index=True)
    user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    # For a change applied by two-reviewer agreement: user_id proposed it, this reviewer confirmed it.
    confirmed_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class LabelEvent(DatasetScopedMixin, TimestampMixin, Base):
    """Dataset-level label operations (add, rename, merge), kept for the dataset's history."""

    __tablename__ = "label_events"

    kind: Mapped[str] = mapped_column(String(16))
    details: Mapped[dict[str, Any]] = mapped_column(default=dict)
    user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
