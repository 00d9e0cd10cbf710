"""A run's out-of-sample images ranked for the grids (fused suspicion, suspicion, loss, confidence), both databases."""

from __future__ import annotations

import re

import numpy as np
import pytest
from sqlalchemy.orm import Session

from app.core.errors import Conflict, Invalid, NotFound
from app.core.settings import Settings
from app.embeddings.store import EmbeddingStore, NeighbourStore
from app.ml.similarity import unit_rows
from app.models import EmbeddingSet, Image, Prediction
from app.review import ranking
from tests.factories import make_run


def _embedded(db: Session, settings: Settings, *, neighbours: bool = True):  # type: ignore[no-untyped-def]
    """A run whose images sit in embedding space by their label, so each image's neighbours carry its label."""
    fixture = make_run(db, sizes={"train": 30, "dev": 20, "test": 10}, error_rate=0.2, seed=11)
    images = [image for subset in ("train", "dev", "test") for image in fixture.images[subset]]
    index = {label.id: place for place, label in enumerate(fixture.labels)}
    rng = np.random.default_rng(0)
    vectors = unit_rows(np.eye(3)[[index[i.label_id] for i in images]] * 3 + 0.3 * rng.standard_normal((60, 3)))
    store = EmbeddingStore(settings.embeddings_dir, dataset_id=fixture.dataset.id, backbone="efficientnet_lite0")
    store.append([image.id for image in images], vectors)
    db.add(EmbeddingSet(dataset_id=fixture.dataset.id, backbone="efficientnet_lite0", status="ready", count=60))
    if neighbours:
        NeighbourStore(store).refresh()
    db.commit()
    return fixture


def _own_probability(db: Session, fixture, image_id: int) -> float:  # type: ignore[no-untyped-def]
    prediction = db.get(Prediction, (fixture.run.id, image_id))
    image = db.get(Image, image_id)
    assert prediction is not None and image is not None
    column = [label.id for label in fixture.labels].index(image.label_id)
    return float(np.frombuffer(prediction.probs, dtype=np.float32)[column])


def test_loss_suspicion_and_confidence_orders(db, settings) -> None:  # type: ignore[no-untyped-def]
    fixture = _embedded(db, settings)
    held_out = [image.id for image in fixture.images["dev"] + fixture.images["test"]]
    root = settings.embeddings_dir
    loss = ranking.rank_run_images(db, dataset_id=fixture.dataset.id, run_id=fixture.run.id, by="loss", root=root)
    assert sorted(loss.image_ids) == sorted(held_out)  # train is in-sample: left out
    expected = sorted(held_out, key=lambda i: (-round(-np.log(_own_probability(db, fixture, i)), 6), i))
    assert loss.image_ids == expected
    assert loss.scores[expected[0]] == pytest.approx(-np.log(_own_probability(db, fixture, expected[0])), abs=1e-3)
    suspicion = ranking.rank_run_images(
        db, dataset_id=fixture.dataset.id, run_id=fixture.run.id, by="suspicion", root=root
    )
    assert suspicion.image_ids == loss.image_ids  # both fall as p[label] rises
    confidence = ranking.rank_run_images(
        db, dataset_id=fixture.dataset.id, run_id=fixture.run.id, by="confidence", root=root
    )
    values = [confidence.scores[i] for i in confidence.image_ids]
    assert values == sorted(values) and len(values) == len(held_out)  # least confident first


def test_fused_ranks_first_the_image_whose_neighbours_disagree(db, settings) -> None:  # type: ignore[no-untyped-def]
    fixture = _embedded(db, settings)
    by_model = ranking.rank_run_images(
        db, dataset_id=fixture.dataset.id, run_id=fixture.run.id, by="suspicion", root=settings.embeddings_dir
    )
    # The model's least suspicious held-out image: relabelled wrongly now (after the run), its neighbours object.
    target = db.get(Image, by_model.image_ids[-1])
    assert target is not None
    others = [label for label in fixture.labels if label.id != target.label_id]
    target.label_id = others[0].id
    db.commit()
    fused = ranking.rank_run_images(
        db, dataset_id=fixture.dataset.id, run_id=fixture.run.id, by="fused", root=settings.embeddings_dir
    )
    assert fused.image_ids[0] == target.id
    assert min(fused.scores.values()) >= 0.0 and max(fused.scores.values()) <= 1.0
    # The vote lowers the score of images whose neighbours agree, below the model's doubt alone.
    agreeing = [i for i in fused.image_ids if i != target.id]
    doubt = {i: 1 - _own_probability(db, fixture, i) for i in agreeing}
    assert sum(fused.scores[i] < doubt[i] for i in agreeing) > 0.8 * len(agreeing)


def test_bad_rankings_are_refused(db, settings) -> None:  # type: ignore[no-untyped-def]
    fixture = _embedded(db, settings, neighbours=False)
    other = make_run(db, sizes={"dev": 2}, seed=12)
    db.commit()
    root = settings.embeddings_dir
    with pytest.raises(Invalid, match="sort by one of"):
        ranking.rank_run_images(db, dataset_id=fixture.dataset.id, run_id=fixture.run.id, by="size", root=root)
    with pytest.raises(NotFound):
        ranking.rank_run_images(db, dataset_id=fixture.dataset.id, run_id=other.run.id, by="loss", root=root)
    with pytest.raises(Conflict, match="no neighbours yet"):
        ranking.rank_run_images(db, dataset_id=fixture.dataset.id, run_id=fixture.run.id, by="fused", root=root)


def test_the_dataset_grid_and_api_sort_by_a_run(db, settings, as_viewer) -> None:  # type: ignore[no-untyped-def]
    fixture = _embedded(db, settings)
    expected = ranking.rank_run_images(
        db, dataset_id=fixture.dataset.id, run_id=fixture.run.id, by="fused", root=settings.embeddings_dir
    )
    api = as_viewer.get(
        f"/api/datasets/{fixture.dataset.id}/images", params={"sort": "fused", "run_id": fixture.run.id, "limit": 5}
    )
    assert api.status_code == 200, api.text
    assert [item["id"] for item in api.json()["items"]] == expected.image_ids[:5]
    assert api.json()["total"] == len(expected.image_ids)
    page = as_viewer.get(f"/datasets/{fixture.dataset.id}", params={"sort": "loss", "run_id": fixture.run.id})
    assert page.status_code == 200 and "data-score" in page.text and "data-grid-sort" in page.text
    loss = ranking.rank_run_images(
        db, dataset_id=fixture.dataset.id, run_id=fixture.run.id, by="loss", root=settings.embeddings_dir
    )
    shown = [int(i) for i in re.findall(r'class="thumb" href="/images/(\d+)"', page.text)]
    assert shown == loss.image_ids[: len(shown)] and shown
    bad = as_viewer.get(f"/api/datasets/{fixture.dataset.id}/images", params={"sort": "loss"})
    assert bad.status_code == 422 and "run_id" in bad.json()["detail"]
    assert (
        as_viewer.get(
            f"/api/datasets/{fixture.dataset.id}/images", params={"sort": "nope", "run_id": fixture.run.id}
        ).status_code
        == 422
    )


def test_the_run_review_page_links_to_the_grid_sorted_each_way(db, settings, as_viewer) -> None:  # type: ignore[no-untyped-def]
    fixture = make_run(db, sizes={"train": 4, "dev": 4, "test": 4}, seed=13)
    db.commit()
    page = as_viewer.get(f"/runs/{fixture.run.id}/review")
    assert page.status_code == 200 and "data-sorted-grids" in page.text
    for name in ranking.RANKINGS:
        assert f"/datasets/{fixture.dataset.id}?run_id={fixture.run.id}&amp;sort={name}" in page.text
