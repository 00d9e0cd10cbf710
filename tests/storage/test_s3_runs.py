"""Training runs on the object-store backend (an S3-protocol test server), on both databases: the model files are
objects under runs/<id>/, a second host sharing only the database and the store serves and predicts from them,
verify names a missing one, and a store that goes away mid-job fails the job with its reason, nothing recorded."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from app.core.settings import Settings, get_settings
from app.web.app import create_app
from tests.factories import colour_jpeg
from tests.jobs.inline import drain_jobs
from tests.s3_server import S3Server, s3_server
from tests.storage.conftest import use_bucket
from tests.training.conftest import colour_split, train

pytestmark = pytest.mark.slow


def _keys(server: S3Server, bucket: str) -> set[str]:
    client = boto3.client("s3", endpoint_url=server.endpoint_url)
    return {item["Key"] for item in client.list_objects_v2(Bucket=bucket).get("Contents", ())}


@pytest.fixture
def s3_install(
    s3_env: str, fresh_database: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[str, TestClient, Any, int, int]]:
    bucket = s3_env
    with colour_split(fresh_database, tmp_path / "host-a", monkeypatch, per_class=6) as (client, engine, ds, split):
        yield bucket, client, engine, ds, split


def test_a_run_stores_its_model_in_the_object_store_and_another_host_serves_it(
    s3_install: tuple[str, TestClient, Any, int, int],
    server: S3Server,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    fresh_database: Any,
) -> None:
    bucket, client, engine, dataset_id, split_id = s3_install
    run = train(client, engine, dataset_id, split_id, epochs=3)
    run_id, job_id = run["id"], run["job_id"]
    keys = _keys(server, bucket)
    model_keys = {key for key in keys if key.startswith(f"errorbook/runs/{run_id}/")}
    assert {f"errorbook/runs/{run_id}/{name}" for name in ("model.pt", "labels.json", "model.torchscript.pt")} <= (
        model_keys
    )
    assert not any(key.startswith("errorbook/jobs/") for key in keys)  # the resume checkpoint went with success
    assert not (tmp_path / "host-a" / "runs").exists()  # nothing of the run in the local data dir
    assert not list((tmp_path / "host-a" / "jobs" / str(job_id)).rglob("*.pt"))  # scratch emptied
    stored = (
        boto3.client("s3", endpoint_url=server.endpoint_url)
        .get_object(Bucket=bucket, Key=f"errorbook/runs/{run_id}/model.pt")["Body"]
        .read()
    )

    # Host B: its own data dir (no caches), the same database and bucket.
    monkeypatch.setenv("ERRORBOOK_DATA_DIR", str(tmp_path / "host-b"))
    get_settings.cache_clear()
    token = client.headers["authorization"]
    with TestClient(create_app(Settings()), headers={"authorization": token}) as other:
        download = other.get(f"/api/runs/{run_id}/files/model.pt")
        assert download.status_code == 200 and download.content == stored
        picture = colour_jpeg((220, 40, 40), seed=99)
        predicted = other.post(f"/api/runs/{run_id}/predict", files=[("files", ("red.jpg", picture, "image/jpeg"))])
        assert predicted.status_code == 200, predicted.text
        assert predicted.json()["items"][0]["top"][0]["label"] == "red"
        # A run continuing this one, trained by a worker on host B, loads the model from the store.
        continued = train(other, engine, dataset_id, split_id, epochs=2, backbone=f"run:{run_id}")
        assert continued["status"] == "succeeded"

    # verify names the run whose file went missing, and exits 1.
    boto3.client("s3", endpoint_url=server.endpoint_url).delete_object(
        Bucket=bucket, Key=f"errorbook/runs/{run_id}/labels.json"
    )
    from app.cli import cli

    checked = CliRunner().invoke(cli, ["storage", "verify"])
    get_settings.cache_clear()
    assert checked.exit_code == 1, checked.output
    assert f"run {run_id}: runs/{run_id}/labels.json missing" in checked.output
    assert f"run {continued['id']}:" not in checked.output


def test_a_store_gone_mid_job_retries_then_fails_with_the_reason_and_records_nothing(
    fresh_database: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    serving = s3_server()  # this test's own server: it is stopped mid-way
    server = serving.__enter__()
    try:
        use_bucket(server, tmp_path, monkeypatch)
        monkeypatch.setenv("ERRORBOOK_JOB_MAX_ATTEMPTS", "2")
        with colour_split(fresh_database, tmp_path / "data", monkeypatch, per_class=6) as env:
            client, engine, dataset_id, split_id = env
            train(client, engine, dataset_id, split_id, epochs=2)  # this host now has the images in its cache
            created = client.post("/api/runs", json={"dataset_id": dataset_id, "split_id": split_id, "epochs": 2})
            run_id = created.json()["run_id"]
            serving.__exit__(None, None, None)  # the store goes away
            # The job reads its cached images and features, trains, and meets the store when it checkpoints.
            (job,) = {job.id: job for job in drain_jobs(engine)}.values()
            assert job.status == "failed" and job.attempts == 2
            assert "object store" in (job.error or "") and "cannot connect" in (job.error or ""), job.error
            assert "attempt 2 of 2" in (job.error or "")
            run = client.get(f"/api/runs/{run_id}").json()
            assert run["status"] == "failed" and not run["metrics"]
            assert client.get(f"/api/runs/{run_id}/predictions").json()["total"] == 0
            assert client.get(f"/api/runs/{run_id}/files/model.pt").status_code == 404
            assert not (tmp_path / "data" / "runs").exists()
    finally:
        serving.__exit__(None, None, None)


def test_a_run_whose_worker_host_dies_resumes_on_another_host_from_the_stored_checkpoint(
    s3_env: str, server: S3Server, fresh_database: Any, tmp_path: Path
) -> None:
    import io

    import torch

    from app.storage.backends import blob_store
    from tests.jobs.conftest import WorkerProcesses, wait_until
    from tests.jobs.test_faults import EPOCHS, SHORT_LEASE, _colour_dataset, _create_run, _create_split, _finished, _job
    from tests.jobs.test_faults import _run as _stored_run

    engine = fresh_database.engine
    hosts = {name: tmp_path / name for name in ("host-a", "host-b")}
    for folder in hosts.values():
        folder.mkdir()
    host_a, host_b = (WorkerProcesses(fresh_database.url, folder) for folder in hosts.values())
    settings = Settings(data_dir=hosts["host-a"], database_url=fresh_database.url)
    dataset_id = _colour_dataset(engine, blob_store(settings))  # type: ignore[arg-type]
    store = boto3.client("s3", endpoint_url=server.endpoint_url)
    try:
        (first,) = host_a.start(1, **SHORT_LEASE)
        split_id, split_job = _create_split(engine, dataset_id, target_source=None)
        wait_until(lambda: _finished(engine, split_job), timeout=180, interval=0.1)
        run_id, job_id = _create_run(engine, dataset_id, split_id, settings)
        key = f"errorbook/jobs/{job_id}/training_state.pt"

        def between_epochs() -> bool:
            listed = store.list_objects_v2(Bucket=s3_env, Prefix=key).get("Contents", ())
            return bool(listed) and 0 < _job(engine, job_id).progress < 1

        wait_until(between_epochs, timeout=300, interval=0.02)
        host_a.kill(first)
        saved = torch.load(io.BytesIO(store.get_object(Bucket=s3_env, Key=key)["Body"].read()), weights_only=True)
        assert 1 <= saved["epochs_completed"] <= EPOCHS
        host_b.start(1)  # another host: its own data dir, nothing of host A's
        wait_until(lambda: _finished(engine, job_id), timeout=300, interval=0.2)
        resumed = _stored_run(engine, run_id)
        assert resumed.status == "succeeded", _job(engine, job_id).error
        assert [record["epoch"] for record in resumed.history] == list(range(1, EPOCHS + 1))  # no epoch twice
        finished = [{k: v for k, v in record.items() if k != "kept"} for record in resumed.history]
        assert finished[: saved["epochs_completed"]] == saved["history"]  # continued from host A's checkpoint
        assert not store.list_objects_v2(Bucket=s3_env, Prefix=key).get("Contents")  # removed once recorded
        assert store.head_object(Bucket=s3_env, Key=f"errorbook/runs/{run_id}/model.pt")["ContentLength"] > 0
    finally:
        host_a.stop_all()
        host_b.stop_all()
