from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

from app.core.limits import MAX_SEED
from app.errors.service import ErrorAnalysis, ErrorDetail, ErrorItem, ErrorSampleView
from app.ml.error_analysis import DEFAULT_SAMPLE_SIZE


class ErrorItemOut(BaseModel):
    image_id: int
    label: str
    predicted: str
    confidence: float
    tags: list[str]
    is_error: bool
    note: str
    tagged_by: str | None
    tagged_at: datetime | None

    @classmethod
    def of(cls, item: ErrorItem) -> ErrorItemOut:
        return cls(
            image_id=item.image_id,
            label=item.label,
            predicted=item.predicted,
            confidence=item.confidence,
            tags=list(item.tags),
            is_error=item.is_error,
            note=item.note,
            tagged_by=item.tagged_by,
            tagged_at=item.tagged_at,
        )


class ErrorListOut(BaseModel):
    subset: str
    seed: int
    total_errors: int
    sample_size: int  # errors in the sample (all of them when the subset has fewer than asked for)
    correct_in_sample: int
    matching_errors: int
    stored_sample_id: int | None
    items: list[ErrorItemOut]

    @classmethod
    def of(cls, view: ErrorSampleView) -> ErrorListOut:
        return cls(
            subset=view.subset,
            seed=view.seed,
            total_errors=view.total_errors,
            sample_size=view.sampled_errors,
            correct_in_sample=view.sampled_correct,
            matching_errors=view.matching_errors,
            stored_sample_id=view.stored.id if view.stored is not None else None,
            items=[ErrorItemOut.of(item) for item in view.shown],
        )


class NewSampleIn(BaseModel):
    subset: str = "dev"
    size: int = DEFAULT_SAMPLE_SIZE
    seed: int | None = Field(default=None, ge=0, le=MAX_SEED)
    include_correct: int = 0


class AnnotationIn(BaseModel):
    tags: list[str] | None = None
    note: str | None = None


class CategoryOut(BaseModel):
    tag: str
    color: str
    count: int
    share: float
    share_low: float
    share_high: float
    estimated_errors: float
    ceiling_error: float
    description: str


class AnalysisOut(BaseModel):
    subset: str
    subset_size: int
    subset_error: float
    total_errors: int
    sampled_errors: int
    reviewed: int
    categories: list[CategoryOut]

    @classmethod
    def of(cls, analysis: ErrorAnalysis) -> AnalysisOut:
        return cls(
            subset=analysis.subset,
            subset_size=analysis.subset_size,
            subset_error=analysis.subset_error,
            total_errors=analysis.total_errors,
            sampled_errors=analysis.sampled_errors,
            reviewed=analysis.reviewed,
            categories=[
                CategoryOut(
                    tag=row.tag,
                    color=analysis.colors.get(row.tag, ""),
                    count=row.count,
                    share=row.share,
                    share_low=row.share_low,
                    share_high=row.share_high,
                    estimated_errors=row.estimated_errors,
                    ceiling_error=row.ceiling_error,
                    description=analysis.sentence(row),
                )
                for row in analysis.rows
            ],
        )


class TopClassOut(BaseModel):
    label: str
    probability: float


class HistoryOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    kind: str
    old_label: str | None
    new_label: str | None
    reason: str
    user: str | None
    created_at: datetime


class ErrorDetailOut(BaseModel):
    subset: str
    item: ErrorItemOut
    filename: str
    top: list[TopClassOut]
    history: list[HistoryOut]

    @classmethod
    def of(cls, detail: ErrorDetail) -> ErrorDetailOut:
        return cls(
            subset=detail.subset,
            item=ErrorItemOut.of(detail.item),
            filename=detail.filename,
            top=[TopClassOut(label=t.label, probability=t.probability) for t in detail.top],
            history=[HistoryOut.model_validate(row) for row in detail.history],
        )


class TagOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    name: str
    color: str
    position: int


class TagIn(BaseModel):
    name: str
    color: str | None = None


class TagPatch(BaseModel):
    name: str | None = None
    color: str | None = None


class MergeIn(BaseModel):
    into: int
