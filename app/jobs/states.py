"""Job states, as stored in jobs.status (a string column: the values are the stored strings, no migration)."""

from __future__ import annotations

from enum import StrEnum


class JobStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


ACTIVE = frozenset({JobStatus.QUEUED, JobStatus.RUNNING})
# A job that ended without succeeding: whatever it was building did not get built.
UNSUCCESSFUL = frozenset({JobStatus.FAILED, JobStatus.CANCELLED})
