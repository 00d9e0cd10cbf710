"""Faults with real processes: a worker (and its runner) SIGKILLed in the middle of a split or a training run,
and Postgres dropping every connection of the workers while they run jobs.

The ingest counterpart lives in tests/uploads/test_ingest_crash.py, the web server and the disk in
tests/uploads/test_upload_faults.py. A killed worker's lease is short (ERRORBOOK_JOB_LEASE_SECONDS), so the
next worker's reaper takes the job back by itself, as it would in production.
"""

from __future__ import annotations

import os
import threading
import uuid

import numpy as np
import pytest
import torch
from sqlalchemy import create_engine, func, insert, select, text
from sqlalchemy.orm import Session

from app.core.db import READ_MOSTLY_OPTION
from app.core.settings import Settings
from app.core.storage import LocalBlobStore
from app.jobs import repository as jobs_repository
from app.jobs import service as jobs
from app.jobs.service import DEFAULT_MAX_ATTEMPTS
from app.ml.splitting import SplitParams
from app.models import Dataset, Image, Job, Label, Prediction, Run, Split, SplitAssignment
from app.splits import service as splits
from app.training import service as training
from app.training.schemas import RunIn
from tests.factories import COLOURS, colour_jpeg
from tests.jobs.conftest import WorkerProcesses, successes_per_job, wait_until

pytestmark = pytest.mark.slow

SHORT_LEASE = {"ERRORBOOK_JOB_LEASE_SECONDS": "3"}  # for the worker that will be killed


def _reader(engine):  # type: ignore[no-untyped-def]
    """Polls read in deferred transactions: on SQLite they must not take the write lock the jobs need."""
    return engine.execution_options(**{READ_MOSTLY_OPTION: True})


def _job(engine, job_id: int) -> Job:  # type: ignore[no-untyped-def]
    with Session(_reader(engine), expire_on_commit=False) as session:
        job = session.get(Job, job_id)
        assert job is not None
        return job


def _finished(engine, job_id: int) -> bool:  # type: ignore[no-untyped-def]
    return _job(engine, job_id).status in ("succeeded", "failed", "cancelled")


def _outcomes(engine, job_id: int) -> list[str | None]:  # type: ignore[no-untyped-def]
    with Session(engine) as session:
        return [e.outcome for e in jobs_repository.executions_of(session, job_id)]


def _assert_retried_after_the_kill(engine, job_id: int, workers: WorkerProcesses) -> None:  # type: ignore[no-untyped-def]
    job = _job(engine, job_id)
    assert job.status == "succeeded", (job.error, workers.logs()[-3000:])
    outcomes = _outcomes(engine, job_id)
    # The killed attempt is recorded as lost by the reaper; only the last attempt succeeded.
    assert outcomes[0] == "lost" and outcomes[-1] == "succeeded", outcomes
    assert outcomes.count("succeeded") == 1 and job.attempts == len(outcomes) >= 2


# ---- split ----------------------------------------------------------------------------------------------

SPLIT_IMAGES = 3000
SPLIT_ROWS_PER_WRITE = "5"  # 600 short transactions: the kill lands between two of them


def _dataset_of_rows(engine, count: int) -> int:  # type: ignore[no-untyped-def]
    """Image rows only (a split reads no files): fast to make in bulk."""
    rng = np.random.default_rng(7)
    with Session(engine) as session:
        dataset = Dataset(name=f"faults-{uuid.uuid4().hex[:8]}", target_source="phone")
        session.add(dataset)
        session.flush()
        labels = [Label(dataset_id=dataset.id, name=name) for name in ("cat", "dog", "fox")]
        session.add_all(labels)
        session.flush()
        session.execute(
            insert(Image),
            [
                {
                    "dataset_id": dataset.id,
                    "sha256": f"{i:064x}",
                    "filename": f"{i}.jpg",
                    "source": "phone" if i % 3 else "web",
                    "label_id": labels[i % 3].id,
                    "phash": int(rng.integers(-(2**63), 2**63 - 1)),
                }
                for i in range(count)
            ],
        )
        session.commit()
        return dataset.id


def _create_split(engine, dataset_id: int, target_source: str | None = "phone") -> tuple[int, int]:  # type: ignore[no-untyped-def]
    with Session(engine) as session:
        params = SplitParams(seed=3, target_source=target_source)
        split, job = splits.create_split(
            session, dataset_id=dataset_id, params=params, user_id=None, max_attempts=DEFAULT_MAX_ATTEMPTS
        )
        session.commit()
        return split.id, job.id


def _assignments(engine, split_id: int) -> list[tuple[int, str, int]]:  # type: ignore[no-untyped-def]
    with Session(engine) as session:
        rows = session.execute(
            select(SplitAssignment.image_id, SplitAssignment.subset, SplitAssignment.position)
            .where(SplitAssignment.split_id == split_id)
            .order_by(SplitAssignment.image_id)
        ).all()
    return [(r[0], r[1], r[2]) for r in rows]


def _split_state(engine, split_id: int, job_id: int) -> tuple[str, int, str, float]:  # type: ignore[no-untyped-def]
    with Session(_reader(engine)) as session:
        split = session.get(Split, split_id)
        job = session.get(Job, job_id)
        assert split is not None and job is not None
        written = session.scalar(select(func.count()).where(SplitAssignment.split_id == split_id)) or 0
        return split.status, written, job.status, job.progress


def test_a_split_killed_while_writing_is_rebuilt_whole_by_the_next_worker(fresh_database, workers) -> None:  # type: ignore[no-untyped-def]
    engine = fresh_database.engine
    dataset_id = _dataset_of_rows(engine, SPLIT_IMAGES)
    split_id, job_id = _create_split(engine, dataset_id)
    (first,) = workers.start(1, ERRORBOOK_SPLIT_WRITE_ROWS=SPLIT_ROWS_PER_WRITE, **SHORT_LEASE)

    def writing() -> bool:
        status, written, job_status, progress = _split_state(engine, split_id, job_id)
        assert job_status in ("queued", "running"), (job_status, workers.logs()[-3000:])  # missed the window
        return job_status == "running" and 0 < progress < 1 and written > 0

    try:
        wait_until(writing, timeout=120, interval=0.01)
    except AssertionError as error:
        raise AssertionError(f"{_split_state(engine, split_id, job_id)}\n{workers.logs()[-3000:]}") from error
    workers.kill(first)
    state = _split_state(engine, split_id, job_id)
    status, written, job_status, progress = state
    assert (status, job_status) == ("building", "running"), (state, workers.logs()[-3000:])
    assert 0 < written < SPLIT_IMAGES and 0 < progress < 1, state  # really killed half-way through the writes

    workers.start(1, ERRORBOOK_SPLIT_WRITE_ROWS=SPLIT_ROWS_PER_WRITE)
    wait_until(lambda: _finished(engine, job_id), timeout=120, interval=0.2)
    _assert_retried_after_the_kill(engine, job_id, workers)
    crashed = _assignments(engine, split_id)
    assert len(crashed) == SPLIT_IMAGES == len({image_id for image_id, _, _ in crashed}), len(crashed)  # once each

    # The same parameters, never interrupted: exactly the same assignment.
    again_id, again_job = _create_split(engine, dataset_id)
    wait_until(lambda: _finished(engine, again_job), timeout=120, interval=0.2)
    assert _job(engine, again_job).status == "succeeded", _job(engine, again_job).error
    assert _assignments(engine, again_id) == crashed
    with Session(engine) as session:
        crashed_split, clean_split = session.get(Split, split_id), session.get(Split, again_id)
        assert crashed_split is not None and clean_split is not None
        assert crashed_split.status == clean_split.status == "ready"
        assert crashed_split.counts == clean_split.counts


# ---- training -------------------------------------------------------------------------------------------

EPOCHS = 20


def _colour_dataset(engine, blobs: LocalBlobStore, per_class: int = 8) -> int:  # type: ignore[no-untyped-def]
    with Session(engine) as session:
        dataset = Dataset(name=f"colours-{uuid.uuid4().hex[:8]}")
        session.add(dataset)
        session.flush()
        for index, (name, colour) in enumerate(COLOURS.items()):
            label = Label(dataset_id=dataset.id, name=name)
            session.add(label)
            session.flush()
            for i in range(per_class):
                sha = blobs.put_bytes(colour_jpeg(colour, seed=100 * index + i))
                session.add(Image(dataset_id=dataset.id, sha256=sha, filename=f"{name}_{i}.jpg", label_id=label.id))
        session.commit()
        return dataset.id


def _create_run(engine, dataset_id: int, split_id: int, settings: Settings) -> tuple[int, int]:  # type: ignore[no-untyped-def]
    # The default mode (features cached per image, the head checkpointed per epoch) on the smallest backbone.
    body = RunIn(
        dataset_id=dataset_id, split_id=split_id, backbone="simple_cnn", epochs=EPOCHS, patience=EPOCHS, lr=0.01
    )
    with Session(engine) as session:
        run, job = training.create_run(session, body=body, user_id=None, settings=settings)
        session.commit()
        return run.id, job.id


def _predictions(engine, run_id: int) -> list[tuple[int, str, int]]:  # type: ignore[no-untyped-def]
    with Session(engine) as session:
        rows = session.execute(
            select(Prediction.image_id, Prediction.subset, Prediction.predicted_label_id)
            .where(Prediction.run_id == run_id)
            .order_by(Prediction.image_id)
        ).all()
    return [(r[0], r[1], r[2]) for r in rows]


def _run(engine, run_id: int) -> Run:  # type: ignore[no-untyped-def]
    with Session(engine, expire_on_commit=False) as session:
        run = session.get(Run, run_id)
        assert run is not None
        return run


def test_a_training_run_killed_between_epochs_resumes_from_its_checkpoint(fresh_database, workers) -> None:  # type: ignore[no-untyped-def]
    engine = fresh_database.engine
    settings = Settings(data_dir=workers.data_dir, database_url=fresh_database.url)
    dataset_id = _colour_dataset(engine, LocalBlobStore(settings.blob_dir))
    (first,) = workers.start(1, **SHORT_LEASE)
    split_id, split_job = _create_split(engine, dataset_id, target_source=None)
    wait_until(lambda: _finished(engine, split_job), timeout=120, interval=0.1)
    assert _job(engine, split_job).status == "succeeded", workers.logs()[-3000:]
    run_id, job_id = _create_run(engine, dataset_id, split_id, settings)
    checkpoint = settings.resolved_data_dir / "jobs" / str(job_id) / "training_state.pt"

    def between_epochs() -> bool:
        if not checkpoint.exists():  # cheap: checked first, the database only once it is there
            return False
        job = _job(engine, job_id)
        return job.status == "running" and 0 < job.progress < 1

    wait_until(between_epochs, timeout=180, interval=0.02)
    workers.kill(first)
    saved = torch.load(checkpoint, map_location="cpu", weights_only=True)
    # Usually killed between two epochs; on a slow machine maybe after the last one, while scoring.
    assert 1 <= saved["epochs_completed"] <= EPOCHS, workers.logs()[-3000:]
    assert _job(engine, job_id).status == "running" and _run(engine, run_id).status == "running"

    workers.start(1)
    wait_until(lambda: _finished(engine, job_id), timeout=240, interval=0.2)
    _assert_retried_after_the_kill(engine, job_id, workers)
    resumed = _run(engine, run_id)
    assert resumed.status == "succeeded"
    assert [record["epoch"] for record in resumed.history] == list(range(1, EPOCHS + 1))  # no epoch twice
    # The resumed epochs continued from the checkpoint: the ones before the kill are exactly as saved.
    # ("kept" is marked on the finished run's history only, once the best epoch is known.)
    finished = [{k: v for k, v in record.items() if k != "kept"} for record in resumed.history]
    assert finished[: saved["epochs_completed"]] == saved["history"]
    assert not checkpoint.exists()  # removed once the run is written
    predictions = _predictions(engine, run_id)
    with Session(engine) as session:
        split_images = session.scalar(select(func.count()).where(SplitAssignment.split_id == split_id))
    assert len(predictions) == split_images == len({image_id for image_id, _, _ in predictions})

    # The same run, never interrupted: the same predictions (training is seeded per epoch).
    clean_id, clean_job = _create_run(engine, dataset_id, split_id, settings)
    wait_until(lambda: _finished(engine, clean_job), timeout=240, interval=0.2)
    assert _job(engine, clean_job).status == "succeeded", _job(engine, clean_job).error
    clean = _run(engine, clean_id)
    assert [(i, s) for i, s, _ in _predictions(engine, clean_id)] == [(i, s) for i, s, _ in predictions]
    assert {s: m["count"] for s, m in clean.metrics.items()} == {s: m["count"] for s, m in resumed.metrics.items()}
    assert _predictions(engine, clean_id) == predictions


# ---- Postgres drops the workers' connections ------------------------------------------------------------


@pytest.mark.parametrize("fresh_database", ["postgres"], indirect=True)
def test_workers_reconnect_when_postgres_drops_their_connections(fresh_database, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A Postgres restart, simulated without disturbing anyone else: every backend of this test's workers
    (found by their application_name) is terminated, again and again, while they run a stream of jobs."""
    engine = fresh_database.engine
    app_name = f"eb_faults_{uuid.uuid4().hex[:8]}"
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    pool = WorkerProcesses(f"{fresh_database.url}&application_name={app_name}", data_dir)
    count = 40
    with Session(engine) as session:
        ids = [jobs.enqueue(session, kind="demo.sleep", payload={"seconds": 0.4, "steps": 8}).id for _ in range(count)]
        session.commit()
    terminated: list[int] = []
    stop = threading.Event()
    admin = create_engine(engine.url, isolation_level="AUTOCOMMIT")

    def terminate_backends() -> None:
        while not stop.wait(0.15):
            with admin.connect() as conn:
                killed = conn.execute(
                    text(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                        "WHERE application_name = :name AND pid <> pg_backend_pid()"
                    ),
                    {"name": app_name},
                ).all()
            terminated.append(len(killed))

    try:
        processes = pool.start(2, ERRORBOOK_JOB_LEASE_SECONDS="5")  # a claim whose reply was lost comes back soon
        wait_until(lambda: _job(engine, ids[0]).status != "queued", timeout=120)
        killer = threading.Thread(target=terminate_backends, daemon=True)
        killer.start()

        def all_done() -> bool:
            with Session(engine) as session:
                return session.scalar(select(func.count()).where(Job.status.in_(["queued", "running"]))) == 0

        try:
            wait_until(all_done, timeout=180, interval=0.3)
        finally:
            stop.set()
            killer.join()
        assert sum(terminated) >= 10, terminated  # connections really were dropped, many times
        assert all(process.poll() is None for process in processes), pool.logs()[-3000:]
        with Session(engine) as session:
            statuses = dict(session.execute(select(Job.status, func.count()).group_by(Job.status)).all())
            assert statuses == {"succeeded": count}, pool.logs()[-4000:]
        assert successes_per_job(engine) == dict.fromkeys(ids, 1)  # each job finished exactly once
        # And they carry on: a job queued after the storm runs as usual.
        with Session(engine) as session:
            after = jobs.enqueue(session, kind="demo.sleep", payload={"seconds": 0, "steps": 1}).id
            session.commit()
        wait_until(lambda: _job(engine, after).status == "succeeded", timeout=60)
    finally:
        pool.stop_all()
        admin.dispose()


def test_a_starting_worker_sweeps_the_temp_files_killed_blob_writes_left(workers) -> None:  # type: ignore[no-untyped-def]
    temp = workers.data_dir / "blobs" / "tmp"
    temp.mkdir(parents=True)
    abandoned, in_progress = temp / "tmpkilled", temp / "tmpstreaming"
    abandoned.write_bytes(b"a write cut off by SIGKILL")
    in_progress.write_bytes(b"an upload still arriving")
    long_ago = abandoned.stat().st_mtime - 3 * 86400
    os.utime(abandoned, (long_ago, long_ago))
    workers.start()
    wait_until(lambda: "removed 1 temp file" in workers.logs(), timeout=60)
    assert not abandoned.exists()
    assert in_progress.exists()
