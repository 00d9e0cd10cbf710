"""Queries on the ``jobs`` table. Every write by a job holder names its lease token (fencing)."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from app.jobs import shards
from app.jobs.states import UNSUCCESSFUL, JobStatus
from app.models import Job, JobExecution


class LeaseLost(Exception):
    """The lease behind this write expired or moved to another worker; the write was refused."""


@dataclass(frozen=True)
class ClaimedJob:
    id: int
    kind: str
    payload: dict[str, Any]
    attempt: int
    lease_token: str


def add_job(
    session: Session,
    *,
    kind: str,
    payload: dict[str, Any],
    queue: str,
    max_attempts: int,
    created_by_id: int | None,
    now: datetime,
) -> Job:
    job = Job(
        kind=kind,
        payload=payload,
        queue=queue,
        max_attempts=max_attempts,
        created_by_id=created_by_id,
        created_at=now,
        updated_at=now,
        message="queued",
    )
    session.add(job)
    session.flush()
    return job


def claim_next(
    session: Session,
    *,
    worker_id: str,
    queues: Sequence[str] | None,
    lease_seconds: float,
    now: datetime,
) -> ClaimedJob | None:
    """Claim the oldest queued job in one ``UPDATE ... RETURNING``.

    On Postgres the candidate row is picked with ``FOR UPDATE SKIP LOCKED`` so workers never wait on
    each other; on SQLite the transaction began with ``BEGIN IMMEDIATE`` so only one writer runs at a time.
    """
    candidate = select(Job.id).where(Job.status == JobStatus.QUEUED)
    if queues:
        candidate = candidate.where(Job.queue.in_(list(queues)))
    candidate = candidate.order_by(Job.priority.desc(), Job.id).limit(1)
    if session.get_bind().dialect.name == "postgresql":
        candidate = candidate.with_for_update(skip_locked=True)
    token = uuid.uuid4().hex
    row = session.execute(
        update(Job)
        .where(Job.id == candidate.scalar_subquery(), Job.status == JobStatus.QUEUED)
        .values(
            status=JobStatus.RUNNING,
            attempts=Job.attempts + 1,
            lease_token=token,
            worker_id=worker_id,
            lease_expires_at=now + timedelta(seconds=lease_seconds),
            started_at=func.coalesce(Job.started_at, now),
            updated_at=now,
            message="started",
        )
        .returning(Job.id, Job.kind, Job.payload, Job.attempts)
        .execution_options(synchronize_session=False)
    ).first()
    if row is None:
        return None
    session.add(
        JobExecution(job_id=row.id, attempt=row.attempts, worker_id=worker_id, lease_token=token, started_at=now)
    )
    session.flush()
    return ClaimedJob(id=row.id, kind=row.kind, payload=row.payload or {}, attempt=row.attempts, lease_token=token)


def _fenced(job_id: int, token: str) -> Any:
    return update(Job).where(Job.id == job_id, Job.lease_token == token, Job.status == JobStatus.RUNNING)


def _fenced_write(session: Session, *, job_id: int, token: str, **values: Any) -> bool:
    """Write ``values`` while the lease is held; returns whether a cancel was requested, raises LeaseLost if not."""
    row = session.execute(
        _fenced(job_id, token)
        .values(**values)
        .returning(Job.cancel_requested)
        .execution_options(synchronize_session=False)
    ).first()
    if row is None:
        raise LeaseLost(f"job {job_id}: lease {token[:8]} is no longer held")
    return bool(row.cancel_requested)


def heartbeat(session: Session, *, job_id: int, token: str, lease_seconds: float, now: datetime) -> bool:
    """Extend the lease; returns whether a cancel was requested. Raises LeaseLost if the lease is gone."""
    return _fenced_write(
        session, job_id=job_id, token=token, lease_expires_at=now + timedelta(seconds=lease_seconds), updated_at=now
    )


def report_progress(
    session: Session, *, job_id: int, token: str, progress: float | None, message: str | None, now: datetime
) -> bool:
    values: dict[str, Any] = {"updated_at": now}
    if progress is not None:
        values["progress"] = max(0.0, min(1.0, progress))
    if message is not None:
        values["message"] = message[:500]
    return _fenced_write(session, job_id=job_id, token=token, **values)


def cancel_requested(session: Session, *, job_id: int, token: str) -> bool:
    row = session.execute(
        select(Job.cancel_requested).where(Job.id == job_id, Job.lease_token == token, Job.status == JobStatus.RUNNING)
    ).first()
    if row is None:
        raise LeaseLost(f"job {job_id}: lease {token[:8]} is no longer held")
    return bool(row.cancel_requested)


def assert_lease(session: Session, *, job_id: int, token: str, now: datetime) -> None:
    """Touch the job row under the lease inside the caller's transaction (locks it on Postgres)."""
    report_progress(session, job_id=job_id, token=token, progress=None, message=None, now=now)


def finish(
    session: Session,
    *,
    job_id: int,
    token: str,
    status: str,
    now: datetime,
    message: str = "",
    error: str | None = None,
    result: dict[str, Any] | None = None,
) -> None:
    values: dict[str, Any] = {
        "status": status,
        "finished_at": now,
        "updated_at": now,
        "message": message[:500],
        "error": error,
        "lease_expires_at": None,
    }
    if status == JobStatus.SUCCEEDED:
        values["progress"] = 1.0
    if result is not None:
        values["result"] = result
    done = session.execute(_fenced(job_id, token).values(**values).execution_options(synchronize_session=False))
    if done.rowcount != 1:  # type: ignore[attr-defined]
        raise LeaseLost(f"job {job_id}: lease {token[:8]} is no longer held; completion refused")
    _close_execution(session, token=token, outcome=status, error=error, now=now)
    if status in UNSUCCESSFUL:
        shards.settle_parent(session, job_id=job_id, status=status, reason=error, now=now)


def release(session: Session, *, job_id: int, token: str, now: datetime, reason: str) -> None:
    """Give a job back to the queue without counting the attempt (graceful shutdown)."""
    done = session.execute(
        _fenced(job_id, token)
        .values(
            status=JobStatus.QUEUED,
            attempts=Job.attempts - 1,
            lease_token=None,
            lease_expires_at=None,
            worker_id=None,
            updated_at=now,
            message=reason[:500],
        )
        .execution_options(synchronize_session=False)
    )
    if done.rowcount == 1:  # type: ignore[attr-defined]
        _close_execution(session, token=token, outcome="released", error=reason, now=now)


def retry_or_fail(
    session: Session, *, job_id: int, token: str, now: datetime, reason: str, outcome: str = "lost"
) -> str | None:
    """After losing a job (its runner died) or a failure worth retrying, requeue it while attempts remain, else
    fail it with the reason."""
    job = session.execute(
        select(Job.attempts, Job.max_attempts).where(
            Job.id == job_id, Job.lease_token == token, Job.status == JobStatus.RUNNING
        )
    ).first()
    if job is None:
        return None
    if job.attempts >= job.max_attempts:
        status, values = JobStatus.FAILED, {"error": f"{reason} (attempt {job.attempts} of {job.max_attempts})"}
    else:
        status, values = JobStatus.QUEUED, {"message": f"retrying: {reason}"[:500]}
    session.execute(
        _fenced(job_id, token)
        .values(status=status, lease_token=None, lease_expires_at=None, worker_id=None, updated_at=now, **values)
        .execution_options(synchronize_session=False)
    )
    _close_execution(session, token=token, outcome=outcome, error=reason, now=now)
    if status == JobStatus.FAILED:
        session.execute(
            update(Job).where(Job.id == job_id).values(finished_at=now).execution_options(synchronize_session=False)
        )
        shards.settle_parent(session, job_id=job_id, status=status, reason=values["error"], now=now)
    return status


def reap_expired(session: Session, *, now: datetime) -> list[tuple[int, str]]:
    """Move jobs whose lease expired (their worker died) back to the queue, or to failed when out of attempts."""
    expired = select(Job.id, Job.lease_token).where(Job.status == JobStatus.RUNNING, Job.lease_expires_at < now)
    if session.get_bind().dialect.name == "postgresql":
        expired = expired.with_for_update(skip_locked=True)
    outcomes = []
    for job_id, token in session.execute(expired).all():
        if token is None:
            continue
        status = retry_or_fail(
            session,
            job_id=job_id,
            token=token,
            now=now,
            reason="worker lost: lease expired without a heartbeat",
        )
        if status:
            outcomes.append((job_id, status))
    return outcomes


def _close_execution(session: Session, *, token: str, outcome: str, error: str | None, now: datetime) -> None:
    session.execute(
        update(JobExecution)
        .where(JobExecution.lease_token == token, JobExecution.finished_at.is_(None))
        .values(finished_at=now, outcome=outcome, error=error)
        .execution_options(synchronize_session=False)
    )


def request_cancel(session: Session, *, job_id: int, now: datetime) -> None:
    session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status == JobStatus.QUEUED)
        .values(status=JobStatus.CANCELLED, finished_at=now, updated_at=now, message="cancelled before it started")
        .execution_options(synchronize_session=False)
    )
    waiting = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status == JobStatus.WAITING)
        .values(status=JobStatus.CANCELLED, finished_at=now, updated_at=now, message="cancelled with its shards")
        .execution_options(synchronize_session=False)
    )
    if waiting.rowcount == 1:  # type: ignore[attr-defined]
        shards.cancel_shards(session, parent_id=job_id, now=now)
    session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status == JobStatus.RUNNING)
        .values(cancel_requested=True, updated_at=now, message="cancelling…")
        .execution_options(synchronize_session=False)
    )


def get_job(session: Session, job_id: int) -> Job | None:
    return session.get(Job, job_id, populate_existing=True)


def list_jobs(session: Session, *, limit: int, kinds: Sequence[str] | None = None) -> list[Job]:
    query = select(Job).order_by(Job.id.desc()).limit(limit)
    if kinds:
        query = query.where(Job.kind.in_(list(kinds)))
    return list(session.scalars(query))


def executions_of(session: Session, job_id: int) -> list[JobExecution]:
    return list(session.scalars(select(JobExecution).where(JobExecution.job_id == job_id).order_by(JobExecution.id)))
