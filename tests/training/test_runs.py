"""Training runs end to end through the API and the job code path, on a small learnable generated set."""

from __future__ import annotations

import pytest
import torch

from app.core.settings import get_settings
from tests.factories import COLOURS
from tests.jobs.inline import drain_jobs
from tests.training.conftest import colour_split, train

pytestmark = pytest.mark.slow


@pytest.fixture
def trained(fresh_database, tmp_path, monkeypatch):  # type: ignore[no-untyped-def]
    with colour_split(fresh_database, tmp_path / "data", monkeypatch, per_class=20) as env:
        yield env


_train = train


def test_linear_run_learns_caches_features_and_transfers(trained) -> None:
    client, engine, dataset_id, split_id = trained
    first = _train(client, engine, dataset_id, split_id)
    assert first["status"] == "succeeded"
    assert first["metrics"]["dev"]["accuracy"] >= 0.8  # chance is 1/3
    assert set(first["metrics"]) == {"train", "dev", "test"}
    assert first["timings"]["extracted_train"] > 0
    assert first["timings"]["device"] == ("cuda" if torch.cuda.is_available() else "cpu")
    assert first["confusion"]["labels"] == ["blue", "green", "red"]
    assert len(first["history"]) >= 1 and {"epoch", "train_loss", "dev_loss"} <= set(first["history"][0])
    assert first["diagnosis"]["advice"]

    predictions = client.get(f"/api/runs/{first['id']}/predictions", params={"subset": "dev"}).json()
    assert predictions["total"] == first["metrics"]["dev"]["count"]
    item = predictions["items"][0]
    assert abs(sum(item["probs"]) - 1) < 1e-3 and item["label"] in COLOURS

    second = _train(client, engine, dataset_id, split_id, lr=0.003)
    assert second["timings"]["extracted_train"] == 0  # every feature came from the cache
    assert second["timings"]["extracted_dev"] == 0

    third = _train(client, engine, dataset_id, split_id, backbone=f"run:{first['id']}")
    assert third["metrics"]["dev"]["accuracy"] >= 0.8
    model = client.get(f"/api/runs/{first['id']}/files/model.pt")
    assert model.status_code == 200 and len(model.content) > 1_000_000
    assert client.post(f"/api/runs/{first['id']}/baseline").json()["is_baseline"] is True


def test_a_worker_set_to_bfloat16_extracts_in_it_and_keeps_those_features_apart(trained, monkeypatch) -> None:
    client, engine, dataset_id, split_id = trained
    exact = _train(client, engine, dataset_id, split_id)
    monkeypatch.setenv("ERRORBOOK_FEATURE_PRECISION", "bfloat16")
    get_settings.cache_clear()  # the inline job runner reads its settings from the environment
    reduced = _train(client, engine, dataset_id, split_id)
    assert (exact["timings"]["feature_precision"], reduced["timings"]["feature_precision"]) == ("float32", "bfloat16")
    assert reduced["timings"]["extracted_train"] > 0  # the float32 features were not reused
    assert reduced["metrics"]["dev"]["accuracy"] >= 0.8


def test_unknown_backbones_and_unfinished_runs_are_refused(trained) -> None:
    client, _engine, dataset_id, split_id = trained
    body = {"dataset_id": dataset_id, "split_id": split_id}
    unknown = client.post("/api/runs", json={**body, "backbone": "vgg_from_the_internet"})
    assert unknown.status_code == 422 and "unknown backbone" in unknown.json()["detail"]
    queued = client.post("/api/runs", json=body).json()
    refused = client.post("/api/runs", json={**body, "backbone": f"run:{queued['run_id']}"})
    assert refused.status_code == 422 and "no trained model" in refused.json()["detail"]


def test_missing_torchvision_weights_fail_the_run_with_the_file_to_place(trained, tmp_path, monkeypatch) -> None:
    client, engine, dataset_id, split_id = trained
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty-torch-home"))
    created = client.post(
        "/api/runs", json={"dataset_id": dataset_id, "split_id": split_id, "backbone": "torchvision:resnet18"}
    ).json()
    (job,) = drain_jobs(engine)
    assert job.status == "failed"
    assert "resnet18" in (job.error or "") and "hub/checkpoints" in (job.error or "")
    assert client.get(f"/api/runs/{created['run_id']}").json()["status"] == "failed"
