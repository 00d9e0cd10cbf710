"""Run states, as stored in runs.status. A run's own row only ever says queued, running or succeeded; a run
whose job failed or was cancelled reports the job's state (see service.run_status)."""

from __future__ import annotations

from enum import StrEnum


class RunStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


UNFINISHED = frozenset({RunStatus.QUEUED, RunStatus.RUNNING})
