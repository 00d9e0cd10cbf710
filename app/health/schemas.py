from __future__ import annotations

from pydantic import BaseModel


class IssueOut(BaseModel):
    type: str
    count: int
    examples: list[int]
    checked: int


class HealthOut(BaseModel):
    status: str
    job_id: int | None
    image_count: int
    new_images: bool
    backbone: str | None
    scanned_at: str | None
    issues: list[IssueOut]


class ScanStarted(BaseModel):
    job_id: int
