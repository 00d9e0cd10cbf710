"""A worker claims jobs from the database and supervises a runner process that executes them.

Delivery is at least once: a job whose worker dies is taken again after its lease expires; every write a
job makes names its lease token, so a worker that lost its lease cannot overwrite its successor's work.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess

import psutil
from sqlalchemy import Engine
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from app.core.db import session_factory
from app.core.settings import Settings
from app.jobs import repository
from app.jobs.repository import ClaimedJob, LeaseLost
from app.jobs.retry import retry_transient
from app.jobs.runner import runner_main
from app.jobs.states import JobStatus
from app.models import utcnow
from app.storage.backends import blob_store
from app.storage.service import collect_garbage, release_abandoned_uploads

log = logging.getLogger("errorbook.worker")


@dataclass
class _Watch:
    """What the heartbeat thread learned about the job in flight."""

    done: threading.Event = field(default_factory=threading.Event)
    lease_lost: bool = False
    cancel_seen_at: float | None = None
    memory_exceeded_mb: float | None = None


class Worker:
    def __init__(
        self,
        *,
        settings: Settings,
        engine: Engine,
        queues: Sequence[str] | None = None,
        runner_env: dict[str, str] | None = None,
    ) -> None:
        self.settings = settings
        self.engine = engine
        self.queues = list(queues) if queues else None
        self.worker_id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self._sessions = session_factory(engine)
        self._stop = threading.Event()
        self._stop_requested_at: float | None = None
        self._runner_env = dict(runner_env or {})
        self._runner: BaseProcess | None = None
        self._conn: Connection | None = None
        self._last_reap = 0.0
        self._last_gc: float | None = None
        self._gc_thread: threading.Thread | None = None

    # -- lifecycle -------------------------------------------------------------------------------------
    def request_stop(self) -> None:
        """Graceful stop (SIGTERM): claim nothing new, let the job in flight finish or release it."""
        if not self._stop.is_set():
            self._stop_requested_at = time.monotonic()
            self._stop.set()

    def run(self) -> None:
        log.info("worker %s started (queues: %s)", self.worker_id, ",".join(self.queues or ["all"]))
        swept = blob_store(self.settings).sweep_abandoned(
            older_than_seconds=self.settings.blob_temp_max_age_hours * 3600
        )
        if swept:
            log.info("removed %d temp file(s) that killed blob writes left behind", swept)
        self._start_runner()
        try:
            while not self._stop.is_set():
                self._maybe_reap()
                self._maybe_collect_garbage()
                claimed = self._claim()
                if claimed is None:
                    self._stop.wait(self.settings.job_poll_seconds)
                    continue
                self._supervise(claimed)
        finally:
            self._stop_runner()
            log.info("worker %s stopped", self.worker_id)

    # -- runner process --------------------------------------------------------------------------------
    def _start_runner(self) -> None:
        ctx = multiprocessing.get_context("spawn")
        parent, child = ctx.Pipe()
        env = {
            "ERRORBOOK_DATABASE_URL": self.settings.sqlalchemy_url,
            "ERRORBOOK_DATA_DIR": str(self.settings.resolved_data_dir),
            **self._runner_env,
        }
        process = ctx.Process(target=runner_main, args=(child, env), name="errorbook-runner", daemon=True)
        process.start()
        child.close()
        self._runner, self._conn = process, parent
        if not parent.poll(300):
            raise RuntimeError("the job runner did not start within 300 s")
        parent.recv()  # ("ready", pid)

    def _stop_runner(self) -> None:
        if self._runner is None or self._conn is None:
            return
        with contextlib.suppress(BrokenPipeError, OSError):  # the runner may already be gone
            self._conn.send(("stop",))
        self._runner.join(5)
        if self._runner.is_alive():
            self._runner.kill()
            self._runner.join()
        self._runner = self._conn = None

    def _restart_runner(self) -> None:
        if self._runner is not None:
            self._runner.kill()
            self._runner.join()
            self._runner = None
        self._start_runner()

    # -- queue -----------------------------------------------------------------------------------------
    def _claim(self) -> ClaimedJob | None:
        try:
            with self._sessions.begin() as session:
                return repository.claim_next(
                    session,
                    worker_id=self.worker_id,
                    queues=self.queues,
                    lease_seconds=self.settings.job_lease_seconds,
                    now=utcnow(),
                )
        except OperationalError as exc:  # database restarting: wait and try again
            log.warning("claim failed (%s); retrying", exc.orig)
            self._stop.wait(1.0)
            return None

    def _maybe_reap(self) -> None:
        now = time.monotonic()
        if now - self._last_reap < self.settings.job_reaper_seconds:
            return
        self._last_reap = now
        try:
            with self._sessions.begin() as session:
                for job_id, status in repository.reap_expired(session, now=utcnow()):
                    log.warning("job %s: lease expired, now %s", job_id, status)
        except OperationalError as exc:
            log.warning("reaper failed (%s)", exc.orig)

    def _maybe_collect_garbage(self) -> None:
        """Every blob_gc_every_hours (and at start), delete unreferenced blobs, in a thread of its own so that
        jobs are claimed meanwhile."""
        every = self.settings.blob_gc_every_hours * 3600
        now = time.monotonic()
        busy = self._gc_thread is not None and self._gc_thread.is_alive()
        if every <= 0 or busy or (self._last_gc is not None and now - self._last_gc < every):
            return
        self._last_gc = now
        self._gc_thread = threading.Thread(target=self._collect_garbage, name="blob-gc", daemon=True)
        self._gc_thread.start()

    def _collect_garbage(self) -> None:
        blobs = blob_store(self.settings)
        try:
            release_abandoned_uploads(sessions=self._sessions, blobs=blobs, settings=self.settings)
            result = collect_garbage(
                sessions=self._sessions, blobs=blobs, grace_seconds=self.settings.blob_gc_grace_hours * 3600
            )
        except (OSError, OperationalError) as exc:
            log.warning("blob garbage collection failed (%s)", exc)
            return
        if result.deleted:
            log.info("deleted %d unreferenced blob(s), %d bytes", result.deleted, result.deleted_bytes)

    def _supervise(self, claimed: ClaimedJob) -> None:
        assert self._conn is not None and self._runner is not None
        watch = _Watch()
        beat = threading.Thread(target=self._heartbeat, args=(claimed, watch), daemon=True)
        beat.start()
        self._conn.send(("run", claimed.id, claimed.kind, claimed.payload, claimed.attempt, claimed.lease_token))
        try:
            self._wait_for_runner(claimed, watch)
        finally:
            watch.done.set()
            beat.join()

    def _wait_for_runner(self, claimed: ClaimedJob, watch: _Watch) -> None:
        assert self._conn is not None and self._runner is not None
        while True:
            if self._conn.poll(0.1):
                try:
                    self._conn.recv()
                    return
                except EOFError:
                    pass
            if not self._runner.is_alive():
                code = self._runner.exitcode
                self._end_lost_job(claimed, f"job runner died (exit code {code}; out of memory or a crash)")
                return
            if watch.lease_lost:
                log.warning("job %s: lease lost; stopping its runner", claimed.id)
                self._restart_runner()
                return
            if watch.memory_exceeded_mb is not None:
                self._kill_and_finish(
                    claimed,
                    JobStatus.FAILED,
                    f"the job used {watch.memory_exceeded_mb:.0f} MB, over the "
                    f"{self.settings.job_memory_limit_mb} MB limit (ERRORBOOK_JOB_MEMORY_LIMIT_MB)",
                )
                return
            if (
                watch.cancel_seen_at is not None
                and time.monotonic() - watch.cancel_seen_at > self.settings.job_cancel_grace_seconds
            ):
                self._kill_and_finish(claimed, JobStatus.CANCELLED, None)
                return
            if (
                self._stop_requested_at is not None
                and time.monotonic() - self._stop_requested_at > self.settings.job_shutdown_grace_seconds
            ):
                self._restart_runner_for_release(claimed)
                return

    def _write(self, claimed: ClaimedJob, what: str, write: Callable[[Session], object]) -> None:
        """A fenced write about the job in flight, tried again if the database drops the connection; if it
        stays away, the job's lease expires and the reaper settles it (the worker itself carries on)."""

        def once() -> None:
            with self._sessions.begin() as session:
                write(session)

        try:
            retry_transient(once, what=f"job {claimed.id}: {what}")
        except OperationalError as exc:
            log.error("job %s: could not record %s (%s); its lease will expire", claimed.id, what, exc.orig)

    def _kill_and_finish(self, claimed: ClaimedJob, status: JobStatus, error: str | None) -> None:
        self._restart_runner()

        def finish(session: Session) -> None:
            try:
                repository.finish(
                    session,
                    job_id=claimed.id,
                    token=claimed.lease_token,
                    status=status,
                    now=utcnow(),
                    message="cancelled (stopped hard)" if status == JobStatus.CANCELLED else "failed",
                    error=error,
                )
            except LeaseLost:
                log.warning("job %s: lease moved on before it could be closed", claimed.id)

        self._write(claimed, "its end", finish)

    def _end_lost_job(self, claimed: ClaimedJob, reason: str) -> None:
        log.error("job %s: %s", claimed.id, reason)
        self._write(
            claimed,
            "the loss of its runner",
            lambda session: repository.retry_or_fail(
                session, job_id=claimed.id, token=claimed.lease_token, now=utcnow(), reason=reason
            ),
        )
        if not self._stop.is_set():
            self._restart_runner()

    def _restart_runner_for_release(self, claimed: ClaimedJob) -> None:
        if self._runner is not None:
            self._runner.kill()
            self._runner.join()
            self._runner = None
        self._write(
            claimed,
            "its release",
            lambda session: repository.release(
                session, job_id=claimed.id, token=claimed.lease_token, now=utcnow(), reason="worker shut down"
            ),
        )

    # -- heartbeat thread ------------------------------------------------------------------------------
    def _heartbeat(self, claimed: ClaimedJob, watch: _Watch) -> None:
        """Runs in its own thread so a long CNN batch in the runner can never starve the lease."""
        interval = min(self.settings.job_heartbeat_seconds, 0.5)  # also how fast a cancel is noticed
        last_beat = time.monotonic()
        while not watch.done.wait(interval):
            self._check_memory(watch)
            beat_due = time.monotonic() - last_beat >= self.settings.job_heartbeat_seconds
            try:
                with self._sessions.begin() as session:
                    if beat_due:
                        cancelled = repository.heartbeat(
                            session,
                            job_id=claimed.id,
                            token=claimed.lease_token,
                            lease_seconds=self.settings.job_lease_seconds,
                            now=utcnow(),
                        )
                        last_beat = time.monotonic()
                    else:
                        cancelled = repository.cancel_requested(session, job_id=claimed.id, token=claimed.lease_token)
            except LeaseLost:
                watch.lease_lost = True
                return
            except OperationalError as exc:
                log.warning("heartbeat for job %s failed (%s); will retry", claimed.id, exc.orig)
                continue
            if cancelled and watch.cancel_seen_at is None:
                watch.cancel_seen_at = time.monotonic()

    def _check_memory(self, watch: _Watch) -> None:
        if self._runner is None or self._runner.pid is None:
            return
        try:
            process = psutil.Process(self._runner.pid)
            rss = process.memory_info().rss + sum(c.memory_info().rss for c in process.children(recursive=True))
        except psutil.Error:
            return
        rss_mb = rss / 1024**2
        if rss_mb > self.settings.job_memory_limit_mb:
            watch.memory_exceeded_mb = rss_mb
