from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class JobOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    kind: str
    status: str
    progress: float
    message: str
    error: str | None
    queue: str
    attempts: int
    max_attempts: int
    cancel_requested: bool
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    # While a job waits on its shards: {"shards": {"total", "done", "items_total", "items_done", "items_per_second"}}.
    result: dict[str, Any] | None = None


class DemoJobIn(BaseModel):
    """A drill job: bounded, so that a request cannot hold a worker for days."""

    model_config = ConfigDict(allow_inf_nan=False)

    seconds: float = Field(default=10.0, ge=0, le=600)
    steps: int = Field(default=20, ge=1, le=1000)
