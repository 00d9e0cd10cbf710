"""What a running task sees: its payload, fenced progress reports, cooperative cancellation."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.orm import Session

from app.core.db import READ_MOSTLY_OPTION, committing, session_factory
from app.core.settings import Settings
from app.jobs import repository
from app.jobs.retry import retry_transient
from app.models import utcnow


class JobCancelled(Exception):
    """Raised inside a task when someone asked to cancel it; the runner records it as cancelled."""


class TaskError(Exception):
    """A failure the user should read as is (no traceback, no exception class name)."""


class JobContext:
    def __init__(
        self,
        *,
        engine: Engine,
        settings: Settings,
        job_id: int,
        kind: str,
        payload: dict[str, Any],
        attempt: int,
        lease_token: str,
        min_report_interval: float = 0.25,
    ) -> None:
        self.engine = engine
        self.settings = settings
        self.job_id = job_id
        self.kind = kind
        self.payload = payload
        self.attempt = attempt
        self.lease_token = lease_token
        self._sessions = session_factory(engine)
        self._min_interval = min_report_interval
        self._last_report = 0.0
        self._cancel_requested = False

    def progress(self, fraction: float | None, message: str | None = None, *, force: bool = False) -> None:
        """Record progress (throttled) and raise ``JobCancelled`` if a cancel was requested."""
        now = time.monotonic()
        if force or fraction == 1.0 or now - self._last_report >= self._min_interval:
            self._last_report = now

            def report() -> bool:
                with self.transaction() as session:
                    return repository.report_progress(
                        session,
                        job_id=self.job_id,
                        token=self.lease_token,
                        progress=fraction,
                        message=message,
                        now=utcnow(),
                    )

            # A report is safe to repeat, so a dropped connection does not fail the job.
            self._cancel_requested = retry_transient(report, what=f"job {self.job_id}: progress report")
        if self._cancel_requested:
            raise JobCancelled("cancelled by request")

    def should_stop(self) -> bool:
        """For pure code that polls: true once a cancel was requested (checked at most every 0.25 s)."""
        try:
            self.progress(None)
        except JobCancelled:
            return True
        return False

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        """A task's own unit of work; commits only while this worker still holds the lease."""

        def still_ours(session: Session) -> None:
            repository.assert_lease(session, job_id=self.job_id, token=self.lease_token, now=utcnow())

        with committing(self._sessions(), before_commit=still_ours) as session:
            yield session

    @contextmanager
    def reading(self) -> Iterator[Session]:
        """A unit of work that only reads: on SQLite it begins deferred, so a long read never holds the write
        lock that web requests and other jobs wait for."""
        session = self._sessions()
        try:
            session.connection(execution_options={READ_MOSTLY_OPTION: True})
            yield session
        finally:
            session.rollback()
            session.close()

    @property
    def work_dir(self) -> Path:
        """Scratch space for checkpoints; survives a retry so long jobs can resume."""
        path = self.settings.resolved_data_dir / "jobs" / str(self.job_id)
        path.mkdir(parents=True, exist_ok=True)
        return path
