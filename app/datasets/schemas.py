"""JSON shapes of the datasets API."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import AliasChoices, AliasPath, BaseModel, ConfigDict, Field

from app.datasets import service


class DatasetIn(BaseModel):
    name: str = Field(max_length=200)
    description: str = ""


class DatasetPatch(BaseModel):
    name: str | None = None
    description: str | None = None
    target_source: str | None = None


class DatasetCreated(BaseModel):
    id: int
    name: str


class DatasetListItem(BaseModel):
    id: int
    name: str
    description: str
    image_count: int
    target_source: str | None


class CountOut(BaseModel):
    label: str
    source: str
    images: int


class DatasetOut(BaseModel):
    id: int
    name: str
    description: str
    image_count: int
    labels: dict[str, int]
    sources: dict[str, int]
    target_source: str | None
    counts: list[CountOut]
    unlabeled: int  # images without a label yet (the pool), not in image_count

    @classmethod
    def of(cls, summary: service.DatasetSummary) -> DatasetOut:
        dataset = summary.dataset
        return cls(
            id=dataset.id,
            name=dataset.name,
            description=dataset.description,
            image_count=summary.image_count,
            unlabeled=summary.unlabeled,
            labels={label.name: label.images for label in summary.labels},
            sources=summary.sources,
            target_source=dataset.target_source,
            counts=[
                CountOut(label=label, source=source, images=n)
                for label, per_source in sorted(summary.table.items())
                for source, n in sorted(per_source.items())
            ],
        )


class LabelIn(BaseModel):
    name: str


class LabelOut(BaseModel):
    id: int
    name: str
    images: int | None = None


class ImageItem(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    filename: str
    label: str | None  # None: unlabeled (the pool)
    source: str
    sha256: str
    width: int
    height: int
    imported_subset: str | None


class ImagePageOut(BaseModel):
    """Read from an ``ImagePage``: ``split_id`` is its split's id (None without a split)."""

    model_config = ConfigDict(from_attributes=True)

    total: int
    limit: int
    offset: int
    split_id: int | None = Field(default=None, validation_alias=AliasChoices(AliasPath("split", "id"), "split_id"))
    items: list[ImageItem]


class HistoryOut(BaseModel):
    kind: str
    old_label: str | None
    new_label: str | None
    version: int
    reason: str
    user: str | None
    created_at: datetime


class SubsetOut(BaseModel):
    split_id: int
    version: int
    subset: str


class ImageOut(BaseModel):
    id: int
    dataset_id: int
    filename: str
    label: str | None  # None: unlabeled (the pool)
    label_version: int
    source: str
    imported_subset: str | None
    sha256: str
    width: int
    height: int
    format: str
    notes: str
    upload_id: int | None
    thumb_url: str
    full_url: str
    history: list[HistoryOut]
    subsets: list[SubsetOut]

    @classmethod
    def of(cls, detail: service.ImageDetail) -> ImageOut:
        image = detail.image
        return cls(
            id=image.id,
            dataset_id=image.dataset_id,
            filename=image.filename,
            label=detail.label,
            label_version=image.label_version,
            source=image.source,
            imported_subset=image.imported_subset,
            sha256=image.sha256,
            width=image.width,
            height=image.height,
            format=image.format,
            notes=image.notes,
            upload_id=image.upload_id,
            thumb_url=f"/images/{image.id}/thumb",
            full_url=f"/images/{image.id}/full",
            history=[HistoryOut(**vars(entry)) for entry in detail.history],
            subsets=[SubsetOut(split_id=s, version=v, subset=n) for s, v, n in detail.subsets],
        )


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
