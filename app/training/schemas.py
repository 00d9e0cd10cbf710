from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from app.core.limits import MAX_SEED
from app.ml.backbone_choices import DEFAULT_BACKBONE
from app.ml.modes import TrainingMode


class RunIn(BaseModel):
    """The run form and API body."""

    model_config = ConfigDict(allow_inf_nan=False)  # NaN passes no bound check; Infinity means nothing here

    dataset_id: int
    split_id: int
    backbone: str = DEFAULT_BACKBONE
    mode: str = TrainingMode.LINEAR.value  # checked by the service (one error naming the modes)
    epochs: int = Field(default=30, ge=1, le=1000)
    lr: float = Field(default=3e-3, gt=0, le=10)
    batch_size: int = Field(default=32, ge=1, le=4096)
    weight_decay: float = Field(default=1e-4, ge=0, le=1)
    seed: int = Field(default=0, ge=0, le=MAX_SEED)
    finetune_blocks: int = Field(default=2, ge=1, le=50)
    human_error: float = Field(default=0.0, ge=0, le=1, description="a fraction (0.05 = 5%)")
    # The form's field: people write human-level error as a percent; it replaces human_error when given.
    human_error_percent: float | None = Field(default=None, ge=0, le=100, exclude=True)
    patience: int = Field(default=8, ge=1, le=1000)

    @model_validator(mode="after")
    def _percent_to_fraction(self) -> RunIn:
        if self.human_error_percent is not None:
            self.human_error = self.human_error_percent / 100
        return self


class RunCreated(BaseModel):
    run_id: int
    job_id: int


class RunOut(BaseModel):
    id: int
    dataset_id: int
    split_id: int
    status: str
    config: dict[str, Any]
    label_names: list[str]
    metrics: dict[str, Any]
    per_class: dict[str, Any]
    confusion: dict[str, Any]
    diagnosis: dict[str, Any]
    history: list[dict[str, Any]]
    timings: dict[str, Any]
    job_id: int | None
    is_baseline: bool
    rescored: dict[str, Any] | None = None


class PredictionOut(BaseModel):
    image_id: int
    subset: str
    label: str
    predicted: str
    confidence: float
    probs: list[float]


class PredictionsOut(BaseModel):
    total: int
    items: list[PredictionOut]


class LabelProbability(BaseModel):
    label: str
    probability: float


class Refusal(BaseModel):
    """Why a file was not scored, in the words of the ingest report (`code` as there too)."""

    code: str
    reason: str


class PredictItem(BaseModel):
    filename: str
    top: list[LabelProbability]  # the most probable labels, best first (up to 5); empty when refused
    refused: Refusal | None = None


class PredictOut(BaseModel):
    items: list[PredictItem]  # in the order the files were sent
    runtime: str  # what computed them, e.g. "onnxruntime (model.onnx)"
