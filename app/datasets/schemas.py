"""JSON shapes of the datasets API."""

from __future__ import annotations

from datetime import datetime

from pydantic import AliasChoices, AliasPath, BaseModel, ConfigDict, Field

from app.core.schemas import copied_from
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
        return copied_from(
            cls,
            summary.dataset,
            image_count=summary.image_count,
            unlabeled=summary.unlabeled,
            labels={label.name: label.images for label in summary.labels},
            sources=summary.sources,
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
    score: float | None = None  # with an issue filter: that severity (higher = worse)


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
        return copied_from(
            cls,
            image,
            label=detail.label,
            thumb_url=f"/images/{image.id}/thumb",
            full_url=f"/images/{image.id}/full",
            history=[HistoryOut(**vars(entry)) for entry in detail.history],
            subsets=[SubsetOut(split_id=s, version=v, subset=n) for s, v, n in detail.subsets],
        )
