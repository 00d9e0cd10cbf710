"""Which blobs the database still refers to."""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.jobs.shards import unfinished_parent_results
from app.jobs.states import ACTIVE
from app.models import EmbeddingSet, Image, Job, Run, Upload, UploadEntry

# Uploads whose entries still need their blobs: being filled, queued or ingesting (a failed or cancelled ingest
# keeps its upload queued/ingesting, so it can be retried, until the upload is discarded).
from app.uploads.states import UNFINISHED


def referenced(session: Session, shas: Collection[str]) -> set[str]:
    """Those of `shas` an image, a thumbnail, a labels CSV, an unfinished upload's entry or a shard result of an
    unfinished job names."""
    if not shas:
        return set()
    found = set(session.scalars(select(Image.sha256).where(Image.sha256.in_(shas))))
    found |= set(session.scalars(select(Image.thumb_sha256).where(Image.thumb_sha256.in_(shas))))
    found |= set(session.scalars(select(Upload.labels_csv_sha256).where(Upload.labels_csv_sha256.in_(shas))))
    entries = (
        select(UploadEntry.sha256)
        .join(Upload, Upload.id == UploadEntry.upload_id)
        .where(UploadEntry.sha256.in_(shas), Upload.status.in_(UNFINISHED))
    )
    found |= set(session.scalars(entries))
    found |= unfinished_parent_results(session, list(shas))
    return {sha for sha in found if sha}


def image_blobs_after(session: Session, *, after_id: int, limit: int) -> list[tuple[int, int, str, str, str | None]]:
    """(image id, dataset id, file name, sha256, thumbnail sha256) of the next `limit` images by id (keyset)."""
    rows = session.execute(
        select(Image.id, Image.dataset_id, Image.filename, Image.sha256, Image.thumb_sha256)
        .where(Image.id > after_id)
        .order_by(Image.id)
        .limit(limit)
    )
    return [(row[0], row[1], row[2], row[3], row[4]) for row in rows]


def runs_with_models(session: Session) -> list[tuple[int, str, dict[str, Any]]]:
    """(run id, model_path, timings) of every run that records model files."""
    query = select(Run.id, Run.model_path, Run.timings).where(Run.model_path.is_not(None)).order_by(Run.id)
    rows = session.execute(query)
    return [(row[0], row[1], dict(row[2] or {})) for row in rows]


def embedding_sets_with_rows(session: Session) -> list[tuple[int, int, str]]:
    """(set id, dataset id, backbone) of every embedding set that records stored vectors."""
    rows = session.execute(
        select(EmbeddingSet.id, EmbeddingSet.dataset_id, EmbeddingSet.backbone)
        .where(EmbeddingSet.count > 0)
        .order_by(EmbeddingSet.id)
    )
    return [(row[0], row[1], row[2]) for row in rows]


def jobs_still_active(session: Session, job_ids: Collection[int]) -> set[int]:
    """Those of `job_ids` queued or running: their scratch in the store (a resume checkpoint) is still needed."""
    if not job_ids:
        return set()
    return set(session.scalars(select(Job.id).where(Job.id.in_(job_ids), Job.status.in_(ACTIVE))))


def runs_keeping_files(session: Session, run_ids: Collection[int]) -> set[int]:
    """Those of `run_ids` whose files must stay: recorded finished (a model_path), or still being trained."""
    if not run_ids:
        return set()
    recorded = select(Run.id).where(Run.id.in_(run_ids), Run.model_path.is_not(None))
    training = select(Run.id).join(Job, Job.id == Run.job_id).where(Run.id.in_(run_ids), Job.status.in_(ACTIVE))
    return set(session.scalars(recorded)) | set(session.scalars(training))
