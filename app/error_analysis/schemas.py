"""API shapes of error analysis. Answers validate from the service's views (``model_validate(view)``)."""

from __future__ import annotations

from datetime import datetime

from pydantic import AliasChoices, BaseModel, ConfigDict, Field

from app.core.limits import MAX_SEED
from app.error_analysis.service import Category
from app.ml.error_analysis import DEFAULT_SAMPLE_SIZE


class ErrorItemOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    image_id: int
    label: str
    predicted: str
    confidence: float
    tags: list[str]
    is_error: bool
    note: str
    tagged_by: str | None
    tagged_at: datetime | None


class ErrorListOut(BaseModel):
    """Read from an ``ErrorSampleView``, whose names differ where the view's own mean something else (its
    ``size`` is the size asked for, its ``items`` the whole sample before the label filters)."""

    model_config = ConfigDict(from_attributes=True)

    subset: str
    seed: int
    total_errors: int
    # errors in the sample (all of them when the subset has fewer than asked for)
    sample_size: int = Field(validation_alias=AliasChoices("sampled_errors", "sample_size"))
    correct_in_sample: int = Field(validation_alias=AliasChoices("sampled_correct", "correct_in_sample"))
    matching_errors: int
    stored_sample_id: int | None
    items: list[ErrorItemOut] = Field(validation_alias=AliasChoices("shown", "items"))


class NewSampleIn(BaseModel):
    subset: str = "dev"
    size: int = DEFAULT_SAMPLE_SIZE
    seed: int | None = Field(default=None, ge=0, le=MAX_SEED)
    include_correct: int = 0


class AnnotationIn(BaseModel):
    tags: list[str] | None = None
    note: str | None = None


# A row of the ceiling table is answered as the service's view has it: its one field list is there (and in
# app/ml/error_analysis.CeilingRow, which it extends).
CategoryOut = Category


class AnalysisOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    subset: str
    subset_size: int
    subset_error: float
    total_errors: int
    sampled_errors: int
    reviewed: int
    categories: list[CategoryOut]


class TopClassOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

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
    model_config = ConfigDict(from_attributes=True)

    subset: str
    item: ErrorItemOut
    filename: str
    top: list[TopClassOut]
    history: list[HistoryOut]


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


class TaggedOut(BaseModel):
    tagged: int
    already: int
