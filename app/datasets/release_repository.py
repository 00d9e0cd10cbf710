"""Queries of releasing an upload's bytes (discarding it, or the sweep of abandoned ones)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from app.models import Job, Upload, UploadEntry


def staged_blobs_of(session: Session, upload_id: int) -> list[str]:
    """Every blob an upload's entries and its labels CSV name."""
    entries = select(UploadEntry.sha256).where(UploadEntry.upload_id == upload_id, UploadEntry.sha256.is_not(None))
    csv = session.scalar(select(Upload.labels_csv_sha256).where(Upload.id == upload_id))
    return sorted({sha for sha in session.scalars(entries.distinct()) if sha} | ({csv} if csv else set()))


def abandoned_uploads(session: Session, *, ended_before: datetime) -> list[int]:
    """Uploads waiting for a retry whose ingest job failed or was cancelled before `ended_before`."""
    query = (
        select(Upload.id)
        .join(Job, Job.id == Upload.job_id)
        .where(
            Upload.status.in_(("queued", "ingesting")),
            Job.status.in_(("failed", "cancelled")),
            Job.finished_at < ended_before,
        )
        .order_by(Upload.id)
    )
    return list(session.scalars(query))


def delete_entries_of(session: Session, upload_id: int) -> None:
    session.execute(delete(UploadEntry).where(UploadEntry.upload_id == upload_id))
