"""An upload's life after its files arrived: finishing it (queueing the ingest job), retrying a failed or
cancelled ingest, its status and its report."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session

from app.core.errors import Conflict, Invalid
from app.core.lookup import get_or_404
from app.core.settings import Settings
from app.core.storage import BlobStore
from app.datasets.logic import csv_chunks
from app.jobs import service as jobs
from app.models import Dataset, Job, Upload, User
from app.uploads import repository
from app.uploads.service import receive, staging
from app.uploads.states import ENDED, EntryOutcome, UploadStatus

INGEST_KIND = "datasets.ingest"  # the job kind stored with every ingest job: it keeps its historic name
REPORT_CSV_HEADER = ("name", "outcome", "reason", "label", "image_id")


def finish_upload(
    session: Session,
    *,
    upload_id: int,
    user_id: int | None,
    blobs: BlobStore,
    settings: Settings,
    label: str | None = None,
    source: str | None = None,
    labels_csv: bytes | None = None,
    source_folders: bool = False,
    user: User | None = None,
) -> Job:
    """Close the upload to new files and queue its ingest job (in the caller's transaction).

    `source_folders`: the top folder of each path names the image's source (`source/label/file`, the demo).
    """
    upload = staging.open_upload(session, upload_id, user)
    staging.check_upload_fields(label=label, labels_csv=labels_csv, unlabeled=upload.unlabeled)
    if label is not None and label.strip():
        upload.label = staging.checked_name(label, what="label")
    if source is not None and source.strip():
        upload.source = staging.source_name(source)
    if labels_csv is not None:
        if upload.label is not None:
            raise Invalid("give either one label for every file or a labels CSV, not both")
        staging.check_labels_csv(labels_csv)
        with staging.disk_space():
            upload.labels_csv_sha256 = blobs.put_bytes(labels_csv)
    if not repository.count_entries(session, upload.id):
        raise Invalid("nothing was uploaded: add image files, folders or .zip archives first")
    payload = {"upload_id": upload.id, "source_folders": source_folders}
    job = jobs.enqueue(
        session, kind=INGEST_KIND, payload=payload, created_by_id=user_id, max_attempts=settings.job_max_attempts
    )
    upload.status, upload.job_id = UploadStatus.QUEUED, job.id
    session.flush()
    receive.discard_parts(settings, upload_id=upload.id)  # chunks of files never completed
    return job


def upload_status(session: Session, upload: Upload) -> UploadStatus:
    """An upload whose job ended without finishing it reads as that job's end (failed, cancelled)."""
    if upload.status in (UploadStatus.QUEUED, UploadStatus.INGESTING) and upload.job_id is not None:
        job = repository.get_job(session, upload.job_id)
        if job is not None and job.status in ("failed", "cancelled"):
            return UploadStatus(job.status)
        if job is not None and job.status == "running":  # as the job bar beside it says
            return UploadStatus.INGESTING
    return UploadStatus(upload.status)


def retry_upload(session: Session, *, upload_id: int, user_id: int | None, max_attempts: int) -> Job:
    """Run a failed or cancelled ingest again; it resumes where the last one stopped."""
    upload = staging.get_upload(session, upload_id=upload_id)
    status = upload_status(session, upload)
    if status not in (UploadStatus.FAILED, UploadStatus.CANCELLED):
        raise Conflict(f"upload {upload_id} is {status}; only a failed or cancelled upload can be retried")
    previous = repository.get_job(session, upload.job_id) if upload.job_id else None
    payload = dict(previous.payload) if previous is not None else {"upload_id": upload.id}
    job = jobs.enqueue(session, kind=INGEST_KIND, payload=payload, created_by_id=user_id, max_attempts=max_attempts)
    upload.status, upload.job_id = UploadStatus.QUEUED, job.id
    session.flush()
    return job


@dataclass(frozen=True)
class ReportItem:
    entry_id: int
    name: str
    reason: str
    image_id: int | None = None
    label: str | None = None


@dataclass(frozen=True)
class UploadReport:
    upload: Upload
    dataset: Dataset
    status: UploadStatus
    job: Job | None
    files: int
    staged: int
    accepted: int
    duplicates: int
    conflicts: int
    rejected: int
    rejected_items: list[ReportItem]
    duplicate_items: list[ReportItem]
    conflict_items: list[ReportItem]
    resolved_items: list[ReportItem]
    noted_items: list[ReportItem]
    csv_problems: list[dict[str, Any]]
    seconds: dict[str, float]  # how long the ingest job spent per phase (expand, ingest, finish)

    @property
    def finished(self) -> bool:
        return self.status in ENDED


def upload_report(session: Session, *, upload_id: int, limit: int = 500) -> UploadReport:
    upload = staging.get_upload(session, upload_id=upload_id)
    counts = repository.count_entries(session, upload.id)
    job = repository.get_job(session, upload.job_id) if upload.job_id else None

    def items(outcomes: Sequence[str]) -> list[ReportItem]:
        return [
            ReportItem(entry.id, entry.name, entry.reason or "", entry.image_id, entry.label)
            for entry in repository.entries_with_outcome(session, upload.id, outcomes, limit=limit)
        ]

    result = (job.result or {}) if job is not None else {}
    return UploadReport(
        upload=upload,
        dataset=get_or_404(session, Dataset, upload.dataset_id),
        status=upload_status(session, upload),
        job=job,
        files=sum(n for outcome, n in counts.items() if outcome != EntryOutcome.EXPANDED),
        staged=counts.get(EntryOutcome.STAGED, 0),
        accepted=counts.get(EntryOutcome.ACCEPTED, 0),
        duplicates=counts.get(EntryOutcome.DUPLICATE, 0),
        conflicts=counts.get(EntryOutcome.CONFLICT, 0) + counts.get(EntryOutcome.RESOLVED, 0),
        rejected=counts.get(EntryOutcome.REJECTED, 0),
        rejected_items=items([EntryOutcome.REJECTED]),
        duplicate_items=items([EntryOutcome.DUPLICATE]),
        conflict_items=items([EntryOutcome.CONFLICT]),
        resolved_items=items([EntryOutcome.RESOLVED]),
        noted_items=[
            ReportItem(entry.id, entry.name, entry.reason or "", entry.image_id, entry.label)
            for entry in repository.noted_entries(session, upload.id, limit=limit)
        ],
        csv_problems=list(result.get("csv_problems", [])),
        seconds=dict(result.get("seconds", {})),
    )


def uploads_of(session: Session, *, dataset_id: int, limit: int = 20) -> list[tuple[Upload, UploadStatus]]:
    return [
        (upload, upload_status(session, upload)) for upload in repository.uploads_of(session, dataset_id, limit=limit)
    ]


def report_csv(session: Session, *, upload_id: int) -> Iterator[str]:
    """Every file of the upload and what became of it, as CSV pieces (formula cells neutralised)."""
    return csv_chunks(REPORT_CSV_HEADER, repository.entry_rows(session, upload_id))
