"""Errorbook on separate hosts that share only Postgres and an S3-compatible object store (issue 18).

Postgres, S3 (moto's standalone server, an S3-protocol test server), web and two worker hosts are network
namespaces with data dirs of their own (tests/multihost/hosts.py); the test acts as a client on a sixth one,
through the web host's HTTP API only, and checks the store against the database afterwards."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import psycopg
import pytest

from app.core.settings import Settings
from app.jobs.states import ACTIVE
from tests.datasets.conftest import stored_blobs
from tests.multihost.hosts import Deployment, Host, deployment
from tests.multihost.workflow import (
    PER_CLASS,
    colour_zip,
    finished_run,
    make_split,
    start_run,
    unreferenced_objects,
    upload_dataset,
)

pytestmark = [pytest.mark.multihost, pytest.mark.slow, pytest.mark.timeout(420)]

IMAGES = 3 * PER_CLASS


def _query(d: Deployment, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    with psycopg.connect(d.database_url, connect_timeout=10) as conn:
        return list(conn.execute(sql, params).fetchall())


def _host_of(d: Deployment, worker_id: str | None) -> Host | None:
    """The worker host whose process holds this worker id (``hostname:pid:random``); pids are the machine's."""
    if not worker_id:
        return None
    pid = int(worker_id.split(":")[1])
    return next((host for host in d.workers if pid in host.pids()), None)


def _check_store(d: Deployment) -> None:
    """Every row's object is in the store with its digest, no object is unreferenced, no host kept a blob."""
    verified = d.errorbook(d.web, "storage", "verify", "--digests")
    assert "; 0 problems" in verified, verified
    assert unreferenced_objects(d.errorbook(d.web, "storage", "gc", "--dry-run", "--grace-hours", "0")) == 0
    for host in (d.web, *d.workers):
        assert stored_blobs(Settings(data_dir=host.data_dir).blob_dir) == set(), host.name


def _predictions(api: Any, run_id: int) -> int:
    return int(api.get(f"/api/runs/{run_id}/predictions", params={"limit": 1}).raise_for_status().json()["total"])


def test_a_run_uploaded_through_the_web_host_completes_on_the_worker_hosts(tmp_path: Path) -> None:
    with deployment(tmp_path) as d, d.net.inside(d.client), d.api() as api:
        dataset = upload_dataset(api, colour_zip(), logs=d.logs)
        split = make_split(api, dataset, logs=d.logs)
        run_id, job_id = start_run(api, dataset, split)
        run = finished_run(api, run_id, job_id, timeout=300, logs=d.logs)

        assert sum(run["metrics"][subset]["count"] for subset in run["metrics"]) == IMAGES, run["metrics"]
        assert run["metrics"]["dev"]["accuracy"] > 0.9  # three colours: a head on any backbone separates them
        assert _predictions(api, run_id) == IMAGES
        images = api.get(f"/api/datasets/{dataset}/images", params={"limit": 500}).json()["items"]
        thumb = api.get(f"/images/{images[0]['id']}/thumb")
        assert thumb.status_code == 200 and thumb.content[:2] == b"\xff\xd8"  # the web host reads the store
        executions = _query(d, "select worker_id, outcome from job_executions")
        assert {outcome for _, outcome in executions} == {"succeeded"}
        assert all(_host_of(d, worker) is not None for worker, _ in executions), executions  # worker hosts only
        _check_store(d)


def _reference_metrics(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, archive: bytes) -> dict[str, Any]:
    """The same upload, split and run on one host: one process, SQLite, the local store, no shards."""
    import threading

    from fastapi.testclient import TestClient

    from app.auth import service as auth
    from app.core.db import get_engine, session_scope
    from app.core.migrate import upgrade_to_head
    from app.core.settings import get_settings
    from app.jobs.worker import Worker
    from app.web.app import create_app

    for name in ("ERRORBOOK_DATABASE_URL", "ERRORBOOK_STORAGE", "ERRORBOOK_EXTRACT_SHARD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("ERRORBOOK_DATA_DIR", str(tmp_path / "single-host"))
    monkeypatch.setenv("ERRORBOOK_TORCH_THREADS", "1")
    get_settings.cache_clear()
    settings = get_settings()
    engine = get_engine(settings)
    upgrade_to_head(engine)
    with session_scope(engine) as session:
        user = auth.create_user(session, name="solo", role="admin")
        _, token = auth.create_token(session, user=user, name="t")
    worker = Worker(settings=settings, engine=engine)
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    try:
        with TestClient(create_app(settings), headers={"authorization": f"Bearer {token}"}) as api:
            dataset = upload_dataset(api, archive)
            run_id, job_id = start_run(api, dataset, make_split(api, dataset))
            metrics: dict[str, Any] = finished_run(api, run_id, job_id, timeout=300)["metrics"]
    finally:
        worker.request_stop()
        thread.join(timeout=60)
        engine.dispose()
        get_settings.cache_clear()
    return metrics


def _run_jobs(d: Deployment, job_id: int) -> list[tuple[int, str, str | None, float]]:
    """(id, status, worker id, progress) of the run's job and of every job queued after it: the shards it fanned
    out (nothing else queues jobs while this test's run is going)."""
    return [
        (row[0], row[1], row[2], row[3])
        for row in _query(d, "select id, status, worker_id, progress from jobs where id >= %s order by id", job_id)
    ]


def _extracting_host(d: Deployment, job_id: int) -> Host | None:
    """A worker host in the middle of this run's extraction: running one of its shards (or, unsharded, the run's
    own job between loading the backbone and training). Fails once the run is over without one seen."""
    jobs = _run_jobs(d, job_id)
    for jid, status, worker, progress in jobs:
        extracting = jid != job_id or 0.05 <= progress < 0.55
        if status == "running" and extracting and (host := _host_of(d, worker)) is not None:
            return host
    assert any(status in ACTIVE for _, status, _, _ in jobs), f"the run ended before a host was seen extracting: {jobs}"
    return None


def _flat(metrics: dict[str, Any]) -> dict[str, Any]:
    """subset.figure -> value (pytest.approx compares flat mappings only)."""
    return {f"{subset}.{name}": value for subset, figures in metrics.items() for name, value in figures.items()}




def test_a_worker_host_killed_mid_extraction_loses_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    archive = colour_zip()
    expected = _reference_metrics(tmp_path, monkeypatch, archive)
    with deployment(tmp_path / "hosts", settings={"ERRORBOOK_EXTRACT_SHARD_SIZE": "8"}) as d:
        with d.net.inside(d.client), d.api() as api:
            dataset = upload_dataset(api, archive, logs=d.logs)
            run_id, job_id = start_run(api, dataset, make_split(api, dataset, logs=d.logs))
            deadline = time.monotonic() + 240
            while (victim := _extracting_host(d, job_id)) is None:
                assert time.monotonic() < deadline, f"no host seen extracting\n{d.logs()}"
                time.sleep(0.2)
            killed = victim.kill()
            assert killed and victim.pids() == []
            survivor = next(host for host in d.workers if host is not victim)
            run = finished_run(api, run_id, job_id, timeout=300, logs=d.logs)

            assert _flat(run["metrics"]) == pytest.approx(_flat(expected), rel=1e-5, abs=1e-6)
            assert _predictions(api, run_id) == IMAGES
            jobs = _run_jobs(d, job_id)
            assert {status for _, status, _, _ in jobs} == {"succeeded"}, jobs
            executions = _query(
                d,
                "select job_id, worker_id, outcome from job_executions where job_id = any(%s) order by id",
                [jid for jid, *_ in jobs],
            )
            lost = [jid for jid, _, outcome in executions if outcome == "lost"]
            assert lost, executions  # the kill interrupted work in flight
            for jid in lost:  # which another attempt on the surviving host finished
                finals = [w for j, w, outcome in executions if j == jid and outcome == "succeeded"]
                assert len(finals) == 1 and _host_of(d, finals[0]) is survivor, executions
        _check_store(d)
    assert len(jobs) > 1, f"the run was not sharded: {jobs}"
