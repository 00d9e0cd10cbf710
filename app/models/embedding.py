from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from app.embeddings.states import EmbeddingSetStatus
from app.models.base import Base, DatasetScopedMixin, TimestampMixin, utcnow

EMBEDDING_STATUSES = tuple(EmbeddingSetStatus)


class EmbeddingSet(DatasetScopedMixin, TimestampMixin, Base):
    """One dataset's vectors from one backbone: the rows say what is stored, the files under the data dir hold
    the float16 vectors and the nearest-neighbour index (app/embeddings/store.py)."""

    __tablename__ = "embedding_sets"
    __table_args__ = (UniqueConstraint("dataset_id", "backbone"),)

    backbone: Mapped[str] = mapped_column(String(100))
    status: Mapped[str] = mapped_column(String(16), default=EmbeddingSetStatus.QUEUED.value)
    count: Mapped[int] = mapped_column(default=0)
    dims: Mapped[int] = mapped_column(default=0)
    index_kind: Mapped[str] = mapped_column(String(16), default="exact")
    job_id: Mapped[int | None] = mapped_column(ForeignKey("jobs.id", ondelete="SET NULL"))
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
