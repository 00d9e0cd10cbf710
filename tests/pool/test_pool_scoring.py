"""The pool scoring job end to end: a real linear run on the colour set, unlabeled colour images uploaded to the
pool, the job through the runner's code path, then the ranking: the run's suggestions are the true colours."""

from __future__ import annotations

import numpy as np
import pytest
from sqlalchemy.orm import Session

from app.models import Image
from tests.factories import COLOURS, colour_jpeg
from tests.jobs.inline import drain_jobs
from tests.training.conftest import colour_split, train

pytestmark = pytest.mark.slow


def test_a_finished_run_scores_the_pool_as_it_scored_dev(fresh_database, tmp_path, monkeypatch) -> None:
    with colour_split(fresh_database, tmp_path / "data", monkeypatch, per_class=12) as (client, engine, ds, split):
        run = train(client, engine, ds, split, epochs=8)
        truth: dict[int, str] = {}
        with Session(engine) as session:
            for name, colour in COLOURS.items():
                for i in range(3):
                    sha = client.app.state.blobs.put_bytes(colour_jpeg(colour, seed=5000 + i))
                    image = Image(dataset_id=ds, sha256=sha, filename=f"pool-{name}-{i}.jpg", from_pool=True)
                    session.add(image)
                    session.flush()
                    truth[image.id] = name
            session.commit()
        refused = client.get(f"/api/runs/{run['id']}/pool")
        assert refused.status_code == 409 and refused.json()["start"]["url"].endswith("/pool/score")

        started = client.post(f"/api/runs/{run['id']}/pool/score")
        assert started.status_code == 202, started.text
        (job,) = drain_jobs(engine)
        assert job.status == "succeeded", job.error
        assert job.result["scored"] == 9

        ranked = client.get(f"/api/runs/{run['id']}/pool", params={"strategy": "hybrid", "limit": 9}).json()
        assert (ranked["pool_size"], ranked["scored"], ranked["unscored"]) == (9, 9, 0)
        suggested = {item["image_id"]: item["suggestion"] for item in ranked["items"]}
        assert suggested == truth
        for item in ranked["items"]:
            assert abs(sum(t["probability"] for t in item["top"]) - 1) < 1e-3
        # The same bytes through the predict endpoint (the run's model.onnx) give the same probabilities.
        first = ranked["items"][0]
        with Session(engine) as session:
            image = session.get(Image, first["image_id"])
            assert image is not None
            content = client.app.state.blobs.path(image.sha256).read_bytes()
        predicted = client.post(f"/api/runs/{run['id']}/predict", files=[("files", ("a.jpg", content, "image/jpeg"))])
        assert predicted.status_code == 200, predicted.text
        top = {t["label"]: t["probability"] for t in predicted.json()["items"][0]["top"]}
        for t in first["top"]:
            assert abs(top[t["label"]] - t["probability"]) < 2e-3
        assert np.isfinite(first["score"])
