"""Training runs end to end through the API and the job code path, on a small learnable generated set."""

from __future__ import annotations

import pytest
import torch
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from app.auth import service as auth
from app.core.settings import Settings, get_settings
from app.models import Dataset, Image, Label
from app.web.app import create_app
from tests.factories import COLOURS, colour_jpeg
from tests.jobs.inline import drain_jobs

pytestmark = pytest.mark.slow


@pytest.fixture
def trained(fresh_database, tmp_path, monkeypatch):  # type: ignore[no-untyped-def]
    monkeypatch.setenv("ERRORBOOK_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("ERRORBOOK_DATABASE_URL", fresh_database.url)
    get_settings.cache_clear()
    settings = Settings()
    app = create_app(settings)
    engine = fresh_database.engine
    with Session(engine) as session:
        user = auth.create_user(session, name="trainer", role="reviewer")
        _, token = auth.create_token(session, user=user, name="t")
        dataset = Dataset(name="colours")
        session.add(dataset)
        session.flush()
        for name, colour in COLOURS.items():
            label = Label(dataset_id=dataset.id, name=name)
            session.add(label)
            session.flush()
            for i in range(20):
                sha = app.state.blobs.put_bytes(colour_jpeg(colour, seed=hash((name, i)) % 1000))
                session.add(Image(dataset_id=dataset.id, sha256=sha, filename=f"{name}_{i}.jpg", label_id=label.id))
        session.commit()
        dataset_id = dataset.id
    with TestClient(app, headers={"authorization": f"Bearer {token}"}) as client:
        split_id = client.post(f"/api/datasets/{dataset_id}/splits", json={"seed": 0}).json()["split_id"]
        drain_jobs(engine)
        yield client, engine, dataset_id, split_id
    get_settings.cache_clear()


def _train(client, engine, dataset_id: int, split_id: int, **config):  # type: ignore[no-untyped-def]
    body = {"dataset_id": dataset_id, "split_id": split_id, "epochs": 15, "lr": 0.01, **config}
    created = client.post("/api/runs", json=body)
    assert created.status_code == 202, created.text
    (job,) = drain_jobs(engine)
    assert job.status == "succeeded", job.error
    return client.get(f"/api/runs/{created.json()['run_id']}").json()


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
