from __future__ import annotations

from datetime import datetime

from sqlalchemy import Float, ForeignKey, Index, LargeBinary, String
from sqlalchemy.orm import Mapped, mapped_column

from app.models.base import Base, utcnow


class PoolScoring(Base):
    """A run's scoring of its dataset's unlabeled pool: the job, and when it finished."""

    __tablename__ = "pool_scorings"

    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True)
    job_id: Mapped[int | None] = mapped_column(ForeignKey("jobs.id", ondelete="SET NULL"))
    status: Mapped[str] = mapped_column(String(16), default="queued")  # queued, succeeded
    scored: Mapped[int] = mapped_column(default=0)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None]


class PoolScore(Base):
    """The run's model on one unlabeled image: its suggestion, probabilities, and a small embedding for diversity."""

    __tablename__ = "pool_scores"
    __table_args__ = (Index("ix_pool_scores_image_id", "image_id"),)

    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True)
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"), primary_key=True)
    predicted_label_id: Mapped[int | None] = mapped_column(ForeignKey("labels.id", ondelete="SET NULL"))
    confidence: Mapped[float] = mapped_column(Float)
    margin: Mapped[float] = mapped_column(Float)  # top-1 minus top-2 probability
    entropy: Mapped[float] = mapped_column(Float)  # normalised to 0..1
    probs: Mapped[bytes] = mapped_column(LargeBinary)  # float32 vector in run.label_names order
    embedding: Mapped[bytes] = mapped_column(LargeBinary)  # float16, app.ml.active_learning.project_features
