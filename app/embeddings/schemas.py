from __future__ import annotations

from pydantic import BaseModel, Field

from app.ml.backbone_choices import DEFAULT_BACKBONE


class EmbeddingsIn(BaseModel):
    backbone: str = Field(default=DEFAULT_BACKBONE, min_length=1, max_length=100)


class EmbeddingSetOut(BaseModel):
    backbone: str
    status: str
    count: int
    dims: int
    index: str
    job_id: int | None


class EmbeddingSetsOut(BaseModel):
    items: list[EmbeddingSetOut]


class NeighbourOut(BaseModel):
    image_id: int
    similarity: float
    label: str
    subsets: list[str]


class SimilarOut(BaseModel):
    items: list[NeighbourOut]
