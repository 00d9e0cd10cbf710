"""The embedding map's API and page on both databases: stored coordinates, colours, and the 409 before a map."""

from __future__ import annotations

import numpy as np
from sqlalchemy.orm import Session

from app.core.settings import Settings
from app.embeddings.store import EmbeddingStore, MapStore
from app.models import EmbeddingSet, HealthScan, ImageIssue
from tests.factories import make_run


def _with_map(db: Session, settings: Settings, *, mapped: bool = True):  # type: ignore[no-untyped-def]
    fixture = make_run(db, sizes={"train": 6, "dev": 5, "test": 4}, seed=5)
    images = [image for subset in ("train", "dev", "test") for image in fixture.images[subset]]
    ids = np.array([image.id for image in images])
    store = EmbeddingStore(settings.embeddings_dir, dataset_id=fixture.dataset.id, backbone="efficientnet_lite0")
    store.append(ids, np.eye(len(ids), 16, dtype=np.float32))
    db.add(EmbeddingSet(dataset_id=fixture.dataset.id, backbone="efficientnet_lite0", status="ready", count=len(ids)))
    if mapped:
        MapStore(store).write(ids, np.linspace(0, 1, 2 * len(ids)).reshape(-1, 2))
    db.commit()
    return fixture, images


def test_map_points_carry_stored_coordinates_and_labels(db, settings, as_viewer) -> None:  # type: ignore[no-untyped-def]
    fixture, images = _with_map(db, settings)
    response = as_viewer.get(f"/api/datasets/{fixture.dataset.id}/map")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["backbone"] == "efficientnet_lite0" and body["stale"] is False and body["count"] == len(images)
    names = {label.id: label.name for label in fixture.labels}
    expected_xy = np.linspace(0, 1, 2 * len(images)).reshape(-1, 2)
    assert [p["image_id"] for p in body["points"]] == [image.id for image in images]
    assert set(body["points"][0]) == {"image_id", "x", "y"}
    labels = as_viewer.get(f"/api/datasets/{fixture.dataset.id}/map/colours", params={"by": "label"}).json()
    assert labels["values"] == {str(image.id): names[image.label_id] for image in images}
    assert np.allclose([[p["x"], p["y"]] for p in body["points"]], expected_xy, atol=1e-4)
    named = as_viewer.get(f"/api/datasets/{fixture.dataset.id}/map", params={"backbone": "efficientnet_lite0"})
    assert named.json()["points"] == body["points"]

    page = as_viewer.get(f"/datasets/{fixture.dataset.id}/map")
    assert page.status_code == 200 and "data-map-canvas" in page.text and "/static/js/map.js" in page.text
    assert f'<option value="{fixture.run.id}">run {fixture.run.id}</option>' in page.text


def test_map_colours_by_subset_right_wrong_and_suspicion(db, settings, as_viewer) -> None:  # type: ignore[no-untyped-def]
    fixture, images = _with_map(db, settings)
    url = f"/api/datasets/{fixture.dataset.id}/map/colours"
    subsets = as_viewer.get(url, params={"by": "subset", "split_id": fixture.split.id}).json()
    assert subsets["source"] == "split v1"
    assert subsets["values"] == {str(i.id): s for s in ("train", "dev", "test") for i in fixture.images[s]}
    assert as_viewer.get(url, params={"by": "subset"}).json()["values"] == subsets["values"]  # newest ready split

    correct = as_viewer.get(url, params={"by": "correct", "run_id": fixture.run.id}).json()["values"]
    wrong = {str(image.id) for image in images if fixture.predicted[image.id] != image.label_id}
    assert {k for k, v in correct.items() if v == "wrong"} == wrong and len(correct) == len(images)

    suspicion = as_viewer.get(url, params={"by": "suspicion", "run_id": fixture.run.id}).json()["values"]
    held_out = fixture.images["dev"] + fixture.images["test"]
    assert set(suspicion) == {str(image.id) for image in held_out}  # train is in-sample: not scored
    assert all(0.0 <= value <= 1.0 for value in suspicion.values())
    mean_wrong = np.mean([suspicion[str(i.id)] for i in held_out if str(i.id) in wrong])
    mean_right = np.mean([suspicion[str(i.id)] for i in held_out if str(i.id) not in wrong])
    assert mean_wrong > mean_right

    labels = as_viewer.get(url).json()
    assert labels["by"] == "label" and len(labels["values"]) == len(images)
    # A new map file is read again, not served from the formatted copy of the old one.
    store = EmbeddingStore(settings.embeddings_dir, dataset_id=fixture.dataset.id, backbone="efficientnet_lite0")
    MapStore(store).write([images[0].id], [[0.25, 0.75]])
    moved = as_viewer.get(f"/api/datasets/{fixture.dataset.id}/map").json()
    assert moved["points"] == [{"image_id": images[0].id, "x": 0.25, "y": 0.75}] and moved["stale"] is True


def test_map_bad_input_and_the_job_to_start(db, settings, as_viewer) -> None:  # type: ignore[no-untyped-def]
    fixture, _ = _with_map(db, settings, mapped=False)
    dataset_id = fixture.dataset.id
    unmapped = as_viewer.get(f"/api/datasets/{dataset_id}/map")
    assert unmapped.status_code == 409 and unmapped.json()["error"] == "embeddings_missing"
    assert unmapped.json()["start"] == f"/api/datasets/{dataset_id}/embeddings"
    other = make_run(db, sizes={"train": 2}, seed=6)
    db.commit()
    missing = as_viewer.get(f"/api/datasets/{other.dataset.id}/map", params={"backbone": "mobilenet_v3_small"})
    assert missing.status_code == 409 and missing.json()["backbone"] == "mobilenet_v3_small"
    assert as_viewer.get("/api/datasets/999999/map").status_code == 404
    assert as_viewer.get("/datasets/999999/map").status_code == 404
    url = f"/api/datasets/{dataset_id}/map/colours"
    assert as_viewer.get(url, params={"by": "shoe size"}).status_code == 422
    assert as_viewer.get(url, params={"by": "subset", "split_id": other.split.id}).status_code == 404
    assert as_viewer.get(url, params={"by": "correct", "run_id": other.run.id}).status_code == 404
    assert as_viewer.get(url, params={"by": "correct", "run_id": "x"}).status_code == 422
    page = as_viewer.get(f"/datasets/{dataset_id}/map")
    assert page.status_code == 200 and "data-map-missing" in page.text


def test_map_colours_by_the_worst_data_health_issue(db, settings, as_viewer) -> None:  # type: ignore[no-untyped-def]
    fixture, images = _with_map(db, settings)
    url = f"/api/datasets/{fixture.dataset.id}/map/colours"
    never = as_viewer.get(url, params={"by": "issue"}).json()
    assert never["source"] == "no data-health scan yet" and never["values"] == {}
    db.add(HealthScan(dataset_id=fixture.dataset.id, status="ready"))
    found = {
        images[0].id: ["dark", "exact_duplicate"],
        images[1].id: ["unmeasured", "blurry"],
        images[2].id: ["odd_size"],
    }
    for image_id, types in found.items():
        for kind in types:
            db.add(ImageIssue(image_id=image_id, type=kind, dataset_id=fixture.dataset.id, score=1.0))
    db.commit()
    body = as_viewer.get(url, params={"by": "issue"}).json()
    assert body["source"] == "the data-health scan"
    # Copies before image statistics; "unmeasured" yields to any real finding; images without findings left out.
    assert body["values"] == {
        str(images[0].id): "exact_duplicate",
        str(images[1].id): "blurry",
        str(images[2].id): "odd_size",
    }
    page = as_viewer.get(f"/datasets/{fixture.dataset.id}/map").text
    assert '<option value="issue">' in page and "data-map-lasso-mode" in page
