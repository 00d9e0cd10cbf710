"""At-least-once delivery made safe: a worker that lost its lease cannot write any more."""

from __future__ import annotations

from datetime import timedelta

import pytest

from app.jobs import repository, service
from app.jobs.repository import LeaseLost
from app.models import utcnow


def test_a_late_completion_from_an_expired_lease_is_refused(db) -> None:
    job = service.enqueue(db, kind="demo.sleep", payload={})
    first = repository.claim_next(db, worker_id="a", queues=None, lease_seconds=30, now=utcnow())
    assert first is not None and first.id == job.id
    later = utcnow() + timedelta(seconds=31)  # the first worker missed its heartbeats
    assert repository.reap_expired(db, now=later) == [(job.id, "queued")]
    second = repository.claim_next(db, worker_id="b", queues=None, lease_seconds=30, now=later)
    assert second is not None and second.lease_token != first.lease_token and second.attempt == 2

    with pytest.raises(LeaseLost):
        repository.finish(db, job_id=job.id, token=first.lease_token, status="succeeded", now=later)
    with pytest.raises(LeaseLost):
        repository.report_progress(db, job_id=job.id, token=first.lease_token, progress=0.9, message="x", now=later)
    with pytest.raises(LeaseLost):
        repository.heartbeat(db, job_id=job.id, token=first.lease_token, lease_seconds=30, now=later)

    repository.finish(db, job_id=job.id, token=second.lease_token, status="succeeded", now=later)
    db.refresh(job)
    assert job.status == "succeeded" and job.worker_id == "b"
    outcomes = [e.outcome for e in repository.executions_of(db, job.id)]
    assert outcomes == ["lost", "succeeded"]


def test_a_job_is_claimed_by_one_worker_at_a_time(db) -> None:
    job = service.enqueue(db, kind="demo.sleep", payload={})
    now = utcnow()
    first = repository.claim_next(db, worker_id="a", queues=None, lease_seconds=30, now=now)
    assert first is not None and first.id == job.id
    assert repository.claim_next(db, worker_id="b", queues=None, lease_seconds=30, now=now) is None


def test_queued_jobs_cancel_at_once_and_running_ones_are_flagged(db) -> None:
    queued = service.enqueue(db, kind="demo.sleep", payload={})
    assert service.cancel_job(db, job_id=queued.id).status == "cancelled"
    running = service.enqueue(db, kind="demo.sleep", payload={})
    claimed = repository.claim_next(db, worker_id="a", queues=None, lease_seconds=30, now=utcnow())
    assert claimed is not None and claimed.id == running.id
    after = service.cancel_job(db, job_id=running.id)
    assert after.status == "running" and after.cancel_requested
    assert repository.heartbeat(db, job_id=running.id, token=claimed.lease_token, lease_seconds=30, now=utcnow())


def test_job_api_shape_and_demo_progress_page(as_reviewer) -> None:
    created = as_reviewer.post("/api/jobs/demo", json={"seconds": 1, "steps": 2})
    assert created.status_code == 202
    job = as_reviewer.get(f"/api/jobs/{created.json()['id']}").json()
    assert {"id", "kind", "status", "progress", "message", "error"} <= set(job)
    assert job["status"] == "queued"
    cancelled = as_reviewer.post(f"/api/jobs/{job['id']}/cancel").json()
    assert cancelled["status"] == "cancelled"
    assert as_reviewer.get("/api/jobs/999999").status_code == 404
