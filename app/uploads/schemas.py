"""JSON shapes of the uploads API."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from app.uploads import service


class UploadOpenIn(BaseModel):
    source: str | None = None
    label: str | None = None
    resume: bool = True
    unlabeled: bool = False  # store the images without a label (the pool) instead of rejecting them


class UploadOpened(BaseModel):
    upload_id: int
    resumed: bool
    files: int
    chunk_bytes: int = service.CHUNKED_FILE_BYTES
    max_chunk_bytes: int = service.MAX_CHUNK_BYTES


class UploadStarted(BaseModel):
    upload_id: int
    job_id: int


class FileClaim(BaseModel):
    name: str = Field(max_length=4096)
    sha256: str = Field(max_length=64)
    size: int = Field(ge=0)


class HaveIn(BaseModel):
    files: list[FileClaim] = Field(max_length=5000)


class HaveOut(BaseModel):
    missing: list[str]
    partial: dict[str, int]
    registered: int
    refused: dict[str, str]


class StagedOut(BaseModel):
    staged: int
    already: int
    rejected: int
    skipped: int


class ChunkOut(BaseModel):
    received: int
    complete: bool


class ConflictIn(BaseModel):
    keep: Literal["existing", "new"]


class ReportItemOut(BaseModel):
    entry_id: int
    name: str
    reason: str
    image_id: int | None
    label: str | None


class CsvProblemOut(BaseModel):
    row: int | None
    reason: str


class UploadOut(BaseModel):
    id: int
    dataset_id: int
    status: str
    source: str
    label: str | None
    job_id: int | None
    job_progress: float | None
    job_message: str | None
    job_error: str | None
    files: int
    staged: int
    accepted: int
    duplicates: int
    conflicts: int
    rejected_count: int
    rejected: list[ReportItemOut]
    duplicate_items: list[ReportItemOut]
    conflict_items: list[ReportItemOut]
    resolved_items: list[ReportItemOut]
    notes: list[ReportItemOut]
    csv_problems: list[CsvProblemOut]
    ingest_seconds: dict[str, float]

    @classmethod
    def of(cls, report: service.UploadReport) -> UploadOut:
        def items(found: list[service.ReportItem]) -> list[ReportItemOut]:
            return [ReportItemOut(**vars(item)) for item in found]

        job = report.job
        return cls(
            id=report.upload.id,
            dataset_id=report.upload.dataset_id,
            status=report.status,
            source=report.upload.source,
            label=report.upload.label,
            job_id=job.id if job else None,
            job_progress=job.progress if job else None,
            job_message=job.message if job else None,
            job_error=job.error if job else None,
            files=report.files,
            staged=report.staged,
            accepted=report.accepted,
            duplicates=report.duplicates,
            conflicts=report.conflicts,
            rejected_count=report.rejected,
            rejected=items(report.rejected_items),
            duplicate_items=items(report.duplicate_items),
            conflict_items=items(report.conflict_items),
            resolved_items=items(report.resolved_items),
            notes=items(report.noted_items),
            csv_problems=[CsvProblemOut(**problem) for problem in report.csv_problems],
            ingest_seconds=report.seconds,
        )
