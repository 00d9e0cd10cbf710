"""Run queued jobs in this process through the runner's own code path (claim, handler, fenced finish)."""

from __future__ import annotations

from sqlalchemy import Engine
from sqlalchemy.orm import Session

from app.core.settings import Settings
from app.jobs import repository
from app.jobs.runner import run_job
from app.models import Job, utcnow


def run_next_job(engine: Engine, *, settings: Settings | None = None) -> Job | None:
    """Claim the next queued job and run it; returns it as it ended (None: the queue was empty)."""
    with Session(engine) as session:
        claimed = repository.claim_next(session, worker_id="inline", queues=None, lease_seconds=300, now=utcnow())
        session.commit()
    if claimed is None:
        return None
    run_job(
        job_id=claimed.id,
        kind=claimed.kind,
        payload=claimed.payload,
        attempt=claimed.attempt,
        token=claimed.lease_token,
        engine=engine,
        settings=settings or Settings(),
    )
    with Session(engine, expire_on_commit=False) as session:
        job = session.get(Job, claimed.id)
        assert job is not None
        return job


def drain_jobs(engine: Engine, *, limit: int = 100, settings: Settings | None = None) -> list[Job]:
    """Claim and run queued jobs one by one until none is left; returns them as they ended. The settings are
    the environment's unless given, read once per call (as a runner reads them once per process)."""
    settings = settings or Settings()
    finished = []
    for _ in range(limit):
        job = run_next_job(engine, settings=settings)
        if job is None:
            break
        finished.append(job)
    return finished
