"""A colour dataset with its split, served by a real app over a fresh database, for the training tests."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from app.auth import service as auth
from app.core.settings import Settings, get_settings
from app.models import Dataset, Image, Label
from app.web.app import create_app
from tests.factories import COLOURS, colour_jpeg
from tests.jobs.inline import drain_jobs


@contextmanager
def colour_split(
    fresh_database: Any, data_dir: Path, monkeypatch: pytest.MonkeyPatch, *, per_class: int
) -> Iterator[tuple[TestClient, Any, int, int]]:
    """(client with a reviewer's token, engine, dataset id, split id) over `per_class` images of each colour."""
    monkeypatch.setenv("ERRORBOOK_DATA_DIR", str(data_dir))
    monkeypatch.setenv("ERRORBOOK_DATABASE_URL", fresh_database.url)
    get_settings.cache_clear()
    app = create_app(Settings())
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
            for i in range(per_class):
                sha = app.state.blobs.put_bytes(colour_jpeg(colour, seed=hash((name, i)) % 1000))
                session.add(Image(dataset_id=dataset.id, sha256=sha, filename=f"{name}_{i}.jpg", label_id=label.id))
        session.commit()
        dataset_id = dataset.id
    try:
        with TestClient(app, headers={"authorization": f"Bearer {token}"}) as client:
            split_id = client.post(f"/api/datasets/{dataset_id}/splits", json={"seed": 0}).json()["split_id"]
            drain_jobs(engine)
            yield client, engine, dataset_id, split_id
    finally:
        get_settings.cache_clear()


def train(client: TestClient, engine: Any, dataset_id: int, split_id: int, **config: Any) -> dict[str, Any]:
    """Start a run through the API, run its job here, and return the finished run."""
    body = {"dataset_id": dataset_id, "split_id": split_id, "epochs": 15, "lr": 0.01, **config}
    created = client.post("/api/runs", json=body)
    assert created.status_code == 202, created.text
    (job,) = drain_jobs(engine)
    assert job.status == "succeeded", job.error
    result: dict[str, Any] = client.get(f"/api/runs/{created.json()['run_id']}").json()
    return result
