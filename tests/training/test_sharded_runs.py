"""Sharded feature extraction (issue 18): a run over more images than ERRORBOOK_EXTRACT_SHARD_SIZE fans out into
shard jobs, and ends with the same features and metrics as a run that extracted in one piece."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.core.settings import Settings, get_settings
from app.core.storage import LocalBlobStore, read_blob
from app.jobs import service as jobs
from app.jobs.states import JobStatus, ShardStatus
from app.models import Job, JobExecution, JobShard
from app.training.shards import FEATURE_SHARD_JOB
from tests.jobs.conftest import WorkerProcesses, wait_until
from tests.jobs.inline import drain_jobs, run_next_job
from tests.training.conftest import colour_split, train

pytestmark = pytest.mark.slow

PER_CLASS = 14  # 42 images: with shards of 8, train, dev and test each come in several shards
SHARD_SIZE = 8


@pytest.fixture
def colours(fresh_database, tmp_path, monkeypatch):  # type: ignore[no-untyped-def]
    with colour_split(fresh_database, tmp_path / "data", monkeypatch, per_class=PER_CLASS) as env:
        yield env


def _sharding(monkeypatch: pytest.MonkeyPatch, size: int) -> None:
    monkeypatch.setenv("ERRORBOOK_EXTRACT_SHARD_SIZE", str(size))
    get_settings.cache_clear()


def _forget_features() -> None:
    """Empty this host's feature cache, so the next run computes every feature again."""
    shutil.rmtree(Settings().cache_dir / "features", ignore_errors=True)


def _start(client: TestClient, dataset_id: int, split_id: int) -> dict[str, Any]:
    body = {"dataset_id": dataset_id, "split_id": split_id, "epochs": 15, "lr": 0.01}
    created = client.post("/api/runs", json=body)
    assert created.status_code == 202, created.text
    started: dict[str, Any] = created.json()
    return started


def _shards(engine: Any, parent_id: int) -> list[tuple[JobShard, Job]]:
    with Session(engine, expire_on_commit=False) as session:
        rows = session.execute(
            select(JobShard, Job)
            .join(Job, Job.id == JobShard.job_id)
            .where(JobShard.parent_job_id == parent_id)
            .order_by(JobShard.position)
        ).all()
        return [(shard, job) for shard, job in rows]


def _outcomes(engine: Any, job_id: int) -> list[str | None]:
    with Session(engine) as session:
        return list(
            session.scalars(select(JobExecution.outcome).where(JobExecution.job_id == job_id).order_by(JobExecution.id))
        )


def _shard_features(engine: Any, parent_id: int) -> dict[str, np.ndarray]:
    """subset -> the plain-view features the shards stored as objects, joined in shard order."""
    blobs = LocalBlobStore(Settings().blob_dir)
    parts: dict[str, list[np.ndarray]] = {}
    for shard, job in _shards(engine, parent_id):
        assert shard.result_sha256 is not None
        import io

        with np.load(io.BytesIO(read_blob(blobs, shard.result_sha256))) as stored:
            parts.setdefault(job.payload["subset"], []).append(stored["features"][0])
    return {subset: np.concatenate(chunks) for subset, chunks in parts.items()}


def _cached_features(engine: Any, split_id: int) -> dict[str, np.ndarray]:
    """subset -> the features an unsharded run left in the feature cache, in the run's image order."""
    from app.training import repository

    with Session(engine) as session:
        rows = repository.split_images(session, split_id)
    root = next((Settings().cache_dir / "features").iterdir())
    by_subset: dict[str, list[np.ndarray]] = {}
    for _image_id, subset, sha, _label_id in rows:
        by_subset.setdefault(subset, []).append(np.load(root / sha[:2] / f"{sha}.npy"))
    return {subset: np.stack(vectors) for subset, vectors in by_subset.items()}


def _same_results(sharded: dict[str, Any], whole: dict[str, Any]) -> None:
    assert sharded["status"] == whole["status"] == "succeeded"
    assert sharded["metrics"] == whole["metrics"]
    assert sharded["confusion"] == whole["confusion"]
    assert [r["dev_loss"] for r in sharded["history"]] == [r["dev_loss"] for r in whole["history"]]


def test_a_sharded_run_fans_out_and_ends_with_the_features_and_metrics_of_one_piece(colours, monkeypatch) -> None:
    client, engine, dataset_id, split_id = colours
    whole = train(client, engine, dataset_id, split_id)
    assert whole["timings"].get("shards") is None
    reference = _cached_features(engine, split_id)
    _forget_features()

    _sharding(monkeypatch, SHARD_SIZE)
    run = _start(client, dataset_id, split_id)
    parent = run_next_job(engine)
    assert parent is not None and parent.status == JobStatus.WAITING
    assert parent.attempts == 0  # waiting is not a failed attempt
    assert client.get(f"/api/runs/{run['run_id']}").json()["status"] == "running"
    shard_jobs = _shards(engine, run["job_id"])
    # train 8+8+..., dev and test apart: a shard never mixes subsets
    assert len(shard_jobs) >= 6
    assert all(job.kind == FEATURE_SHARD_JOB and job.status == JobStatus.QUEUED for _, job in shard_jobs)
    assert {job.queue for _, job in shard_jobs} == {Settings().training_queue}

    first = run_next_job(engine)
    assert first is not None and first.kind == FEATURE_SHARD_JOB and first.status == JobStatus.SUCCEEDED
    live = client.get(f"/api/jobs/{run['job_id']}").json()
    assert live["status"] == "waiting"
    assert live["result"]["shards"]["done"] == 1 and live["result"]["shards"]["total"] == len(shard_jobs)
    assert f"1 of {len(shard_jobs)} shards done" in live["message"]
    assert "images/s" in live["message"]
    bar = client.get(f"/jobs/{run['job_id']}/bar")
    assert f"1 of {len(shard_jobs)} shards done" in bar.text and 'hx-trigger="every 1s"' in bar.text

    for _ in range(len(shard_jobs) - 1):  # the other shards, one by one: the parent waits until the last
        done = run_next_job(engine)
        assert done is not None and done.kind == FEATURE_SHARD_JOB and done.status == JobStatus.SUCCEEDED
    assert all(shard.status == ShardStatus.DONE for shard, _ in _shards(engine, run["job_id"]))
    features = _shard_features(engine, run["job_id"])  # read before the parent releases them
    assert set(features) == set(reference)
    for subset, vectors in reference.items():
        np.testing.assert_allclose(features[subset], vectors, rtol=0, atol=1e-5)

    ended = drain_jobs(engine)
    assert [job.kind for job in ended] == ["training.run"]  # the last shard queued the parent again
    assert {job.status for job in ended} == {JobStatus.SUCCEEDED}
    sharded = client.get(f"/api/runs/{run['run_id']}").json()
    _same_results(sharded, whole)
    assert sharded["timings"]["shards"] == len(shard_jobs)
    assert sharded["timings"]["extracted_train"] == whole["timings"]["extracted_train"]
    # What the run was made from is recorded: its shard objects are deleted, not left for the GC as orphans.
    blobs = LocalBlobStore(Settings().blob_dir)
    assert not any(blobs.exists(shard.result_sha256 or "") for shard, _ in _shards(engine, run["job_id"]))


def test_a_failing_shard_is_retried_alone_and_the_run_ends_the_same(colours, monkeypatch) -> None:
    client, engine, dataset_id, split_id = colours
    whole = train(client, engine, dataset_id, split_id)
    _forget_features()
    _sharding(monkeypatch, SHARD_SIZE)
    run = _start(client, dataset_id, split_id)
    assert run_next_job(engine) is not None  # the parent fans out
    shard_jobs = _shards(engine, run["job_id"])
    victim_sha = shard_jobs[1][1].payload["shas"][0]
    blob = LocalBlobStore(Settings().blob_dir).path(victim_sha)
    saved = blob.read_bytes()
    blob.unlink()  # the second shard cannot read one of its images: it fails

    assert run_next_job(engine) is not None  # shard 1
    failed = run_next_job(engine)
    assert failed is not None and failed.id == shard_jobs[1][1].id
    assert failed.status == JobStatus.QUEUED and failed.attempts == 1  # queued again, one attempt spent
    assert "retrying: shard 2" in failed.message
    assert _status(engine, run["job_id"]) == JobStatus.WAITING
    blob.write_bytes(saved)

    drain_jobs(engine)
    _same_results(client.get(f"/api/runs/{run['run_id']}").json(), whole)
    for position, (_shard, job) in enumerate(shard_jobs):
        expected = ["retried", "succeeded"] if position == 1 else ["succeeded"]
        assert _outcomes(engine, job.id) == expected, position  # only the failed shard ran twice


def _status(engine: Any, job_id: int) -> str:
    with Session(engine) as session:
        job = session.get(Job, job_id)
        assert job is not None
        return job.status


def test_a_shard_out_of_attempts_fails_the_run_and_cancelling_a_run_cancels_its_shards(colours, monkeypatch) -> None:
    client, engine, dataset_id, split_id = colours
    _sharding(monkeypatch, SHARD_SIZE)
    cancelled = _start(client, dataset_id, split_id)
    assert run_next_job(engine) is not None
    response = client.post(f"/api/jobs/{cancelled['job_id']}/cancel")
    assert response.status_code == 200 and response.json()["status"] == "cancelled"
    assert {job.status for _, job in _shards(engine, cancelled["job_id"])} == {JobStatus.CANCELLED}
    assert client.get(f"/api/runs/{cancelled['run_id']}").json()["status"] == "cancelled"
    assert run_next_job(engine) is None  # nothing of it is left to run

    failing = _start(client, dataset_id, split_id)
    assert run_next_job(engine) is not None
    victim = _shards(engine, failing["job_id"])[0][1]
    blobs = LocalBlobStore(Settings().blob_dir)
    saved = {sha: blobs.path(sha).read_bytes() for sha in victim.payload["shas"]}
    for sha in saved:
        blobs.path(sha).unlink()
    for _ in range(victim.max_attempts):
        ended = run_next_job(engine)
        assert ended is not None and ended.id == victim.id
    assert _status(engine, victim.id) == JobStatus.FAILED
    parent = client.get(f"/api/jobs/{failing['job_id']}").json()
    assert parent["status"] == "failed" and parent["error"].startswith("shard 1 failed")
    assert client.get(f"/api/runs/{failing['run_id']}").json()["status"] == "failed"
    assert run_next_job(engine) is None  # the other shards were cancelled with it
    for sha, data in saved.items():
        Path(blobs.path(sha)).write_bytes(data)


def _both_ready(engine: Any, pool: WorkerProcesses) -> None:
    """Wait until each worker's runner has claimed a job, so both are there when the shards are queued."""
    with Session(engine) as session:
        holds = [jobs.enqueue(session, kind="demo.sleep", payload={"seconds": 120, "steps": 240}, queue="gpu").id]
        holds.append(jobs.enqueue(session, kind="demo.sleep", payload={"seconds": 120, "steps": 240}, queue="gpu").id)
        session.commit()
    wait_until(lambda: all(_status(engine, job_id) == JobStatus.RUNNING for job_id in holds), timeout=240, interval=0.2)
    with Session(engine) as session:
        for job_id in holds:
            jobs.cancel_job(session, job_id=job_id)
        session.commit()
    wait_until(lambda: all(_status(engine, job_id) == JobStatus.CANCELLED for job_id in holds), timeout=60)


def test_two_worker_processes_share_the_shards_and_the_run_ends_as_one_piece_would(
    colours, monkeypatch, fresh_database, tmp_path
) -> None:
    client, engine, dataset_id, split_id = colours
    whole = train(client, engine, dataset_id, split_id)
    _forget_features()
    pool = WorkerProcesses(fresh_database.url, tmp_path / "data")
    try:
        # One GPU-queue worker and one that takes every queue: both take shards.
        pool.start(1, args=("--queue", "gpu"), ERRORBOOK_EXTRACT_SHARD_SIZE=str(SHARD_SIZE))
        pool.start(1, ERRORBOOK_EXTRACT_SHARD_SIZE=str(SHARD_SIZE))
        _both_ready(engine, pool)
        run = _start(client, dataset_id, split_id)
        seen: set[str] = set()

        def finished() -> bool:
            with Session(engine) as session:
                job = session.get(Job, run["job_id"])
                assert job is not None
                seen.add(job.message)
                return job.status in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED)

        wait_until(finished, timeout=480, interval=0.1)
    finally:
        pool.stop_all()
    sharded = client.get(f"/api/runs/{run['run_id']}").json()
    assert sharded["status"] == "succeeded", pool.logs()[-3000:]
    _same_results(sharded, whole)
    shard_jobs = _shards(engine, run["job_id"])
    with Session(engine) as session:
        ran_on = set(
            session.scalars(
                select(JobExecution.worker_id).where(JobExecution.job_id.in_([job.id for _, job in shard_jobs]))
            )
        )
    assert len(ran_on) == 2  # the shards were shared
    total = len(shard_jobs)
    assert any(f"of {total} shards done" in message and f"{total} of {total}" not in message for message in seen), seen
