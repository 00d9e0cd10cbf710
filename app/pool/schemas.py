"""Request and response shapes of the pool API."""

from __future__ import annotations

from pydantic import BaseModel


class PoolScoreStarted(BaseModel):
    run_id: int
    job_id: int


class LabelProbabilityOut(BaseModel):
    label: str
    probability: float


class PoolItemOut(BaseModel):
    image_id: int
    rank: int
    suggestion: str  # the model's most probable label, pre-selected on the labelling page
    confidence: float
    score: float  # what the strategy ranked by (higher = label sooner)
    top: list[LabelProbabilityOut]
    label_version: int  # name it when labelling (POST /api/images/{id}/label)
    source: str
    filename: str
    placement: str  # where extending the split puts it once labelled


class PoolOut(BaseModel):
    run_id: int
    dataset_id: int
    strategy: str
    pool_size: int  # unlabeled images now
    scored: int  # of those, scored by this run
    unscored: int  # uploaded since the scoring: score the pool again to rank them
    labelled_from_pool: int
    placement_note: str
    items: list[PoolItemOut]
