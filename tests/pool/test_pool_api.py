"""The pool API on SQLite and Postgres: scoring requests, rankings by strategy, labelling a pool image (versioned,
with history), and the refusals (no scores yet, stale versions, unknown strategies)."""

from __future__ import annotations

import numpy as np
from sqlalchemy import select

from app.models import Image, Job, LabelChange
from tests.factories import make_run
from tests.pool.conftest import add_pool, score


def _probs(count: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.dirichlet(np.ones(3) * 0.5, size=count).astype(np.float32)


def test_ranking_without_scores_is_409_naming_the_job_and_scoring_queues_one(db, as_reviewer) -> None:
    fixture = make_run(db)
    add_pool(db, fixture, 5)
    fixture.run.model_path = "/nowhere"  # finished: it has a model directory
    db.commit()
    refused = as_reviewer.get(f"/api/runs/{fixture.run.id}/pool", params={"strategy": "hybrid"})
    assert refused.status_code == 409
    body = refused.json()
    assert body["start"] == {"method": "POST", "url": f"/api/runs/{fixture.run.id}/pool/score"}
    assert "no pool scores" in body["detail"]

    started = as_reviewer.post(f"/api/runs/{fixture.run.id}/pool/score")
    assert started.status_code == 202, started.text
    job_id = started.json()["job_id"]
    job = db.get(Job, job_id)
    assert job is not None and job.kind == "pool.score" and job.payload == {"run_id": fixture.run.id}
    again = as_reviewer.post(f"/api/runs/{fixture.run.id}/pool/score")
    assert again.json()["job_id"] == job_id  # the waiting job is reused, not doubled
    waiting = as_reviewer.get(f"/api/runs/{fixture.run.id}/pool")
    assert waiting.status_code == 409 and waiting.json()["job_id"] == job_id
    assert f"scoring job {job_id} is queued" in waiting.json()["detail"]


def test_scoring_is_refused_for_unfinished_runs_and_empty_pools(db, as_reviewer, as_viewer) -> None:
    fixture = make_run(db)
    fixture.run.model_path = "/nowhere"
    db.commit()
    empty = as_reviewer.post(f"/api/runs/{fixture.run.id}/pool/score")
    assert empty.status_code == 409 and "no unlabeled images" in empty.json()["detail"]
    add_pool(db, fixture, 2)
    fixture.run.status = "running"
    db.commit()
    unfinished = as_reviewer.post(f"/api/runs/{fixture.run.id}/pool/score")
    assert unfinished.status_code == 409 and "only a finished run" in unfinished.json()["detail"]
    assert as_viewer.post(f"/api/runs/{fixture.run.id}/pool/score").status_code == 403
    assert as_reviewer.post("/api/runs/999999/pool/score").status_code == 404


def test_strategies_rank_the_scored_pool_with_suggestions_and_placement(db, as_viewer) -> None:
    fixture = make_run(db)
    phone = add_pool(db, fixture, 30, source="phone")
    web = add_pool(db, fixture, 10, source="web", start=30)
    images = phone + web
    probs = _probs(len(images))
    features = np.random.default_rng(1).normal(size=(len(images), 32)).astype(np.float32)
    score(db, fixture, images, probs, features)
    db.commit()

    by_uncertainty = as_viewer.get(f"/api/runs/{fixture.run.id}/pool", params={"strategy": "uncertainty", "limit": 5})
    assert by_uncertainty.status_code == 200, by_uncertainty.text
    body = by_uncertainty.json()
    assert (body["pool_size"], body["scored"], body["unscored"]) == (40, 40, 0)
    top = sorted(range(len(images)), key=lambda i: float(np.sort(probs[i])[-1] - np.sort(probs[i])[-2]))[:5]
    assert [item["image_id"] for item in body["items"]] == [images[i].id for i in top]
    assert [item["rank"] for item in body["items"]] == [1, 2, 3, 4, 5]
    first = body["items"][0]
    index = images.index(next(i for i in images if i.id == first["image_id"]))
    assert first["suggestion"] == fixture.run.label_names[int(np.argmax(probs[index]))]
    assert first["top"][0]["label"] == first["suggestion"] and len(first["top"]) == 3
    assert first["label_version"] == 1

    for strategy in ("hybrid", "diversity"):
        ranked = as_viewer.get(f"/api/runs/{fixture.run.id}/pool", params={"strategy": strategy, "limit": 12}).json()
        ids = [item["image_id"] for item in ranked["items"]]
        assert len(ids) == len(set(ids)) == 12
    placements = {
        item["source"]: item["placement"]
        for item in as_viewer.get(f"/api/runs/{fixture.run.id}/pool", params={"limit": 40}).json()["items"]
    }
    assert placements == {"phone": "train, or dev/test by the split's rule", "web": "train"}

    bad = as_viewer.get(f"/api/runs/{fixture.run.id}/pool", params={"strategy": "random"})
    assert bad.status_code == 422 and "uncertainty, diversity, hybrid" in bad.json()["detail"]
    assert as_viewer.get(f"/api/runs/{fixture.run.id}/pool", params={"limit": 0}).status_code == 422


def test_labelling_a_pool_image_is_a_versioned_change_and_it_leaves_the_pool(db, as_reviewer) -> None:
    fixture = make_run(db)
    images = add_pool(db, fixture, 4)
    score(db, fixture, images, _probs(4), np.eye(4, dtype=np.float32))
    db.commit()
    target = images[0]
    state = as_reviewer.get(f"/api/images/{target.id}/label").json()
    assert state["label"] is None and state["label_version"] == 1

    labelled = as_reviewer.post(f"/api/images/{target.id}/label", json={"label": "dog", "expected_version": 1})
    assert labelled.status_code == 200, labelled.text
    assert (labelled.json()["label"], labelled.json()["label_version"]) == ("dog", 2)
    change = db.scalars(select(LabelChange).where(LabelChange.image_id == target.id)).one()
    assert (change.kind, change.old_label_id, change.version) == ("label", None, 2)
    history = as_reviewer.get(f"/api/images/{target.id}/history").json()
    assert history[0]["kind"] == "label" and history[0]["new_label"] == "dog"

    stale = as_reviewer.post(f"/api/images/{target.id}/label", json={"label": "cat", "expected_version": 1})
    assert stale.status_code == 409 and stale.json()["label"] == "dog"
    unknown = as_reviewer.post(f"/api/images/{target.id}/label", json={"label": "zebra", "expected_version": 2})
    assert unknown.status_code == 422  # a labelled image only takes labels the dataset has

    unusable = as_reviewer.post(
        f"/api/images/{images[1].id}/exclude", json={"reason": "not usable", "expected_version": 1}
    )
    assert unusable.status_code == 200, unusable.text
    left = as_reviewer.get(f"/api/runs/{fixture.run.id}/pool", params={"limit": 10}).json()
    assert {item["image_id"] for item in left["items"]} == {images[2].id, images[3].id}
    assert (left["pool_size"], left["labelled_from_pool"]) == (2, 1)
    db.expire_all()
    assert db.get(Image, target.id).label_id == next(lb.id for lb in fixture.labels if lb.name == "dog")


def test_the_first_label_of_a_pool_image_may_be_a_new_one(db, as_reviewer) -> None:
    from app.models import Dataset

    dataset = Dataset(name="started-unlabeled")
    db.add(dataset)
    db.flush()
    image = Image(dataset_id=dataset.id, sha256="ab" * 32, filename="a.jpg", from_pool=True)
    db.add(image)
    db.commit()
    labelled = as_reviewer.post(f"/api/images/{image.id}/label", json={"label": " heron ", "expected_version": 1})
    assert labelled.status_code == 200, labelled.text
    assert labelled.json()["label"] == "heron"
    labels = as_reviewer.get(f"/api/datasets/{dataset.id}/labels").json()
    assert [label["name"] for label in labels] == ["heron"]
    # Labelled now: another new name is a typo to refuse, not a label to create.
    again = as_reviewer.post(f"/api/images/{image.id}/label", json={"label": "egret", "expected_version": 2})
    assert again.status_code == 422
    assert [label["name"] for label in as_reviewer.get(f"/api/datasets/{dataset.id}/labels").json()] == ["heron"]
