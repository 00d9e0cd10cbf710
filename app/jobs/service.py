from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from app.core.errors import NotFound
from app.core.settings import Settings
from app.jobs import repository
from app.jobs.states import ACTIVE
from app.models import Job, utcnow

DEFAULT_MAX_ATTEMPTS: int = Settings.model_fields["job_max_attempts"].default


def enqueue(
    session: Session,
    *,
    kind: str,
    payload: dict[str, Any],
    queue: str = "default",
    created_by_id: int | None = None,
    max_attempts: int = DEFAULT_MAX_ATTEMPTS,
) -> Job:
    """Add a job in the caller's transaction, so it exists exactly when the row that needs it does.

    The app's callers pass `max_attempts` from their settings (ERRORBOOK_JOB_MAX_ATTEMPTS); the default, the
    setting's own default, serves scripts and tests."""
    return repository.add_job(
        session,
        kind=kind,
        payload=payload,
        queue=queue,
        max_attempts=max_attempts,
        created_by_id=created_by_id,
        now=utcnow(),
    )


def active_or_enqueue(
    session: Session, *, job_id: int | None, kind: str, payload: dict[str, Any], **enqueue_args: Any
) -> tuple[Job, bool]:
    """The job ``job_id`` while it is still queued or running (False: nothing new), else a newly queued one (True),
    so pressing start twice does not queue the work twice."""
    if job_id is not None:
        running = get_job(session, job_id=job_id)
        if running.status in ACTIVE:
            return running, False
    return enqueue(session, kind=kind, payload=payload, **enqueue_args), True


def get_job(session: Session, *, job_id: int) -> Job:
    job = repository.get_job(session, job_id)
    if job is None:
        raise NotFound(f"job {job_id} does not exist")
    return job


def cancel_job(session: Session, *, job_id: int) -> Job:
    get_job(session, job_id=job_id)
    repository.request_cancel(session, job_id=job_id, now=utcnow())
    session.flush()
    return get_job(session, job_id=job_id)


def recent_jobs(session: Session, *, limit: int = 50) -> list[Job]:
    return repository.list_jobs(session, limit=limit)
