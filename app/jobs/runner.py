"""The runner process: imports every task once, then executes the jobs its worker hands it, one at a time.

Keeping tasks out of the worker process means a hard cancel, a crash or a memory blow-up kills the runner,
never the worker, which restarts it; keeping the runner alive between jobs means torch is imported once.
"""

from __future__ import annotations

import ctypes
import logging
import multiprocessing
import os
import signal
from multiprocessing.connection import Connection

from sqlalchemy import Engine
from sqlalchemy.exc import OperationalError

from app.core.artefacts import ObjectStoreUnavailable
from app.core.db import get_engine, session_factory
from app.core.settings import Settings, get_settings
from app.jobs import repository
from app.jobs.context import JobCancelled, JobContext, JobWaiting, RetryLater, TaskError
from app.jobs.registry import handler_for, load_all
from app.jobs.retry import retry_transient
from app.jobs.states import JobStatus
from app.models import utcnow

log = logging.getLogger("errorbook.runner")
PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """If the worker is SIGKILLed, take the runner down too, so no orphan keeps writing."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except OSError:
        log.warning("cannot ask the kernel to end the runner with its worker (not Linux?)")


def _allow_child_processes() -> None:
    """The worker starts the runner as a daemon so that it never outlives the worker, and multiprocessing refuses
    daemons any children; but tasks need them (feature extraction runs one DataLoader process per core). The
    kernel already ends the runner with its worker (above), and DataLoader workers exit when the runner does."""
    multiprocessing.current_process().daemon = False


def runner_main(conn: Connection, env: dict[str, str]) -> None:
    os.environ.update(env)
    get_settings.cache_clear()
    _die_with_parent()
    _allow_child_processes()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the worker decides when the runner stops
    load_all()
    # The runner process's composition root: its settings come from the environment the worker handed it.
    settings = get_settings()
    engine = get_engine(settings)
    conn.send(("ready", os.getpid()))
    while True:
        try:
            message = conn.recv()
        except EOFError:
            return
        if message[0] == "stop":
            return
        _, job_id, kind, payload, attempt, token = message
        try:
            run_job(
                job_id=job_id,
                kind=kind,
                payload=payload,
                attempt=attempt,
                token=token,
                engine=engine,
                settings=settings,
            )
        except OperationalError:  # the database stayed away: the lease expires and the reaper retries the job
            log.exception("job %s: could not record how it ended", job_id)
        conn.send(("done", job_id))


def run_job(
    *, job_id: int, kind: str, payload: dict, attempt: int, token: str, engine: object, settings: Settings
) -> None:
    ctx = JobContext(
        engine=engine,  # type: ignore[arg-type]
        settings=settings,
        job_id=job_id,
        kind=kind,
        payload=payload,
        attempt=attempt,
        lease_token=token,
    )
    status, error, result, message = JobStatus.SUCCEEDED, None, None, "done"
    try:
        result = handler_for(kind)(ctx)
    except repository.LeaseLost:
        log.warning("job %s: lease lost while running; leaving it to its new holder", job_id)
        return
    except JobWaiting:
        return  # parked on its shards in the task's own fenced transaction; the last shard queues it again
    except RetryLater as exc:
        _requeue(engine, job_id=job_id, token=token, reason=str(exc), outcome="retried")  # type: ignore[arg-type]
        return
    except JobCancelled:
        status, message = JobStatus.CANCELLED, "cancelled by request"
    except TaskError as exc:
        status, error, message = JobStatus.FAILED, str(exc), "failed"
    except OperationalError as exc:
        # The database failed under the task (a restart dropped its connection): not the job's fault. Requeue
        # it while attempts remain; tasks are written to be retried (they skip or redo what they had done).
        log.warning("job %s (%s): database error (%s); requeueing it", job_id, kind, exc.orig)
        _requeue(engine, job_id=job_id, token=token, reason=f"database error: {exc.orig}")  # type: ignore[arg-type]
        return
    except ObjectStoreUnavailable as exc:
        # The SDK already retried each call with backoff; the job is tried again (from its last checkpoint)
        # while attempts remain, then fails with the store's reason. Its results are committed only after
        # their files are stored, so nothing is half-recorded.
        log.warning("job %s (%s): %s; requeueing it", job_id, kind, exc.message)
        _requeue(engine, job_id=job_id, token=token, reason=exc.message)  # type: ignore[arg-type]
        return
    except Exception as exc:  # a task bug must fail its job, not the runner
        log.exception("job %s (%s) failed", job_id, kind)
        status, error, message = JobStatus.FAILED, f"{type(exc).__name__}: {exc}", "failed"

    def record_end() -> None:
        session = session_factory(engine)()  # type: ignore[arg-type]
        try:
            repository.finish(
                session,
                job_id=job_id,
                token=token,
                status=status,
                now=utcnow(),
                message=message,
                error=error,
                result=result,
            )
            session.commit()
        except repository.LeaseLost:
            session.rollback()
            log.warning("job %s: completion refused, the lease had moved on (or an earlier try got through)", job_id)
        finally:
            session.close()

    # Fenced by the lease token, so repeating it after a dropped connection can never finish the job twice.
    retry_transient(record_end, what=f"job {job_id}: recording its end")


def _requeue(engine: Engine, *, job_id: int, token: str, reason: str, outcome: str = "lost") -> None:
    def requeue() -> None:
        with session_factory(engine).begin() as session:
            repository.retry_or_fail(session, job_id=job_id, token=token, now=utcnow(), reason=reason, outcome=outcome)

    retry_transient(requeue, what=f"job {job_id}: requeueing")
