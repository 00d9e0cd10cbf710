"""Sharded extraction (issue 18): one linear run timed with 1 and with 2 real worker processes at a small shard size.

python bench/shards.py [--images 240] [--shard-size 40]

Both cases run the same run config on the same images, each with an empty feature cache (the ONNX export is made
once beforehand by a warm-up run, so neither case pays for it), on SQLite; wall time is from the run's creation
to its job's end. The figures it prints include the load average before each case: on a shared machine a second
worker only helps when cores are free.
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from fastapi.testclient import TestClient
from PIL import Image as PILImage
from sqlalchemy import select
from sqlalchemy.orm import Session

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from app.auth import service as auth  # noqa: E402
from app.core.db import make_engine  # noqa: E402
from app.core.migrate import upgrade_to_head  # noqa: E402
from app.core.settings import Settings, get_settings  # noqa: E402
from app.jobs import service as jobs  # noqa: E402
from app.models import Dataset, Image, Job, JobExecution, JobShard, Label  # noqa: E402
from app.web.app import create_app  # noqa: E402
from tests.jobs.conftest import WorkerProcesses  # noqa: E402
from tests.jobs.inline import drain_jobs  # noqa: E402

COLOURS = {"red": (200, 40, 40), "green": (40, 180, 60), "blue": (40, 60, 200)}


def _jpeg(colour: tuple[int, int, int], seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    pixels = np.clip(np.array(colour) + rng.normal(0, 25, (96, 96, 3)), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    PILImage.fromarray(pixels).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def _dataset(app: Any, engine: Any, images: int) -> tuple[str, int]:
    with Session(engine) as session:
        user = auth.create_user(session, name="bench", role="reviewer")
        _, token = auth.create_token(session, user=user, name="bench")
        dataset = Dataset(name="colours")
        session.add(dataset)
        session.flush()
        for index, (name, colour) in enumerate(COLOURS.items()):
            label = Label(dataset_id=dataset.id, name=name)
            session.add(label)
            session.flush()
            for i in range(images // len(COLOURS)):
                sha = app.state.blobs.put_bytes(_jpeg(colour, seed=index * 100_000 + i))
                session.add(Image(dataset_id=dataset.id, sha256=sha, filename=f"{name}_{i}.jpg", label_id=label.id))
        session.commit()
        return token, dataset.id


def _wait(engine: Any, job_id: int, timeout: float = 1800) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with Session(engine) as session:
            job = session.get(Job, job_id)
            assert job is not None
            if job.status in ("succeeded", "failed", "cancelled"):
                return job.status
        time.sleep(0.2)
    raise TimeoutError(f"job {job_id} did not end within {timeout} s")


def _both_ready(engine: Any, count: int) -> None:
    """Each worker's runner claims a hold job (then cancelled), so every worker is up before the run starts."""
    with Session(engine) as session:
        holds = [
            jobs.enqueue(session, kind="demo.sleep", payload={"seconds": 300, "steps": 600}, queue="gpu").id
            for _ in range(count)
        ]
        session.commit()
    while True:
        with Session(engine) as session:
            if all(session.get(Job, job_id).status == "running" for job_id in holds):  # type: ignore[union-attr]
                for job_id in holds:
                    jobs.cancel_job(session, job_id=job_id)
                session.commit()
                break
        time.sleep(0.2)
    for job_id in holds:
        _wait(engine, job_id, timeout=120)


def _case(client: TestClient, engine: Any, pool: WorkerProcesses, body: dict[str, Any], workers: int) -> dict[str, Any]:
    shutil.rmtree(Settings().cache_dir / "features", ignore_errors=True)
    for _ in range(workers):
        pool.start(1, ERRORBOOK_EXTRACT_SHARD_SIZE=os.environ["ERRORBOOK_EXTRACT_SHARD_SIZE"])
    _both_ready(engine, workers)
    load = os.getloadavg()[0]
    started = time.perf_counter()
    created = client.post("/api/runs", json=body).json()
    status = _wait(engine, created["job_id"])
    wall = time.perf_counter() - started
    pool.stop_all()
    pool.processes.clear()
    run = client.get(f"/api/runs/{created['run_id']}").json()
    with Session(engine) as session:
        shard_jobs = list(session.scalars(select(JobShard.job_id).where(JobShard.parent_job_id == created["job_id"])))
        ran_on = set(session.scalars(select(JobExecution.worker_id).where(JobExecution.job_id.in_(shard_jobs))))
    return {
        "workers": workers,
        "status": status,
        "wall_s": wall,
        "features_s": run["timings"].get("features_s"),
        "shards": len(shard_jobs),
        "hosts_used": len(ran_on),
        "dev_accuracy": run["metrics"].get("dev", {}).get("accuracy"),
        "load_before": load,
        "load_after": os.getloadavg()[0],
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=240)
    parser.add_argument("--shard-size", type=int, default=40)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp) / "data"
        url = f"sqlite:///{Path(tmp) / 'bench.db'}"
        os.environ.update(ERRORBOOK_DATA_DIR=str(data_dir), ERRORBOOK_DATABASE_URL=url)
        get_settings.cache_clear()
        engine = make_engine(url)
        upgrade_to_head(engine)
        app = create_app(Settings())
        token, dataset_id = _dataset(app, engine, args.images)
        with TestClient(app, headers={"authorization": f"Bearer {token}"}) as client:
            split_id = client.post(f"/api/datasets/{dataset_id}/splits", json={"seed": 0}).json()["split_id"]
            drain_jobs(engine)
            body = {"dataset_id": dataset_id, "split_id": split_id, "epochs": 5}
            client.post("/api/runs", json=body)
            drain_jobs(engine)  # warm-up, unsharded: exports and verifies the backbone's ONNX once
            os.environ["ERRORBOOK_EXTRACT_SHARD_SIZE"] = str(args.shard_size)
            pool = WorkerProcesses(url, data_dir)
            results = [_case(client, engine, pool, body, workers) for workers in (1, 2)]
    print("| workers | status | wall s | extraction s | shards | workers used | dev acc | load before / after |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        print(
            f"| {r['workers']} | {r['status']} | {r['wall_s']:.1f} | {r['features_s']:.1f} | {r['shards']} | "
            f"{r['hosts_used']} | {r['dev_accuracy']:.3f} | {r['load_before']:.1f} / {r['load_after']:.1f} |"
        )
    print(f"2 workers / 1 worker wall time: {results[1]['wall_s'] / results[0]['wall_s']:.2f}")


if __name__ == "__main__":
    main()
