"""The queue with real worker processes on a real database, in the manner of procrastinate's and
Solid Queue's own suites: forked workers, SIGKILL/SIGTERM, and time moved by editing timestamps."""

from __future__ import annotations

import signal
import time
from datetime import timedelta

import pytest
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from app.jobs import repository, service
from app.models import Job, JobExecution, utcnow
from tests.jobs.conftest import wait_until

pytestmark = pytest.mark.slow


def _enqueue(engine, count: int = 1, **payload) -> list[int]:  # type: ignore[no-untyped-def]
    with Session(engine) as session:
        ids = [service.enqueue(session, kind="demo.sleep", payload=dict(payload)).id for _ in range(count)]
        session.commit()
    return ids


def _job(engine, job_id: int) -> Job:  # type: ignore[no-untyped-def]
    with Session(engine, expire_on_commit=False) as session:
        job = session.get(Job, job_id)
        assert job is not None
        return job


def _status(engine, job_id: int) -> str:  # type: ignore[no-untyped-def]
    return _job(engine, job_id).status


def test_each_job_runs_to_success_exactly_once(fresh_database, workers) -> None:
    engine = fresh_database.engine
    count, n_workers = (300, 3) if fresh_database.backend == "postgres" else (150, 2)
    ids = _enqueue(engine, count, seconds=0, steps=1)
    workers.start(n_workers)

    def all_done() -> bool:
        with Session(engine) as session:  # a short transaction each time: SQLite has one writer
            return session.scalar(select(func.count()).where(Job.status.in_(["queued", "running"]))) == 0

    wait_until(all_done, timeout=240, interval=0.5)
    with Session(engine) as session:
        statuses = dict(session.execute(select(Job.status, func.count()).group_by(Job.status)).all())
        assert statuses == {"succeeded": count}, workers.logs()[-3000:]
        executions = session.execute(select(JobExecution.job_id, JobExecution.outcome, JobExecution.worker_id)).all()
    assert len(executions) == count
    assert sorted(e.job_id for e in executions) == sorted(ids)
    assert {e.outcome for e in executions} == {"succeeded"}
    assert len({e.worker_id for e in executions}) == n_workers  # the work was shared


def test_sigkilled_worker_job_is_finished_by_another_after_its_lease_expires(fresh_database, workers) -> None:
    engine = fresh_database.engine
    (job_id,) = _enqueue(engine, seconds=3, steps=30)
    (first,) = workers.start(1)
    wait_until(lambda: _job(engine, job_id).progress > 0.05, timeout=60)
    first.send_signal(signal.SIGKILL)
    first.wait(10)
    time.sleep(0.5)
    job = _job(engine, job_id)
    assert job.status == "running"  # nobody has noticed yet: the lease is still valid
    progress_at_kill = job.progress
    time.sleep(0.5)
    assert _job(engine, job_id).progress == progress_at_kill  # the runner died with its worker
    with Session(engine) as session:  # move time forward: the lease is now expired
        session.execute(update(Job).where(Job.id == job_id).values(lease_expires_at=utcnow() - timedelta(seconds=1)))
        session.commit()
    workers.start(1)
    wait_until(lambda: _status(engine, job_id) == "succeeded", timeout=60)
    job = _job(engine, job_id)
    assert job.attempts == 2
    with Session(engine) as session:
        outcomes = [e.outcome for e in repository.executions_of(session, job_id)]
        running = session.scalar(select(func.count()).where(Job.status == "running"))
    assert outcomes == ["lost", "succeeded"]
    assert running == 0


def test_a_job_out_of_attempts_fails_with_the_reason(fresh_database, workers) -> None:
    engine = fresh_database.engine
    with Session(engine, expire_on_commit=False) as session:
        job = service.enqueue(session, kind="demo.sleep", payload={"seconds": 60}, max_attempts=1)
        session.commit()
        claimed = repository.claim_next(session, worker_id="dead-worker", queues=None, lease_seconds=30, now=utcnow())
        assert claimed is not None and claimed.id == job.id
        session.execute(update(Job).where(Job.id == job.id).values(lease_expires_at=utcnow() - timedelta(seconds=5)))
        session.commit()
    workers.start(1)
    wait_until(lambda: _status(engine, job.id) == "failed", timeout=60)
    failed = _job(engine, job.id)
    assert failed.error is not None and "lease expired" in failed.error and "attempt 1 of 1" in failed.error
    assert failed.attempts == 1  # never retried: no crash-looping poison job


def test_sigterm_lets_the_job_in_flight_finish(fresh_database, workers) -> None:
    engine = fresh_database.engine
    (job_id,) = _enqueue(engine, seconds=2, steps=10)
    (worker,) = workers.start(1)
    wait_until(lambda: _status(engine, job_id) == "running", timeout=60)
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(30) == 0
    job = _job(engine, job_id)
    assert job.status == "succeeded"
    with Session(engine) as session:
        assert session.scalar(select(func.count()).where(Job.status == "running")) == 0
        assert session.scalar(select(func.count()).where(JobExecution.finished_at.is_(None))) == 0


def test_cancelling_a_running_job_takes_under_two_seconds(fresh_database, workers) -> None:
    engine = fresh_database.engine
    (job_id,) = _enqueue(engine, seconds=60, steps=600)
    workers.start(1)
    wait_until(lambda: _job(engine, job_id).progress > 0, timeout=60)
    with Session(engine) as session:
        service.cancel_job(session, job_id=job_id)
        session.commit()
    asked = time.monotonic()
    assert _job(engine, job_id).cancel_requested  # visible at once
    wait_until(lambda: _status(engine, job_id) == "cancelled", timeout=10)
    assert time.monotonic() - asked < 2.0


def test_a_stubborn_job_is_killed_after_the_grace_period_and_the_worker_carries_on(fresh_database, workers) -> None:
    engine = fresh_database.engine
    (stubborn,) = _enqueue(engine, seconds=60, steps=1, stubborn=True)
    (worker,) = workers.start(1)
    wait_until(lambda: _job(engine, stubborn).message.startswith("sleeping"), timeout=60)
    with Session(engine) as session:
        service.cancel_job(session, job_id=stubborn)
        session.commit()
    wait_until(lambda: _status(engine, stubborn) == "cancelled", timeout=15)
    (after,) = _enqueue(engine, seconds=0, steps=1)
    wait_until(lambda: _status(engine, after) == "succeeded", timeout=60)
    assert worker.poll() is None


def test_a_memory_blowup_kills_the_job_not_the_worker(fresh_database, workers) -> None:
    engine = fresh_database.engine
    (hog,) = _enqueue(engine, seconds=30, steps=30, allocate_mb=1500)
    (worker,) = workers.start(1, ERRORBOOK_JOB_MEMORY_LIMIT_MB="1200")
    wait_until(lambda: _status(engine, hog) == "failed", timeout=90)
    assert "over the 1200 MB limit" in (_job(engine, hog).error or "")
    (after,) = _enqueue(engine, seconds=0, steps=1)
    wait_until(lambda: _status(engine, after) == "succeeded", timeout=60)
    assert worker.poll() is None


def test_a_failing_job_ends_failed_with_its_message(fresh_database, workers) -> None:
    engine = fresh_database.engine
    (job_id,) = _enqueue(engine, seconds=0, steps=1, fail="the disk is on fire")
    workers.start(1)
    wait_until(lambda: _status(engine, job_id) == "failed", timeout=60)
    assert _job(engine, job_id).error == "the disk is on fire"


def test_gpu_workers_take_only_their_queue(fresh_database, workers) -> None:
    engine = fresh_database.engine
    with Session(engine) as session:
        cpu_id = service.enqueue(session, kind="demo.sleep", payload={"seconds": 0, "steps": 1}).id
        gpu_id = service.enqueue(session, kind="demo.sleep", payload={"seconds": 0, "steps": 1}, queue="gpu").id
        session.commit()
    workers.start(1, args=("--queue", "gpu"))
    wait_until(lambda: _status(engine, gpu_id) == "succeeded", timeout=60)
    time.sleep(0.5)
    assert _status(engine, cpu_id) == "queued"
    workers.start(1)  # no --queue: takes everything
    wait_until(lambda: _status(engine, cpu_id) == "succeeded", timeout=60)
