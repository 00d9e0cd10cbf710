"""The user's steps through the web host's HTTP API (upload, split, run), and the checks of the object store."""

from __future__ import annotations

import io
import re
import time
import zipfile
from typing import Any

import httpx

from app.jobs.states import ACTIVE
from tests.factories import COLOURS, colour_jpeg

PER_CLASS = 16  # 48 small JPEGs in 3 classes
RUN_CONFIG = {"epochs": 15, "lr": 0.01, "batch_size": 64, "seed": 0}


def colour_zip(per_class: int = PER_CLASS) -> bytes:
    """A zip of `per_class` noisy colour JPEGs per class, in class folders (the labels); the same bytes each call."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, colour in COLOURS.items():
            for i in range(per_class):
                archive.writestr(f"{name}/{name}_{i:03d}.jpg", colour_jpeg(colour, seed=1000 * len(name) + i))
    return buffer.getvalue()


def wait_job(api: httpx.Client, job_id: int, *, timeout: float, logs: Any = str) -> dict[str, Any]:
    """The job once it is no longer queued or running."""
    deadline = time.monotonic() + timeout
    while True:
        job: dict[str, Any] = api.get(f"/api/jobs/{job_id}").raise_for_status().json()
        if job["status"] not in ACTIVE:
            return job
        if time.monotonic() > deadline:
            raise TimeoutError(f"job {job_id} still {job['status']} after {timeout:g} s: {job}\n{logs()}")
        time.sleep(0.5)


def upload_dataset(api: httpx.Client, archive: bytes, *, logs: Any = str) -> int:
    """Create a dataset and upload the zip through the web host; the dataset id once its ingest succeeded."""
    dataset = api.post("/api/datasets", json={"name": "colours"}).raise_for_status().json()["id"]
    files = {"files": ("colours.zip", archive, "application/zip")}
    started = api.post(f"/api/datasets/{dataset}/uploads", files=files)
    assert started.status_code == 202, started.text
    job = wait_job(api, started.json()["job_id"], timeout=120, logs=logs)
    assert job["status"] == "succeeded", job
    report = api.get(f"/api/uploads/{started.json()['upload_id']}").json()
    assert report["rejected"] == [] and report["status"] == "done", report
    return int(dataset)


def make_split(api: httpx.Client, dataset: int, *, logs: Any = str) -> int:
    created = api.post(f"/api/datasets/{dataset}/splits", json={"seed": 0})
    assert created.status_code == 202, created.text
    job = wait_job(api, created.json()["job_id"], timeout=120, logs=logs)
    assert job["status"] == "succeeded", job
    return int(created.json()["split_id"])


def start_run(api: httpx.Client, dataset: int, split: int) -> tuple[int, int]:
    """(run id, job id) of a new linear run."""
    created = api.post("/api/runs", json={"dataset_id": dataset, "split_id": split, **RUN_CONFIG})
    assert created.status_code == 202, created.text
    return int(created.json()["run_id"]), int(created.json()["job_id"])


def finished_run(api: httpx.Client, run_id: int, job_id: int, *, timeout: float, logs: Any = str) -> dict[str, Any]:
    """The run once both its job and the run itself are over (a run whose job fans out may outlive that job)."""
    job = wait_job(api, job_id, timeout=timeout, logs=logs)
    assert job["status"] == "succeeded", f"{job}\n{logs()}"
    deadline = time.monotonic() + timeout
    while (run := api.get(f"/api/runs/{run_id}").raise_for_status().json())["status"] in ACTIVE:
        assert time.monotonic() < deadline, f"run {run_id} still {run['status']}\n{logs()}"
        time.sleep(0.5)
    assert run["status"] == "succeeded", run
    return dict(run)


def unreferenced_objects(gc_output: str) -> int:
    """What `errorbook storage gc --dry-run --grace-hours 0` would delete: objects no row refers to."""
    found = re.search(r"would delete ([\d,]+) unreferenced", gc_output)
    assert found, gc_output
    return int(found.group(1).replace(",", ""))
