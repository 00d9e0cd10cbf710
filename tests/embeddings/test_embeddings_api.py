"""Embeddings job and similar images through the API, with the real pretrained backbone, on both databases."""

from __future__ import annotations

import io
import shutil
from typing import Any

import pytest
from PIL import Image as PILImage

from app.embeddings import tasks
from app.embeddings.store import EmbeddingStore
from app.ml.demo import generate_demo_dataset
from tests.datasets.conftest import Ingest, zip_of


def _demo_files(count: int, start: int = 0) -> list[tuple[str, bytes]]:
    demo = generate_demo_dataset(n_images=start + count, size=96, seed=4)[start:]
    return [(f"{item.true_label}/{start + i}.jpg", item.jpeg) for i, item in enumerate(demo)]


def _image_ids(ingest: Ingest, dataset_id: int) -> dict[str, int]:
    response = ingest.viewer.get(f"/api/datasets/{dataset_id}/images", params={"limit": 100})
    assert response.status_code == 200, response.text
    body = response.json()
    items = body["items"] if isinstance(body, dict) else body
    return {item["filename"].rsplit("/", 1)[-1]: item["id"] for item in items}


def test_embeddings_job_then_similar_images_then_new_images_only(ingest: Ingest) -> None:
    dataset_id = ingest.create_dataset()
    files = _demo_files(16)
    assert ingest.upload(dataset_id, [("batch.zip", zip_of(files))])["accepted"] == 16
    ids = _image_ids(ingest, dataset_id)
    first = ids["0.jpg"]

    missing = ingest.viewer.get(f"/api/images/{first}/similar")
    assert missing.status_code == 409, missing.text
    assert missing.json()["error"] == "embeddings_missing"
    assert missing.json()["start"] == f"/api/datasets/{dataset_id}/embeddings"
    strip = ingest.viewer.get(f"/images/{first}/similar")
    assert strip.status_code == 200 and "data-similar-missing" in strip.text and "POST /api/datasets" in strip.text
    no_map = ingest.viewer.get(f"/api/datasets/{dataset_id}/map")
    assert no_map.status_code == 409 and no_map.json()["error"] == "embeddings_missing"

    started = ingest.reviewer.post(f"/api/datasets/{dataset_id}/embeddings", json={"backbone": "efficientnet_lite0"})
    assert started.status_code == 202, started.text
    job_id = started.json()["job_id"]
    again = ingest.reviewer.post(f"/api/datasets/{dataset_id}/embeddings", json={"backbone": "efficientnet_lite0"})
    assert again.json()["job_id"] == job_id  # one job per dataset and backbone at a time
    listed = ingest.viewer.get(f"/api/datasets/{dataset_id}/embeddings").json()["items"]
    assert [(s["backbone"], s["status"], s["job_id"]) for s in listed] == [("efficientnet_lite0", "queued", job_id)]

    jobs = ingest.run_jobs()
    assert [job.status for job in jobs] == ["succeeded"], [job.error for job in jobs]
    assert jobs[0].result is not None and jobs[0].result["embedded"] == 16
    listed = ingest.viewer.get(f"/api/datasets/{dataset_id}/embeddings").json()["items"]
    assert listed == [
        {
            "backbone": "efficientnet_lite0",
            "status": "ready",
            "count": 16,
            "dims": 1280,
            "index": "exact",
            "job_id": job_id,
        }
    ]

    # The job laid the map out too: one point per image, inside the unit square.
    points = ingest.viewer.get(f"/api/datasets/{dataset_id}/map").json()["points"]
    assert sorted(p["image_id"] for p in points) == sorted(ids.values())
    assert all(0 <= p["x"] <= 1 and 0 <= p["y"] <= 1 for p in points)

    similar = ingest.viewer.get(f"/api/images/{first}/similar", params={"k": 5})
    assert similar.status_code == 200, similar.text
    items = similar.json()["items"]
    assert len(items) == 5 and first not in [item["image_id"] for item in items]
    similarities = [item["similarity"] for item in items]
    assert similarities == sorted(similarities, reverse=True) and all(-1 <= s <= 1 for s in similarities)
    assert all(item["label"] in ("circle", "square", "triangle", "stripes") for item in items)
    assert all(item["subsets"] == [] for item in items)  # no split yet
    assert len(ingest.viewer.get(f"/api/images/{first}/similar", params={"k": 500}).json()["items"]) == 15
    # The image page's strip shows the same neighbours, in the same order.
    strip = ingest.viewer.get(f"/images/{first}/similar", params={"k": 5})
    shown = [int(part.split('"')[0]) for part in strip.text.split('data-image-id="')[1:]]
    assert shown == [item["image_id"] for item in items]
    assert 'hx-get="/images/' in ingest.viewer.get(f"/images/{first}").text

    # The query picture itself, uploaded (not stored): an exact copy, first with similarity 1.0.
    jpeg = dict(files)[f"{generate_demo_dataset(n_images=16, size=96, seed=4)[3].true_label}/3.jpg"]
    by_upload = ingest.viewer.post(
        f"/api/datasets/{dataset_id}/similar", params={"k": 3}, files={"file": ("query.jpg", jpeg, "image/jpeg")}
    )
    assert by_upload.status_code == 200, by_upload.text
    assert by_upload.json()["items"][0] == {**by_upload.json()["items"][0], "image_id": ids["3.jpg"], "similarity": 1.0}
    # A re-encoded copy (PNG) is still the nearest.
    png = io.BytesIO()
    PILImage.open(io.BytesIO(jpeg)).save(png, format="PNG")
    nearest = ingest.viewer.post(f"/api/datasets/{dataset_id}/similar", files={"file": ("q.png", png.getvalue())})
    assert nearest.json()["items"][0]["image_id"] == ids["3.jpg"]
    assert nearest.json()["items"][0]["similarity"] > 0.95

    # New images: the next run embeds only those.
    assert ingest.upload(dataset_id, [("more.zip", zip_of(_demo_files(4, start=16)))])["accepted"] == 4
    ingest.reviewer.post(f"/api/datasets/{dataset_id}/embeddings", json={"backbone": "efficientnet_lite0"})
    jobs = ingest.run_jobs()
    assert jobs[0].result is not None and jobs[0].result["embedded"] == 4 and jobs[0].result["count"] == 20
    assert ingest.viewer.get(f"/api/datasets/{dataset_id}/embeddings").json()["items"][0]["count"] == 20
    assert jobs[0].result["mapped"] == 20  # the map is laid out again with the new images on it
    assert len(ingest.viewer.get(f"/api/datasets/{dataset_id}/map").json()["points"]) == 20


def test_bad_input_gets_specific_errors(ingest: Ingest) -> None:
    dataset_id = ingest.create_dataset()
    assert ingest.upload(dataset_id, [("batch.zip", zip_of(_demo_files(4)))])["accepted"] == 4
    image_id = next(iter(_image_ids(ingest, dataset_id).values()))

    assert ingest.viewer.get("/api/images/999999/similar").status_code == 404
    assert ingest.viewer.get("/api/datasets/999999/embeddings").status_code == 404
    unknown_dataset = ingest.reviewer.post("/api/datasets/999999/embeddings", json={"backbone": "efficientnet_lite0"})
    assert unknown_dataset.status_code == 404
    for k in (0, 501, -3):
        assert ingest.viewer.get(f"/api/images/{image_id}/similar", params={"k": k}).status_code == 422
    unknown = ingest.reviewer.post(f"/api/datasets/{dataset_id}/embeddings", json={"backbone": "vgg_9000"})
    assert unknown.status_code == 422 and "vgg_9000" in unknown.json()["detail"]
    random_weights = ingest.reviewer.post(f"/api/datasets/{dataset_id}/embeddings", json={"backbone": "simple_cnn"})
    assert random_weights.status_code == 422 and "simple_cnn" in random_weights.json()["detail"]
    assert ingest.viewer.get(f"/api/datasets/{dataset_id}/embeddings").json()["items"] == []  # nothing half-made
    viewer_start = ingest.viewer.post(f"/api/datasets/{dataset_id}/embeddings", json={"backbone": "efficientnet_lite0"})
    assert viewer_start.status_code == 403

    before = ingest.viewer.post(f"/api/datasets/{dataset_id}/similar", files={"file": ("q.jpg", _demo_files(1)[0][1])})
    assert before.status_code == 409 and before.json()["error"] == "embeddings_missing"
    not_image = ingest.viewer.post(f"/api/datasets/{dataset_id}/similar", files={"file": ("notes.txt", b"hello")})
    assert not_image.status_code == 422 and "notes.txt is not a usable image" in not_image.json()["detail"]
    no_file = ingest.viewer.post(f"/api/datasets/{dataset_id}/similar", data={"x": "1"})
    assert no_file.status_code == 422 and "'file'" in no_file.json()["detail"]


def test_a_job_killed_mid_way_resumes_and_the_feature_cache_is_reused(
    ingest: Ingest, monkeypatch: pytest.MonkeyPatch
) -> None:
    dataset_id = ingest.create_dataset()
    assert ingest.upload(dataset_id, [("batch.zip", zip_of(_demo_files(12)))])["accepted"] == 12
    monkeypatch.setattr(tasks, "CHUNK_IMAGES", 4)
    appends: list[int] = []
    real_append = EmbeddingStore.append

    def dies_after_two_chunks(self: EmbeddingStore, image_ids: Any, vectors: Any) -> None:
        if len(appends) == 2:
            raise OSError("worker killed")
        appends.append(len(image_ids))
        real_append(self, image_ids, vectors)

    monkeypatch.setattr(EmbeddingStore, "append", dies_after_two_chunks)
    ingest.reviewer.post(f"/api/datasets/{dataset_id}/embeddings", json={"backbone": "efficientnet_lite0"})
    failed = ingest.run_jobs()
    assert failed[-1].status == "failed" and "worker killed" in (failed[-1].error or "")
    assert ingest.viewer.get(f"/api/datasets/{dataset_id}/embeddings").json()["items"][0]["status"] == "failed"

    monkeypatch.setattr(EmbeddingStore, "append", real_append)
    ingest.reviewer.post(f"/api/datasets/{dataset_id}/embeddings", json={"backbone": "efficientnet_lite0"})
    resumed = ingest.run_jobs()[-1]
    assert resumed.result is not None
    assert (resumed.result["embedded"], resumed.result["count"]) == (4, 12)  # the 8 stored vectors are kept
    # The killed run's third chunk reached the feature cache before the append failed: not computed again.
    assert resumed.result["feature_cache_hits"] == 4

    # Vectors gone (a new data dir, say): the feature cache still answers, nothing goes through the backbone.
    shutil.rmtree(ingest.settings.embeddings_dir)
    ingest.reviewer.post(f"/api/datasets/{dataset_id}/embeddings", json={"backbone": "efficientnet_lite0"})
    rebuilt = ingest.run_jobs()[-1]
    assert rebuilt.result is not None and rebuilt.result["feature_cache_hits"] == 12
