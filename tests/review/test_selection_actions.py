"""Actions on a selection of images (the map's lasso or box, a grid of neighbours) on SQLite and Postgres: exclude
and score again, add to a review campaign, tag for a run; each all or nothing. And the campaign grid's sorts."""

from __future__ import annotations

import re

import numpy as np
import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.core.limits import MAX_SELECTION
from app.models import ErrorAnnotation, ErrorAnnotationTag, Image, LabelChange, Prediction, ReviewItem
from app.review import ranking
from tests.factories import RunFixture, make_run
from tests.review.conftest import start_campaign


@pytest.fixture
def run(db: Session) -> RunFixture:
    fixture = make_run(db, sizes={"train": 10, "dev": 16, "test": 16}, error_rate=0.3, seed=21)
    db.commit()
    return fixture


def _changes(db: Session, image_ids: list[int]) -> int:
    return int(db.scalar(select(func.count()).select_from(LabelChange).where(LabelChange.image_id.in_(image_ids))) or 0)


def test_a_selection_is_excluded_and_scored_again_with_history(as_reviewer, run, db) -> None:  # type: ignore[no-untyped-def]
    chosen = [image.id for image in run.images["dev"][:5]]
    url = f"/api/datasets/{run.dataset.id}/exclusions"
    done = as_reviewer.post(url, json={"image_ids": chosen, "reason": "blurry shots"})
    assert done.status_code == 200, done.text
    assert done.json() == {"changed": 5, "unchanged": 0}
    db.expire_all()
    assert {db.get(Image, i).excluded_reason for i in chosen} == {"blurry shots"}  # type: ignore[union-attr]
    again = as_reviewer.post(url, json={"image_ids": [*chosen, run.images["dev"][5].id], "excluded": False})
    assert again.json() == {"changed": 5, "unchanged": 1}  # the sixth was scored all along
    db.expire_all()
    assert all(db.get(Image, i).excluded_reason is None for i in chosen)  # type: ignore[union-attr]
    history = as_reviewer.get(f"/api/images/{chosen[0]}/history").json()
    assert [row["kind"] for row in history][-2:] == ["ambiguous", "revert"]  # scoring again takes the change back


def test_a_selection_with_a_foreign_image_changes_nothing(as_reviewer, run, db) -> None:  # type: ignore[no-untyped-def]
    other = make_run(db, sizes={"train": 2, "dev": 2}, seed=22)
    db.commit()
    chosen = [run.images["dev"][0].id, other.images["dev"][0].id]
    before = _changes(db, chosen)
    url = f"/api/datasets/{run.dataset.id}/exclusions"
    refused = as_reviewer.post(url, json={"image_ids": chosen, "reason": "x"})
    assert refused.status_code == 404 and str(other.images["dev"][0].id) in refused.json()["detail"]
    assert _changes(db, chosen) == before
    db.expire_all()
    assert db.get(Image, chosen[0]).excluded_reason is None  # type: ignore[union-attr]
    assert as_reviewer.post(url, json={"image_ids": chosen[:1], "reason": "  "}).status_code == 422  # say why
    assert as_reviewer.post(url, json={"image_ids": []}).status_code == 422
    too_many = as_reviewer.post(url, json={"image_ids": list(range(1, MAX_SELECTION + 2)), "reason": "x"})
    assert too_many.status_code == 422
    assert (
        as_reviewer.post("/api/datasets/999999/exclusions", json={"image_ids": [1], "reason": "x"}).status_code == 404
    )


def test_viewers_cannot_act_on_a_selection(as_viewer, run) -> None:  # type: ignore[no-untyped-def]
    body = {"image_ids": [run.images["dev"][0].id], "reason": "x"}
    assert as_viewer.post(f"/api/datasets/{run.dataset.id}/exclusions", json=body).status_code == 403


def test_picked_images_join_a_campaign_ahead_of_its_ranked_items(as_reviewer, run, db) -> None:  # type: ignore[no-untyped-def]
    review_id = start_campaign(as_reviewer, run)
    present = set(db.scalars(select(ReviewItem.image_id).where(ReviewItem.review_id == review_id)))
    fresh = [image.id for image in run.images["dev"] + run.images["test"] if image.id not in present][:3]
    already = next(iter(present))
    added = as_reviewer.post(f"/api/reviews/{review_id}/items", json={"image_ids": [*fresh, already]})
    assert added.status_code == 200, added.text
    assert added.json() == {"added": 3, "already": 1}
    items = as_reviewer.get(f"/api/reviews/{review_id}").json()["items"]
    assert [item["image_id"] for item in items[: len(fresh)]] == fresh  # picked ones first, in the order given
    picked = {item["image_id"]: item for item in items if item["selection"] == "picked"}
    assert set(picked) == set(fresh)
    image = db.get(Image, fresh[0])
    prediction = db.get(Prediction, (run.run.id, fresh[0]))
    assert image is not None and prediction is not None
    column = [label.id for label in run.labels].index(image.label_id)
    own = float(np.frombuffer(prediction.probs, dtype=np.float32)[column])
    assert picked[fresh[0]]["suspicion"] == pytest.approx(1 - own, abs=1e-5)
    honesty = as_reviewer.get(f"/api/reviews/{review_id}/honesty").json()
    assert honesty["precision"][-1]["reviewed"] == 0  # picked items are not the ranking's flags


def test_a_campaign_refuses_images_its_run_did_not_score_in_its_subsets(as_reviewer, run, db) -> None:  # type: ignore[no-untyped-def]
    review_id = start_campaign(as_reviewer, run)
    count = db.scalar(select(func.count()).select_from(ReviewItem).where(ReviewItem.review_id == review_id))
    train = run.images["train"][0].id  # predicted, but this campaign reviews dev and test only
    dev = next(
        i.id
        for i in run.images["dev"]
        if db.scalar(select(ReviewItem.id).where(ReviewItem.review_id == review_id, ReviewItem.image_id == i.id))
        is None
    )
    refused = as_reviewer.post(f"/api/reviews/{review_id}/items", json={"image_ids": [dev, train]})
    assert refused.status_code == 422 and str(train) in refused.json()["detail"]
    assert db.scalar(select(func.count()).select_from(ReviewItem).where(ReviewItem.review_id == review_id)) == count
    assert as_reviewer.post("/api/reviews/999999/items", json={"image_ids": [dev]}).status_code == 404
    as_reviewer.patch(f"/api/reviews/{review_id}", json={"status": "closed"})
    assert as_reviewer.post(f"/api/reviews/{review_id}/items", json={"image_ids": [dev]}).status_code == 409


def test_a_selection_is_tagged_in_a_run_all_or_nothing(as_reviewer, run, db) -> None:  # type: ignore[no-untyped-def]
    tags = as_reviewer.get(f"/api/datasets/{run.dataset.id}/tags").json()
    tag_id = tags[0]["id"]
    chosen = [image.id for image in run.images["dev"][:4]]
    url = f"/api/runs/{run.run.id}/tags/{tag_id}/images"
    first = as_reviewer.post(url, json={"image_ids": chosen[:2]})
    assert first.status_code == 200, first.text
    assert first.json() == {"tagged": 2, "already": 0}
    assert as_reviewer.post(url, json={"image_ids": chosen}).json() == {"tagged": 2, "already": 2}
    tagged = db.scalars(
        select(ErrorAnnotation.image_id)
        .join(ErrorAnnotationTag, ErrorAnnotationTag.annotation_id == ErrorAnnotation.id)
        .where(ErrorAnnotation.run_id == run.run.id, ErrorAnnotationTag.tag_id == tag_id)
    )
    assert sorted(tagged) == sorted(chosen)
    other = make_run(db, sizes={"train": 2, "dev": 2}, seed=23)
    db.commit()
    unpredicted = other.images["dev"][0].id
    refused = as_reviewer.post(url, json={"image_ids": [run.images["dev"][5].id, unpredicted]})
    assert refused.status_code == 422 and str(unpredicted) in refused.json()["detail"]
    assert (
        db.scalar(
            select(func.count()).select_from(ErrorAnnotation).where(ErrorAnnotation.image_id == run.images["dev"][5].id)
        )
        == 0
    )
    foreign_tag = as_reviewer.get(f"/api/datasets/{other.dataset.id}/tags").json()[0]["id"]
    foreign = as_reviewer.post(f"/api/runs/{run.run.id}/tags/{foreign_tag}/images", json={"image_ids": chosen})
    assert foreign.status_code == 404  # another dataset's category


def _grid_ids(html: str) -> list[int]:
    return [int(found) for found in re.findall(r'id="item-(\d+)"', html)]


def test_the_campaign_grid_sorts_by_a_runs_loss_confidence_and_suspicion(as_reviewer, run, db, settings) -> None:  # type: ignore[no-untyped-def]
    review_id = start_campaign(as_reviewer, run)
    campaign = _grid_ids(as_reviewer.get(f"/reviews/{review_id}", params={"view": "all"}).text)
    for by in ("loss", "confidence", "suspicion"):
        page = as_reviewer.get(f"/reviews/{review_id}", params={"view": "all", "sort": by})
        assert page.status_code == 200, page.text
        ranked = ranking.rank_run_images(
            db, dataset_id=run.dataset.id, run_id=run.run.id, by=by, root=settings.embeddings_dir
        )
        expected = [image_id for image_id in ranked.image_ids if image_id in campaign]
        assert _grid_ids(page.text) == expected, by
        assert sorted(_grid_ids(page.text)) == sorted(campaign)  # the same items, in another order
        assert f'<option value="{by}" selected>' in page.text and "data-score" in page.text
    assert as_reviewer.get(f"/reviews/{review_id}", params={"sort": "nonsense"}).status_code == 422
    other = make_run(db, sizes={"train": 2, "dev": 2}, seed=24)
    db.commit()
    assert as_reviewer.get(f"/reviews/{review_id}", params={"sort": "loss", "run_id": other.run.id}).status_code == 404


def test_scoring_again_reopens_the_campaign_item_the_image_was_excluded_in(as_reviewer, run) -> None:  # type: ignore[no-untyped-def]
    review_id = start_campaign(as_reviewer, run)
    item = as_reviewer.get(f"/api/reviews/{review_id}").json()["items"][0]
    excluded = as_reviewer.post(
        f"/api/images/{item['image_id']}/exclude",
        json={"reason": "cannot tell", "expected_version": item["label_version"], "review_id": review_id},
    )
    assert excluded.status_code == 200 and excluded.json()["review_status"] == "ambiguous"
    url = f"/api/datasets/{run.dataset.id}/exclusions"
    assert as_reviewer.post(url, json={"image_ids": [item["image_id"]], "excluded": False}).json()["changed"] == 1
    after = next(
        i for i in as_reviewer.get(f"/api/reviews/{review_id}").json()["items"] if i["image_id"] == item["image_id"]
    )
    assert after["status"] == "pending" and after["excluded_reason"] is None  # to be decided again in the campaign
