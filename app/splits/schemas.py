from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from app.core.limits import MAX_SEED
from app.ml.near_duplicates import DEFAULT_HAMMING_THRESHOLD


class SplitIn(BaseModel):
    """The split form and API body; defaults are the seed's rules."""

    model_config = ConfigDict(allow_inf_nan=False)  # NaN passes no bound check; Infinity means nothing here

    seed: int = Field(default=0, ge=0, le=MAX_SEED)
    target_source: str | None = None
    target_train_fraction: float = Field(default=0.8, ge=0, le=1)
    train_dev_fraction: float = Field(default=0.0, ge=0, lt=1)
    dev_cap: int = Field(default=10_000, ge=0)
    test_cap: int = Field(default=10_000, ge=0)
    small_ratios: tuple[float, float, float] = (0.6, 0.2, 0.2)
    near_duplicate_threshold: int = Field(default=DEFAULT_HAMMING_THRESHOLD, ge=0, le=16)
    use_imported: bool = False
    dry_run: bool = False


class SplitCreated(BaseModel):
    split_id: int
    job_id: int


class PreviewOut(BaseModel):
    counts: dict[str, Any]
    warnings: list[dict[str, str]]
    groups: dict[str, Any]


class SplitOut(BaseModel):
    id: int
    dataset_id: int
    version: int
    parent_id: int | None
    status: str
    params: dict[str, Any]
    counts: dict[str, Any]
    groups: dict[str, Any]
    warnings: list[Any]
    job_id: int | None
