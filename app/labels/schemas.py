"""Request and response bodies of label merges and their undo."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel

from app.datasets.schemas import LabelOut


class LabelMergeIn(BaseModel):
    into_label_id: int


class LabelMerged(BaseModel):
    into: LabelOut
    moved: int


class MergeUndoneOut(BaseModel):
    label: LabelOut  # the label offered again
    moved: int  # images moved back to it
    event_id: int  # the "unmerge" event that records the undo


class LabelEventOut(BaseModel):
    id: int
    kind: str
    details: dict[str, Any]
    user: str | None
    created_at: datetime
    undoable: bool
