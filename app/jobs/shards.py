"""Fan-out and join on the job queue: a parent job splits its work into shard jobs, any worker claims them, and the
last shard to finish queues the parent again (a chord, in Celery's words; one more job row, in the queue's).

- `fan_out` moves the parent from running to **waiting** (it holds no worker and no lease) and queues its shards,
  in one transaction fenced by the parent's lease: no shard exists without a waiting parent, and no wake-up can
  come before the parent waits.
- `complete_shard` runs inside the shard's own fenced transaction. It first updates the parent's row, which locks
  it (Postgres; SQLite has one writer anyway), so shard completions of one parent are serialised: exactly one of
  them sees every shard done and moves the parent back to queued. A retried shard that had already recorded its
  result changes nothing (done is set only on a pending shard).
- A shard that fails for good (out of attempts) or is cancelled ends its parent the same way (`settle_parent`,
  called from the queue's own finish/give-up paths); cancelling a waiting parent cancels its shards.

Shards are ordinary jobs: leases, heartbeats, the reaper and max_attempts retry a lost or failed shard alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from app.jobs.states import JobStatus, ShardStatus
from app.models import Job, JobExecution, JobShard

# Shards go ahead of new work in their queue: a run already under way finishes before the next one starts.
SHARD_PRIORITY = 10


class ParentNotHeld(Exception):
    """The parent's lease expired or moved on before it could fan out; nothing was queued."""


@dataclass(frozen=True)
class ShardSpec:
    payload: dict[str, Any]
    items: int  # what progress counts (images)


@dataclass(frozen=True)
class ShardProgress:
    total: int
    done: int
    items_total: int
    items_done: int
    items_per_second: float | None

    def to_dict(self) -> dict[str, Any]:
        rate = None if self.items_per_second is None else round(self.items_per_second, 1)
        return {
            "total": self.total,
            "done": self.done,
            "items_total": self.items_total,
            "items_done": self.items_done,
            "items_per_second": rate,
        }

    def describe(self, noun: str) -> str:
        rate = "" if self.items_per_second is None else f", {self.items_per_second:,.1f} {noun}/s"
        return f"{self.done} of {self.total} shards done ({self.items_done:,} of {self.items_total:,} {noun}{rate})"


def fan_out(
    session: Session,
    *,
    parent_id: int,
    token: str,
    kind: str,
    shards: Sequence[ShardSpec],
    queue: str,
    max_attempts: int,
    message: str,
    now: datetime,
) -> int:
    """Park the running parent as waiting and queue `shards` (unless an earlier attempt already did); returns how
    many shards were queued now. The attempt that fanned out is given back: waiting is not a failure."""
    parked = session.execute(
        update(Job)
        .where(Job.id == parent_id, Job.lease_token == token, Job.status == JobStatus.RUNNING)
        .values(
            status=JobStatus.WAITING,
            attempts=Job.attempts - 1,
            lease_token=None,
            lease_expires_at=None,
            worker_id=None,
            updated_at=now,
            message=message[:500],
        )
        .execution_options(synchronize_session=False)
    )
    if parked.rowcount != 1:  # type: ignore[attr-defined]
        raise ParentNotHeld(f"job {parent_id}: lease {token[:8]} is no longer held; no shards queued")
    session.execute(
        update(JobExecution)
        .where(JobExecution.lease_token == token, JobExecution.finished_at.is_(None))
        .values(finished_at=now, outcome="waiting")
        .execution_options(synchronize_session=False)
    )
    if session.scalar(select(func.count()).select_from(JobShard).where(JobShard.parent_job_id == parent_id)):
        return 0
    for position, spec in enumerate(shards):
        job = Job(
            kind=kind,
            payload={**spec.payload, "parent_job_id": parent_id, "shard": position},
            queue=queue,
            priority=SHARD_PRIORITY,
            max_attempts=max_attempts,
            created_at=now,
            updated_at=now,
            message=f"shard {position + 1} of {len(shards)}: queued",
        )
        session.add(job)
        session.flush()
        session.add(JobShard(parent_job_id=parent_id, job_id=job.id, position=position, items=spec.items))
    session.flush()
    return len(shards)


def shards_of(session: Session, parent_id: int) -> list[JobShard]:
    # populate_existing: rows this transaction changed by UPDATE are read as they are now, not as first loaded.
    query = select(JobShard).where(JobShard.parent_job_id == parent_id).order_by(JobShard.position)
    return list(session.scalars(query.execution_options(populate_existing=True)))


def progress_of(session: Session, parent_id: int, *, now: datetime) -> ShardProgress | None:
    rows = shards_of(session, parent_id)
    if not rows:
        return None
    done = [row for row in rows if row.status == ShardStatus.DONE]
    items_done = sum(row.items for row in done)
    started = min(row.created_at for row in rows)
    seconds = (now - started).total_seconds()
    return ShardProgress(
        total=len(rows),
        done=len(done),
        items_total=sum(row.items for row in rows),
        items_done=items_done,
        items_per_second=items_done / seconds if done and seconds > 0 else None,
    )


def complete_shard(
    session: Session, *, job_id: int, result_sha256: str | None, noun: str, span: tuple[float, float], now: datetime
) -> bool:
    """Record a shard's result; True when it was the last one and the parent was queued again. `span` is the
    part of the parent's progress bar the shards fill."""
    shard = session.scalar(select(JobShard).where(JobShard.job_id == job_id))
    if shard is None:
        raise LookupError(f"job {job_id} is not a shard")
    # Lock the parent's row first: completions of one parent's shards then run one after another.
    session.execute(
        update(Job)
        .where(Job.id == shard.parent_job_id)
        .values(updated_at=now)
        .execution_options(synchronize_session=False)
    )
    session.execute(
        update(JobShard)
        .where(JobShard.id == shard.id, JobShard.status == ShardStatus.PENDING)
        .values(status=ShardStatus.DONE, result_sha256=result_sha256, finished_at=now)
        .execution_options(synchronize_session=False)
    )
    progress = progress_of(session, shard.parent_job_id, now=now)
    assert progress is not None
    low, high = span
    values: dict[str, Any] = {
        "progress": low + (high - low) * progress.done / progress.total,
        "message": progress.describe(noun)[:500],
        "result": {"shards": progress.to_dict()},
    }
    last = progress.done == progress.total
    if last:
        values.update(status=JobStatus.QUEUED, message=f"all {progress.total} shards done; queued to finish")
    woke = session.execute(
        update(Job)
        .where(Job.id == shard.parent_job_id, Job.status == JobStatus.WAITING)
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    return last and woke.rowcount == 1  # type: ignore[attr-defined]


def settle_parent(session: Session, *, job_id: int, status: str, reason: str | None, now: datetime) -> None:
    """A shard ended without its result (failed for good, or cancelled): its waiting parent ends the same way,
    and the parent's other shards are cancelled."""
    shard = session.scalar(select(JobShard).where(JobShard.job_id == job_id))
    if shard is None:
        return
    error = f"shard {shard.position + 1} {status}: {reason}" if reason else f"shard {shard.position + 1} {status}"
    ended = session.execute(
        update(Job)
        .where(Job.id == shard.parent_job_id, Job.status == JobStatus.WAITING)
        .values(status=status, error=error, message=error[:500], finished_at=now, updated_at=now)
        .execution_options(synchronize_session=False)
    )
    if ended.rowcount == 1:  # type: ignore[attr-defined]
        cancel_shards(session, parent_id=shard.parent_job_id, now=now)


def cancel_shards(session: Session, *, parent_id: int, now: datetime) -> None:
    """Cancel the parent's shards that have not ended: queued ones at once, running ones by request."""
    children = select(JobShard.job_id).where(JobShard.parent_job_id == parent_id).scalar_subquery()
    session.execute(
        update(Job)
        .where(Job.id.in_(children), Job.status == JobStatus.QUEUED)
        .values(status=JobStatus.CANCELLED, finished_at=now, updated_at=now, message="cancelled with its parent")
        .execution_options(synchronize_session=False)
    )
    session.execute(
        update(Job)
        .where(Job.id.in_(children), Job.status == JobStatus.RUNNING)
        .values(cancel_requested=True, updated_at=now, message="cancelling with its parent…")
        .execution_options(synchronize_session=False)
    )


def unfinished_parent_results(session: Session, shas: Sequence[str]) -> set[str]:
    """Those of `shas` that are shard results of a parent still queued, running or waiting (kept from the GC)."""
    if not shas:
        return set()
    rows = session.scalars(
        select(JobShard.result_sha256)
        .join(Job, Job.id == JobShard.parent_job_id)
        .where(
            JobShard.result_sha256.in_(list(shas)),
            Job.status.in_([JobStatus.QUEUED, JobStatus.RUNNING, JobStatus.WAITING]),
        )
    )
    return {sha for sha in rows if sha}
