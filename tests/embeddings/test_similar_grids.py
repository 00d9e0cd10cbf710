"""Similar images beyond the image page: the strip in the error grid's and review grid's large views, and "find
more like this" as the dataset grid of an image's neighbours (similar_to)."""

from __future__ import annotations

import re

import numpy as np
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from app.core.settings import Settings
from app.embeddings.store import EmbeddingStore
from app.models import EmbeddingSet
from tests.factories import RunFixture, make_run
from tests.review.conftest import start_campaign


def _embedded(db: Session, settings: Settings) -> RunFixture:
    fixture = make_run(db, sizes={"train": 20, "dev": 10, "test": 10}, seed=11)
    ids = sorted(image.id for images in fixture.images.values() for image in images)
    vectors = np.random.default_rng(0).normal(size=(len(ids), 8))
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    EmbeddingStore(settings.embeddings_dir, dataset_id=fixture.dataset.id, backbone="efficientnet_lite0").append(
        ids, vectors
    )
    db.add(EmbeddingSet(dataset_id=fixture.dataset.id, backbone="efficientnet_lite0", status="ready", count=len(ids)))
    db.commit()
    return fixture


def test_find_more_like_this_is_the_grid_of_neighbours(db: Session, settings: Settings, as_viewer: TestClient) -> None:
    fixture = _embedded(db, settings)
    dataset_id = fixture.dataset.id
    image_id = fixture.images["dev"][0].id
    strip = as_viewer.get(f"/images/{image_id}/similar", params={"k": 5}).text
    assert f'href="/datasets/{dataset_id}?similar_to={image_id}"' in strip and "data-more-like-this" in strip
    neighbours = [
        item["image_id"] for item in as_viewer.get(f"/api/images/{image_id}/similar", params={"k": 59}).json()["items"]
    ]
    grid = as_viewer.get(f"/api/datasets/{dataset_id}/images", params={"similar_to": image_id, "limit": 100}).json()
    assert [item["id"] for item in grid["items"]] == [image_id, *neighbours]  # itself, then most similar first
    assert grid["total"] == 40
    # Other filters narrow the neighbourhood and keep its order.
    dev = as_viewer.get(
        f"/api/datasets/{dataset_id}/images", params={"similar_to": image_id, "subset": "dev", "limit": 100}
    ).json()
    dev_ids = {image.id for image in fixture.images["dev"]}
    assert [item["id"] for item in dev["items"]] == [i for i in [image_id, *neighbours] if i in dev_ids]
    page = as_viewer.get(f"/datasets/{dataset_id}", params={"similar_to": image_id})
    assert page.status_code == 200 and f'data-similar-to="{image_id}"' in page.text
    shown = [int(part.split('"')[0]) for part in page.text.split('class="thumb" href="/images/')[1:]]
    assert shown[:5] == [image_id, *neighbours[:4]]


def test_find_more_like_this_bad_input(db: Session, settings: Settings, as_viewer: TestClient) -> None:
    fixture = _embedded(db, settings)
    bare = make_run(db, sizes={"train": 3}, seed=12)
    db.commit()
    image_id = fixture.images["train"][0].id
    elsewhere = as_viewer.get(f"/api/datasets/{bare.dataset.id}/images", params={"similar_to": image_id})
    assert elsewhere.status_code == 404  # an image of another dataset
    unknown = as_viewer.get(f"/api/datasets/{fixture.dataset.id}/images", params={"similar_to": 99_999_999})
    assert unknown.status_code == 404
    own = bare.images["train"][0].id
    missing = as_viewer.get(f"/api/datasets/{bare.dataset.id}/images", params={"similar_to": own})
    assert missing.status_code == 409 and missing.json()["error"] == "embeddings_missing"


def test_the_strip_is_in_the_error_and_review_large_views(
    db: Session, settings: Settings, as_reviewer: TestClient
) -> None:
    fixture = _embedded(db, settings)
    wrong = next(image for image in fixture.images["dev"] if fixture.predicted[image.id] != image.label_id)
    detail = as_reviewer.get(f"/runs/{fixture.run.id}/errors/{wrong.id}")
    assert detail.status_code == 200, detail.text
    assert f'hx-get="/images/{wrong.id}/similar?k=8"' in detail.text
    review_id = start_campaign(as_reviewer, fixture)
    item = as_reviewer.get(f"/api/reviews/{review_id}").json()["items"][0]
    review_detail = as_reviewer.get(f"/reviews/{review_id}/items/{item['image_id']}").text
    assert f'hx-get="/images/{item["image_id"]}/similar?k=8"' in review_detail
    strip = as_reviewer.get(f"/images/{item['image_id']}/similar", params={"k": 8}).text
    assert strip.count('class="thumb"') == 8


def _ticked(html: str) -> list[int]:
    return [int(found) for found in re.findall(r'data-pick value="(\d+)"[^>]*checked', html)]


def test_the_grid_of_neighbours_offers_the_selection_actions_on_what_it_shows(
    db: Session, settings: Settings, as_reviewer: TestClient, as_viewer: TestClient
) -> None:
    fixture = _embedded(db, settings)
    dataset_id, image_id = fixture.dataset.id, fixture.images["dev"][0].id
    review_id = start_campaign(as_reviewer, fixture)
    page = as_reviewer.get(f"/datasets/{dataset_id}", params={"similar_to": image_id})
    assert page.status_code == 200, page.text
    shown = [int(part.split('"')[0]) for part in page.text.split('class="thumb" href="/images/')[1:]]
    assert _ticked(page.text) == shown  # every neighbour shown starts ticked, nothing else
    for action in ("data-selection-exclude", "data-selection-include", "data-selection-campaign", "data-selection-tag"):
        assert action in page.text
    assert f'<option value="{review_id}">review {review_id} (run {fixture.run.id})</option>' in page.text
    assert 'data-selection-run="[data-grid-run]"' in page.text and "/static/js/selection.js" in page.text
    # The grid alone (htmx swaps it when a filter changes) keeps its tick boxes and actions.
    swapped = as_reviewer.get(
        f"/datasets/{dataset_id}",
        params={"similar_to": image_id, "subset": "dev"},
        headers={"hx-request": "true", "hx-target": "image-grid"},
    )
    assert "<html" not in swapped.text and "data-selection-actions" in swapped.text
    assert _ticked(swapped.text) and set(_ticked(swapped.text)) <= {image.id for image in fixture.images["dev"]}
    # The plain grid: tick boxes, none ticked; a viewer gets neither boxes nor actions.
    plain = as_reviewer.get(f"/datasets/{dataset_id}").text
    assert "data-pick" in plain and _ticked(plain) == []
    viewer = as_viewer.get(f"/datasets/{dataset_id}", params={"similar_to": image_id}).text
    assert "data-pick" not in viewer and "data-selection-actions" not in viewer
    # Without an open campaign the form says where to start one.
    as_reviewer.patch(f"/api/reviews/{review_id}", json={"status": "closed"})
    closed = as_reviewer.get(f"/datasets/{dataset_id}", params={"similar_to": image_id}).text
    assert "data-selection-no-campaign" in closed and "data-selection-campaign" not in closed
