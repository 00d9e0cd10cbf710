from __future__ import annotations

from typing import Any

from sqlalchemy import ForeignKey, Index, LargeBinary, String
from sqlalchemy.orm import Mapped, mapped_column

from app.models.base import Base, DatasetScopedMixin, TimestampMixin
from app.training.states import RunStatus


class Run(DatasetScopedMixin, TimestampMixin, Base):
    __tablename__ = "runs"

    split_id: Mapped[int] = mapped_column(ForeignKey("splits.id"))
    status: Mapped[str] = mapped_column(String(16), default=RunStatus.QUEUED.value)
    config: Mapped[dict[str, Any]] = mapped_column(default=dict)
    label_names: Mapped[list[Any]] = mapped_column(default=list)
    metrics: Mapped[dict[str, Any]] = mapped_column(default=dict)
    per_class: Mapped[dict[str, Any]] = mapped_column(default=dict)
    confusion: Mapped[dict[str, Any]] = mapped_column(default=dict)
    history: Mapped[list[Any]] = mapped_column(default=list)
    diagnosis: Mapped[dict[str, Any]] = mapped_column(default=dict)
    timings: Mapped[dict[str, Any]] = mapped_column(default=dict)
    model_path: Mapped[str | None] = mapped_column(String(500))
    job_id: Mapped[int | None] = mapped_column(ForeignKey("jobs.id", ondelete="SET NULL"))
    created_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))


class Prediction(Base):
    """A run's out-of-sample prediction for one image, with the label it was scored against."""

    __tablename__ = "predictions"
    __table_args__ = (Index("ix_predictions_run_subset", "run_id", "subset", "is_error"),)

    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True)
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"), primary_key=True)
    subset: Mapped[str] = mapped_column(String(16))
    label_id: Mapped[int] = mapped_column(ForeignKey("labels.id"))
    predicted_label_id: Mapped[int] = mapped_column(ForeignKey("labels.id"))
    confidence: Mapped[float]
    is_error: Mapped[bool]
    probs: Mapped[bytes] = mapped_column(LargeBinary)  # float32 vector in run.label_names order
