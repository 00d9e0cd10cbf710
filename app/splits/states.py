"""Split states, as stored in splits.status."""

from __future__ import annotations

from enum import StrEnum


class SplitStatus(StrEnum):
    QUEUED = "queued"
    BUILDING = "building"
    READY = "ready"
    FAILED = "failed"


UNFINISHED = frozenset({SplitStatus.QUEUED, SplitStatus.BUILDING})
