from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import AliasChoices, AliasPath, BaseModel, ConfigDict, Field

from app.core.limits import MAX_SEED
from app.core.schemas import copied_from
from app.review.agreement import ProposalView
from app.review.campaigns import DEFAULT_CLAIM_SIZE, ItemView, ReviewView
from app.review.relabel import LabelState


class ReviewIn(BaseModel):
    run_id: int
    subsets: list[str] = Field(default_factory=lambda: ["dev", "test"])
    suspicious_per_subset: int = 50
    correct_per_subset: int = 10
    seed: int = Field(default=0, ge=0, le=MAX_SEED)
    include_train: bool = False  # the separate, explicit option to review train as well
    # A relabel is a proposal until a second reviewer confirms it; unset: on, since every campaign touches test.
    require_agreement: bool | None = None


class ReviewCreated(BaseModel):
    review_id: int


class ProgressOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    done: int
    total: int
    relabeled: int
    ambiguous: int


class ProposalOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    image_id: int
    subset: str
    state: str  # proposed, confirmed, rejected
    old_label: str
    new_label: str
    base_version: int
    reason: str
    proposed_by: str | None
    proposed_at: datetime
    decided_by: str | None
    decided_at: datetime | None
    decision_reason: str
    change_id: int | None
    stale: bool
    withdrawn: bool


class ItemOut(BaseModel):
    image_id: int
    subset: str
    label: str
    label_version: int
    predicted: str | None
    suspicion: float
    selection: str
    status: str
    excluded_reason: str | None
    claimed_by: str | None
    proposal: ProposalOut | None = None  # the item's latest proposed relabel, in a campaign that requires agreement

    @classmethod
    def of(cls, item: ItemView, proposal: ProposalView | None = None) -> ItemOut:
        return copied_from(
            cls,
            item,
            claimed_by=item.claimed_by if item.claim_active else None,
            proposal=ProposalOut.model_validate(proposal) if proposal is not None else None,
        )


class ReviewOut(BaseModel):
    id: int
    dataset_id: int
    run_id: int
    subsets: list[str]
    suspicious_per_subset: int
    correct_per_subset: int
    seed: int
    status: str
    require_agreement: bool
    items: list[ItemOut]
    progress: dict[str, ProgressOut]
    drift: str | None
    rescored: dict[str, dict[str, Any]]

    @classmethod
    def of(cls, view: ReviewView, proposals: dict[int, ProposalView] | None = None) -> ReviewOut:
        review = view.review
        proposals = proposals or {}
        return copied_from(
            cls,
            review,
            subsets=view.subsets,
            items=[ItemOut.of(item, proposals.get(item.image_id)) for item in view.items],
            progress={row.subset: ProgressOut.model_validate(row) for row in view.status.progress},
            drift=view.status.drift,
            rescored=view.status.rescored,
        )


class ReviewStatusIn(BaseModel):
    status: str


class ReviewStatusOut(BaseModel):
    id: int
    status: str


class ClaimIn(BaseModel):
    count: int = DEFAULT_CLAIM_SIZE


class LabelIn(BaseModel):
    label: str
    expected_version: int
    review_id: int | None = None
    reason: str = ""


class ExcludeIn(BaseModel):
    reason: str
    expected_version: int
    review_id: int | None = None


class DecisionIn(BaseModel):
    decision: Literal["kept", "pending"]
    expected_version: int


class RevertIn(BaseModel):
    expected_version: int | None = None
    reason: str = ""


class LabelOut(BaseModel):
    image_id: int
    label: str | None  # None: not labelled yet (uploaded unlabeled)
    label_version: int
    excluded_reason: str | None
    change_id: int | None
    review_status: str | None  # "proposed": the relabel waits for a second reviewer and the label is unchanged
    proposal: ProposalOut | None = None

    @classmethod
    def of(cls, state: LabelState, proposal: ProposalView | None = None) -> LabelOut:
        return copied_from(cls, state, proposal=ProposalOut.model_validate(proposal) if proposal is not None else None)


class HistoryOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    kind: str
    old_label: str | None
    new_label: str | None
    version: int
    reason: str
    review_id: int | None
    reverts_change_id: int | None
    user: str | None
    confirmed_by: str | None  # the second reviewer, for a relabel applied by agreement
    created_at: datetime


class SuspiciousOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    image_id: int
    label: str
    suggested: str | None
    suspicion: float
    flagged: bool


class SuspicionOut(BaseModel):
    """Read from a ``SubsetSuspicionSummary``: ``items`` are its ``top`` examples."""

    model_config = ConfigDict(from_attributes=True)

    subset: str
    size: int
    flagged: int
    items: list[SuspiciousOut] = Field(validation_alias=AliasChoices("top", "items"))


class RejectIn(BaseModel):
    reason: str = ""


def _stat(name: str, field: str) -> AliasChoices:
    """A field read from the view's ``stats`` (or, re-read from JSON, under its own name)."""
    return AliasChoices(AliasPath("stats", name), field)


class AgreementOut(BaseModel):
    """Read from an ``AgreementView``."""

    model_config = ConfigDict(from_attributes=True)

    required: bool
    open: list[ProposalOut]
    disagreements: list[ProposalOut]
    confirmed: int = Field(validation_alias=_stat("confirmed", "confirmed"))
    rejected: int = Field(validation_alias=_stat("disagreements", "rejected"))  # by a second reviewer
    withdrawn: int = Field(validation_alias=_stat("withdrawn", "withdrawn"))
    # confirmed / (confirmed + rejected); None before any second-reviewer decision
    rate: float | None = Field(validation_alias=_stat("rate", "rate"))


class PrecisionOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    subset: str
    reviewed: int
    errors: int
    ambiguous: int
    awaiting: int
    precision: float | None


class ErrorsLeftOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    subset: str
    unreviewed: int
    doubted: int
    flagged: float | None
    agreeing: float | None
    total: float | None


class HonestyOut(BaseModel):
    """The live precision of the suspicion ranking, and the estimated label errors left in dev and test (read
    from a ``HonestyView``)."""

    model_config = ConfigDict(from_attributes=True)

    precision: list[PrecisionOut]
    calibration: float | None = Field(validation_alias=AliasChoices(AliasPath("rates", "calibration"), "calibration"))
    agreeing_rate: float | None = Field(
        validation_alias=AliasChoices(AliasPath("rates", "agreeing_rate"), "agreeing_rate")
    )
    errors_left: list[ErrorsLeftOut] = Field(validation_alias=AliasChoices("left", "errors_left"))
