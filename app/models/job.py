from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import ForeignKey, Index, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from app.jobs.states import JobStatus, ShardStatus
from app.models.base import Base, TimestampMixin, utcnow

JOB_STATUSES = tuple(JobStatus)


class Job(TimestampMixin, Base):
    """The single source of truth for background work (no broker besides the database)."""

    __tablename__ = "jobs"
    __table_args__ = (Index("ix_jobs_claim", "status", "queue", "priority", "id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[str] = mapped_column(String(64))
    queue: Mapped[str] = mapped_column(String(32), default="default")
    payload: Mapped[dict[str, Any]] = mapped_column(default=dict)
    status: Mapped[str] = mapped_column(String(16), default=JobStatus.QUEUED.value)
    priority: Mapped[int] = mapped_column(default=0)
    progress: Mapped[float] = mapped_column(default=0.0)
    message: Mapped[str] = mapped_column(String(500), default="")
    error: Mapped[str | None] = mapped_column(Text)
    result: Mapped[dict[str, Any] | None]
    attempts: Mapped[int] = mapped_column(default=0)
    max_attempts: Mapped[int] = mapped_column(default=3)
    cancel_requested: Mapped[bool] = mapped_column(default=False)
    worker_id: Mapped[str | None] = mapped_column(String(128))
    lease_token: Mapped[str | None] = mapped_column(String(36))
    lease_expires_at: Mapped[datetime | None] = mapped_column(index=True)
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    created_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))


class JobExecution(Base):
    """One row per claim: lets anyone audit at-least-once delivery (who ran it, how it ended)."""

    __tablename__ = "job_executions"

    id: Mapped[int] = mapped_column(primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    attempt: Mapped[int]
    worker_id: Mapped[str] = mapped_column(String(128))
    lease_token: Mapped[str] = mapped_column(String(36), unique=True)
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None]
    outcome: Mapped[str | None] = mapped_column(String(16))
    error: Mapped[str | None] = mapped_column(Text)


class JobShard(Base):
    """One shard of a parent job's work (its own job in the queue); the parent runs on when every shard is done."""

    __tablename__ = "job_shards"
    __table_args__ = (UniqueConstraint("parent_job_id", "position"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    parent_job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), unique=True)
    position: Mapped[int]
    items: Mapped[int]
    status: Mapped[str] = mapped_column(String(16), default=ShardStatus.PENDING.value)
    # The shard's output, a content-addressed object in the blob store (garbage once the parent has ended).
    result_sha256: Mapped[str | None] = mapped_column(String(64), index=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None]
