"""Discarding an upload releases its bytes: its entries go, and the blobs nothing else needs are deleted."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy.orm import Session

from app.core.errors import Conflict
from app.core.settings import Settings
from app.models import User
from app.uploads import repository
from app.uploads.ownership import check_owner
from app.uploads.service import lifecycle, receive, staging
from app.uploads.states import UploadStatus


def discard_upload(session: Session, *, upload_id: int, settings: Settings, user: User | None = None) -> list[str]:
    """Drop an open upload, or a failed or cancelled one (no retry then), with what it staged; the images it
    already added stay. Returns the blobs nothing needs any more, for the caller to delete after its commit."""
    upload = staging.get_upload(session, upload_id=upload_id)
    check_owner(upload, user)
    status = lifecycle.upload_status(session, upload)
    if status not in (UploadStatus.OPEN, UploadStatus.FAILED, UploadStatus.CANCELLED):
        raise Conflict(f"upload {upload_id} is {status}; only an open, failed or cancelled upload can be discarded")
    candidates = repository.staged_blobs_of(session, upload.id)
    repository.delete_entries_of(session, upload.id)
    upload.status, upload.labels_csv_sha256 = UploadStatus.DISCARDED, None
    session.flush()
    receive.discard_parts(settings, upload_id=upload_id)
    return [sha for sha in candidates if not repository.blob_in_use(session, sha, except_upload_id=upload.id)]


def release_abandoned(session: Session, *, settings: Settings, ended_before: datetime) -> list[str]:
    """Discard the uploads whose ingest failed or was cancelled before `ended_before` and was not retried since:
    kept that long for a retry, then their bytes are released. Returns the blobs to delete after the commit."""
    released: list[str] = []
    for upload_id in repository.abandoned_uploads(session, ended_before=ended_before):
        released += discard_upload(session, upload_id=upload_id, settings=settings)
    return released
