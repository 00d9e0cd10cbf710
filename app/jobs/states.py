"""Job states, as stored in jobs.status (a string column: the values are the stored strings, no migration)."""

from __future__ import annotations

from enum import StrEnum


class JobStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    # Fanned out into shard jobs and holding no worker: the last shard to finish queues it again (app/jobs/shards.py).
    WAITING = "waiting"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


ACTIVE = frozenset({JobStatus.QUEUED, JobStatus.RUNNING, JobStatus.WAITING})
# A job that ended without succeeding: whatever it was building did not get built.
UNSUCCESSFUL = frozenset({JobStatus.FAILED, JobStatus.CANCELLED})


class ShardStatus(StrEnum):
    """A shard of a parent job's work, as stored in job_shards.status."""

    PENDING = "pending"
    DONE = "done"
