"""Data health on both databases: a scan over hand-made statistics, the health API, the issue filter, bad input."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from app.core.settings import Settings
from app.core.storage import LocalBlobStore
from app.embeddings.store import EmbeddingStore
from app.health import service
from app.models import EmbeddingSet, ImageIssue, ImageStat
from tests.factories import RunFixture, make_run

NORMAL = {"brightness": 0.5, "contrast": 0.2, "sharpness": 5e-3, "entropy": 4.5, "colourfulness": 0.2}


@dataclass
class Scanned:
    fixture: RunFixture
    ids: list[int]
    roles: dict[str, list[int]]


def _build(db: Session, settings: Settings, *, scan: bool = True) -> Scanned:
    fixture = make_run(db, sizes={"train": 40}, seed=3)
    images = fixture.images["train"]
    ids = [image.id for image in images]
    roles = {
        "dark": ids[0:2],
        "light": ids[2:3],
        "blurry": ids[3:4],
        "grayscale": ids[4:5],
        "unmeasured": ids[5:7],
        "odd_aspect_ratio": ids[7:8],
        "exact_duplicate": ids[8:10],
        "near_duplicate": ids[10:13],
        "outlier": ids[13:14],
    }
    rng = np.random.default_rng(1)
    for image in images:
        image.phash = int(rng.integers(-(2**62), 2**62))  # unrelated pictures
        if image.id in roles["odd_aspect_ratio"]:
            image.width, image.height = 400, 40
        if image.id in roles["unmeasured"]:
            continue
        values = dict(NORMAL)
        if image.id in roles["dark"]:
            values["brightness"] = 0.05 if image.id == roles["dark"][0] else 0.1
        if image.id in roles["light"]:
            values["brightness"] = 0.95
        if image.id in roles["blurry"]:
            values["sharpness"] = 2e-5
        if image.id in roles["grayscale"]:
            values["colourfulness"] = 0.0
        db.add(ImageStat(image_id=image.id, **values))
    for image in images[8:10]:
        image.thumb_sha256 = "ab" * 32  # one decoded picture, two files
    for image in images[10:13]:
        image.phash = 0x0F0F_0F0F_0F0F_0F0F  # one dHash, no thumbnail signature: joined by the hash alone
    # The three near duplicates carry two labels: a label conflict.
    images[12].label_id = next(label.id for label in fixture.labels if label.id != images[10].label_id)
    images[11].label_id = images[10].label_id
    db.flush()
    _embed(db, settings, fixture, ids, outlier=roles["outlier"][0])
    if scan:
        service.scan_dataset(
            db,
            dataset_id=fixture.dataset.id,
            blobs=LocalBlobStore(settings.blob_dir),
            embeddings_root=settings.embeddings_dir,
        )
    db.commit()
    return Scanned(fixture, ids, roles)


def _embed(db: Session, settings: Settings, fixture: RunFixture, ids: list[int], *, outlier: int) -> None:
    rng = np.random.default_rng(2)
    centre = rng.normal(size=16)
    vectors = centre + 0.05 * rng.normal(size=(len(ids), 16))
    vectors[ids.index(outlier)] = -centre
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    EmbeddingStore(settings.embeddings_dir, dataset_id=fixture.dataset.id, backbone="efficientnet_lite0").append(
        ids, vectors
    )
    db.add(EmbeddingSet(dataset_id=fixture.dataset.id, backbone="efficientnet_lite0", status="ready", count=len(ids)))
    db.flush()


def _issues(client: TestClient, dataset_id: int) -> dict[str, dict[str, object]]:
    response = client.get(f"/api/datasets/{dataset_id}/health")
    assert response.status_code == 200, response.text
    return {issue["type"]: issue for issue in response.json()["issues"]}


def test_scan_finds_each_issue_and_counts_unmeasured_images(
    db: Session, settings: Settings, as_viewer: TestClient
) -> None:
    built = _build(db, settings)
    dataset_id = built.fixture.dataset.id
    body = as_viewer.get(f"/api/datasets/{dataset_id}/health").json()
    assert body["status"] == "ready" and body["image_count"] == 40 and body["new_images"] is False
    assert body["backbone"] == "efficientnet_lite0"
    issues = _issues(as_viewer, dataset_id)
    assert list(issues) == list(service.logic.ISSUE_TYPES)
    for issue, expected in built.roles.items():
        assert sorted(issues[issue]["examples"]) == sorted(expected) or issue in ("exact_duplicate", "near_duplicate")
        assert issues[issue]["count"] == len(expected), issue
    # Duplicates show one example per group.
    assert issues["exact_duplicate"]["examples"] == [built.roles["exact_duplicate"][0]]
    assert issues["near_duplicate"]["examples"] == [built.roles["near_duplicate"][0]]
    assert issues["label_conflict"]["count"] == 3
    assert issues["dark"]["examples"] == built.roles["dark"]  # darkest first
    # Unmeasured images are not judged by the statistics checks: 38 of 40 were checked.
    assert issues["dark"]["checked"] == 38 and issues["unmeasured"]["checked"] == 40
    assert issues["outlier"]["checked"] == 40
    for quiet in ("light", "low_information", "odd_size"):
        assert issues[quiet]["count"] == (1 if quiet == "light" else 0)


def test_issue_filter_sorts_by_score_and_keeps_groups_together(
    db: Session, settings: Settings, as_viewer: TestClient
) -> None:
    built = _build(db, settings)
    dataset_id = built.fixture.dataset.id
    worst = as_viewer.get(f"/api/datasets/{dataset_id}/images", params={"issue": "dark"}).json()
    assert worst["total"] == 2 and [item["id"] for item in worst["items"]] == built.roles["dark"]
    assert worst["items"][0]["score"] > worst["items"][1]["score"]
    mildest = as_viewer.get(f"/api/datasets/{dataset_id}/images", params={"issue": "dark", "sort": "score"}).json()
    assert [item["id"] for item in mildest["items"]] == built.roles["dark"][::-1]
    conflicts = as_viewer.get(f"/api/datasets/{dataset_id}/images", params={"issue": "label_conflict"}).json()
    assert sorted(item["id"] for item in conflicts["items"]) == built.roles["near_duplicate"]
    # Combined with another filter, and without an issue no score.
    label = built.fixture.labels[0].name
    both = as_viewer.get(f"/api/datasets/{dataset_id}/images", params={"issue": "unmeasured", "label": label}).json()
    assert all(item["label"] == label for item in both["items"])
    plain = as_viewer.get(f"/api/datasets/{dataset_id}/images", params={"limit": 3}).json()
    assert [item["score"] for item in plain["items"]] == [None, None, None]
    # The dataset page's grid reads the same filter.
    page = as_viewer.get(f"/datasets/{dataset_id}", params={"issue": "dark"})
    assert page.status_code == 200
    shown = [int(part.split('"')[0]) for part in page.text.split('class="thumb" href="/images/')[1:]]
    assert shown == built.roles["dark"] and "data-score" in page.text


def test_a_rescan_replaces_findings_and_notices_new_images(
    db: Session, settings: Settings, as_viewer: TestClient
) -> None:
    built = _build(db, settings)
    dataset_id = built.fixture.dataset.id
    stat = db.get(ImageStat, built.roles["dark"][0])
    assert stat is not None
    stat.brightness = 0.5
    extra = make_run(db, sizes={"train": 1}, seed=9).images["train"][0]
    extra.dataset_id, extra.label_id = dataset_id, built.fixture.labels[0].id
    db.commit()
    assert as_viewer.get(f"/api/datasets/{dataset_id}/health").json()["new_images"] is True
    service.scan_dataset(
        db, dataset_id=dataset_id, blobs=LocalBlobStore(settings.blob_dir), embeddings_root=settings.embeddings_dir
    )
    db.commit()
    issues = _issues(as_viewer, dataset_id)
    assert issues["dark"]["examples"] == built.roles["dark"][1:]
    assert issues["unmeasured"]["count"] == 3  # the new image has no statistics yet
    rows = db.query(ImageIssue).filter_by(dataset_id=dataset_id, type="dark").all()
    assert [row.image_id for row in rows] == built.roles["dark"][1:]


def test_bad_input_and_the_scan_job(db: Session, settings: Settings, people, app) -> None:  # type: ignore[no-untyped-def]
    from tests.conftest import api_client

    built = _build(db, settings, scan=False)
    dataset_id = built.fixture.dataset.id
    with api_client(app, people["viewer"].token) as viewer, api_client(app, people["reviewer"].token) as reviewer:
        missing = viewer.get(f"/api/datasets/{dataset_id}/health")
        assert missing.status_code == 409 and missing.json()["error"] == "health_missing"
        assert missing.json()["start"] == f"/api/datasets/{dataset_id}/health"
        filtered = viewer.get(f"/api/datasets/{dataset_id}/images", params={"issue": "dark"})
        assert filtered.status_code == 409 and filtered.json()["error"] == "health_missing"
        assert "Not scanned yet" in viewer.get(f"/datasets/{dataset_id}/health").text
        assert viewer.get("/api/datasets/999999/health").status_code == 404
        assert reviewer.post("/api/datasets/999999/health").status_code == 404
        assert viewer.post(f"/api/datasets/{dataset_id}/health").status_code == 403
        unknown = viewer.get(f"/api/datasets/{dataset_id}/images", params={"issue": "fuzzy"})
        assert unknown.status_code == 422 and "fuzzy" in unknown.json()["detail"]
        assert viewer.get(f"/api/datasets/{dataset_id}/images", params={"sort": "score"}).status_code == 422
        bad_sort = viewer.get(f"/api/datasets/{dataset_id}/images", params={"issue": "dark", "sort": "size"})
        assert bad_sort.status_code == 422

        started = reviewer.post(f"/api/datasets/{dataset_id}/health")
        assert started.status_code == 202, started.text
        again = reviewer.post(f"/api/datasets/{dataset_id}/health")
        assert again.json()["job_id"] == started.json()["job_id"]  # one scan at a time
        queued = viewer.get(f"/api/datasets/{dataset_id}/health").json()
        assert queued["status"] == "queued" and queued["issues"] == []
        panel = viewer.get(f"/datasets/{dataset_id}/health")
        assert 'hx-trigger="every 2s"' in panel.text  # polls until the scan is done


@pytest.mark.parametrize("issue", ["dark", "near_duplicate"])
def test_the_panel_lists_counts_with_example_thumbnails(
    db: Session, settings: Settings, as_viewer: TestClient, issue: str
) -> None:
    built = _build(db, settings)
    panel = as_viewer.get(f"/datasets/{built.fixture.dataset.id}/health")
    assert panel.status_code == 200
    row = panel.text.split(f'data-issue="{issue}"')[1].split("</tr>")[0]
    assert f'data-issue-count="{len(built.roles[issue])}"' in row
    assert f"/images/{built.roles[issue][0]}/thumb" in row
    assert f"?issue={issue}" in row
