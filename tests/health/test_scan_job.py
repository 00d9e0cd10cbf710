"""The scan as a job, on images that really went through ingest: near duplicates verified on real thumbnails."""

from __future__ import annotations

import io

from PIL import Image as PILImage
from sklearn.datasets import load_sample_images
from sqlalchemy import update
from sqlalchemy.orm import Session

from app.ml.demo import generate_demo_dataset
from app.models import Image
from tests.datasets.conftest import Ingest, jpeg, zip_of


def test_scan_job_over_ingested_images(ingest: Ingest) -> None:
    dataset_id = ingest.create_dataset()
    demo = generate_demo_dataset(n_images=12, size=96, seed=5)
    files = [(f"{item.true_label}/{i}.jpg", item.jpeg) for i, item in enumerate(demo)]
    # A resized, re-encoded copy of picture 0 under another label: a near duplicate and a label conflict.
    copy = io.BytesIO()
    PILImage.open(io.BytesIO(demo[0].jpeg)).resize((80, 80)).save(copy, format="JPEG", quality=80)
    other = next(item.true_label for item in demo if item.true_label != demo[0].true_label)
    files += [(f"{other}/copy-of-0.jpg", copy.getvalue()), (f"{other}/night.jpg", jpeg((8, 8, 10), (96, 96)))]
    assert ingest.upload(dataset_id, [("batch.zip", zip_of(files))])["accepted"] == 14

    started = ingest.reviewer.post(f"/api/datasets/{dataset_id}/health")
    assert started.status_code == 202, started.text
    jobs = ingest.run_jobs()
    assert [job.status for job in jobs] == ["succeeded"], [job.error for job in jobs]
    assert jobs[0].result is not None and jobs[0].result["images"] == 14

    body = ingest.viewer.get(f"/api/datasets/{dataset_id}/health").json()
    assert body["status"] == "ready" and body["image_count"] == 14 and body["backbone"] is None
    issues = {issue["type"]: issue for issue in body["issues"]}
    names = {
        item["id"]: item["filename"].removeprefix("batch.zip/")
        for item in ingest.viewer.get(f"/api/datasets/{dataset_id}/images", params={"limit": 100}).json()["items"]
    }
    near = ingest.viewer.get(f"/api/datasets/{dataset_id}/images", params={"issue": "near_duplicate"}).json()
    assert sorted(names[item["id"]] for item in near["items"]) == sorted([files[0][0], f"{other}/copy-of-0.jpg"])
    assert issues["label_conflict"]["count"] == 2
    # Every image is either measured by ingest or counted as unmeasured, never silently healthy.
    measured = issues["dark"]["checked"]
    assert measured + issues["unmeasured"]["count"] == 14
    if measured:
        assert f"{other}/night.jpg" in [names[i] for i in issues["dark"]["examples"]]
    assert issues["outlier"]["checked"] == 0  # no embeddings yet


def _crop_conflict_scan(ingest: Ingest, *, forget_inner_hashes: bool) -> dict[str, dict[str, object]]:
    """A photo and its 5 %-cropped copy under two labels, among unrelated demo pictures, scanned."""
    dataset_id = ingest.create_dataset()
    photo = PILImage.fromarray(load_sample_images().images[1])
    width, height = photo.size
    cropped = photo.crop((width // 20, height // 20, width - width // 20, height - height // 20))
    files = [(f"{item.true_label}/{i}.jpg", item.jpeg) for i, item in enumerate(generate_demo_dataset(n_images=6))]
    for name, picture in (("flower/photo.jpg", photo), ("tree/cropped.jpg", cropped)):
        data = io.BytesIO()
        picture.save(data, format="JPEG", quality=90)
        files.append((name, data.getvalue()))
    assert ingest.upload(dataset_id, files)["accepted"] == 8
    if forget_inner_hashes:  # as images stored before migration 0012 are
        with Session(ingest.engine) as session:
            session.execute(update(Image).where(Image.dataset_id == dataset_id).values(inner_phash=None))
            session.commit()
    assert ingest.reviewer.post(f"/api/datasets/{dataset_id}/health").status_code == 202
    assert [job.status for job in ingest.run_jobs()] == ["succeeded"]
    body = ingest.viewer.get(f"/api/datasets/{dataset_id}/health").json()
    return {issue["type"]: issue for issue in body["issues"]}


def test_a_cropped_copy_under_another_label_is_a_label_conflict(ingest: Ingest) -> None:
    issues = _crop_conflict_scan(ingest, forget_inner_hashes=False)
    assert issues["near_duplicate"]["count"] == 2
    assert issues["label_conflict"]["count"] == 2


def test_images_without_an_inner_hash_are_compared_by_their_whole_view(ingest: Ingest) -> None:
    issues = _crop_conflict_scan(ingest, forget_inner_hashes=True)
    assert issues["near_duplicate"]["count"] == 0
    assert issues["label_conflict"]["count"] == 0
