"""Garbage collection of blobs: a blob no row refers to is deleted, if it is older than a grace period.

Safe against uploads in flight: a request or an ingest job writes (or re-stores, which refreshes the file's
time) a blob before it commits the row naming it, and both happen well within the grace period, so a blob
that is young may still be about to be referred to and is left alone. Each batch of candidates is checked
against the database right before its blobs are deleted.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy.orm import Session

from app.core.artefacts import ArtefactStore
from app.core.settings import Settings
from app.core.storage import BlobStore, StoredBlob
from app.models import utcnow
from app.storage import repository
from app.uploads.service import discard

BATCH = 500


@dataclass
class GcResult:
    blobs: int = 0  # blob files looked at
    deleted: int = 0
    deleted_bytes: int = 0
    kept_young: int = 0  # unreferenced, but within the grace period
    artefacts_deleted: int = 0  # files of runs never recorded, checkpoints of ended jobs


def collect_garbage(
    *, sessions: Callable[[], Session], blobs: BlobStore, grace_seconds: float, dry_run: bool = False
) -> GcResult:
    """Delete the blobs no row refers to that are older than `grace_seconds` (with `dry_run`, only count)."""
    result = GcResult()
    cutoff = time.time() - grace_seconds
    for batch in _batches(blobs.iter_blobs()):
        result.blobs += len(batch)
        with sessions() as session:
            used = repository.referenced(session, [blob.sha256 for blob in batch])
        for blob in batch:
            if blob.sha256 in used:
                continue
            if blob.mtime >= cutoff or not _still_old(blobs, blob.sha256, cutoff):
                result.kept_young += 1
                continue
            if not dry_run:
                blobs.delete(blob.sha256)
            result.deleted += 1
            result.deleted_bytes += blob.size
    result.artefacts_deleted = _collect_artefacts(sessions, blobs.artefacts, cutoff, dry_run)
    return result


def _collect_artefacts(sessions: Callable[[], Session], artefacts: ArtefactStore, cutoff: float, dry_run: bool) -> int:
    """Files a job left and nothing will read: a run's uploads when the run was never recorded finished and its
    job ended (or the run is gone), a resume checkpoint of a job that ended. A run's recorded files are never
    touched; embedding sets are rebuilt in place, so they stay too. Older than the grace period only."""
    owned: dict[tuple[str, int], list[str]] = {}
    for item in [*artefacts.iter("runs"), *artefacts.iter("jobs")]:
        area, owner, *_ = item.key.split("/")
        if owner.isdigit() and item.mtime < cutoff:
            owned.setdefault((area, int(owner)), []).append(item.key)
    with sessions() as session:
        keep_runs = repository.runs_keeping_files(session, [i for area, i in owned if area == "runs"])
        keep_jobs = repository.jobs_still_active(session, [i for area, i in owned if area == "jobs"])
    gone = [
        key
        for (area, owner), keys in owned.items()
        if owner not in (keep_runs if area == "runs" else keep_jobs)
        for key in keys
    ]
    if not dry_run:
        for key in gone:
            artefacts.delete(key)
    return len(gone)


def release_abandoned_uploads(*, sessions: Callable[[], Session], blobs: BlobStore, settings: Settings) -> int:
    """Discard the uploads whose ingest failed or was cancelled more than `upload_retry_days` ago (they were
    kept for a retry), releasing their bytes; returns how many blobs went."""
    ended_before = utcnow() - timedelta(days=settings.upload_retry_days)
    with sessions() as session:
        released = discard.release_abandoned(session, settings=settings, ended_before=ended_before)
        session.commit()
    for sha in released:  # after the commit: a row never names a deleted blob
        blobs.delete(sha)
    return len(released)


def _still_old(blobs: BlobStore, sha256: str, cutoff: float) -> bool:
    """Looked at again right before deleting: a request may have re-stored it since the listing."""
    modified = blobs.modified_at(sha256)
    return modified is not None and modified < cutoff


def _batches(items: Iterator[StoredBlob]) -> Iterator[list[StoredBlob]]:
    batch: list[StoredBlob] = []
    for item in items:
        batch.append(item)
        if len(batch) >= BATCH:
            yield batch
            batch = []
    if batch:
        yield batch
