"""Unlabeled uploads (`unlabeled=true`): stored without a label, validated and deduplicated like every upload,
allowed into a dataset with no labels yet; on SQLite and Postgres, the ingest job run inline."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.models import Image as ImageRow
from app.models import LabelChange
from tests.datasets.conftest import Ingest, noisy_jpeg, reasons


def test_an_unlabeled_upload_fills_the_pool_and_is_validated_and_deduplicated(ingest: Ingest) -> None:
    dataset = ingest.create_dataset()
    files = [("a.jpg", noisy_jpeg(1)), ("b.jpg", noisy_jpeg(2)), ("copy-of-a.jpg", noisy_jpeg(1)), ("bad.jpg", b"x")]
    report = ingest.upload(dataset, files, unlabeled="true")
    assert report["status"] == "done", report
    assert (report["accepted"], report["duplicates"], report["rejected_count"]) == (2, 1, 1)
    assert reasons(report) == {"bad.jpg": "not an image (content is not JPEG, PNG, WebP, BMP, GIF or TIFF)"}
    with Session(ingest.engine) as session:
        images = session.scalars(select(ImageRow).where(ImageRow.dataset_id == dataset)).all()
        assert {(image.filename, image.label_id, image.from_pool) for image in images} == {
            ("a.jpg", None, True),
            ("b.jpg", None, True),
        }
        kinds = session.scalars(select(LabelChange.kind).where(LabelChange.image_id.in_([i.id for i in images])))
        assert sorted(kinds) == ["import", "import"]  # the upload is in each image's history, with no label
    summary = ingest.viewer.get(f"/api/datasets/{dataset}").json()
    assert (summary["image_count"], summary["unlabeled"], summary["labels"]) == (0, 2, {})
    pool = ingest.viewer.get(f"/api/datasets/{dataset}/images", params={"unlabeled": "true"}).json()
    assert pool["total"] == 2

    # The same picture uploaded with a label later: a conflict to settle, keeping "new" labels it (versioned).
    labelled = ingest.upload(dataset, [("cat/b-again.jpg", noisy_jpeg(2)), ("cat/c.jpg", noisy_jpeg(3))])
    assert (labelled["accepted"], labelled["conflicts"]) == (1, 1)
    (conflict,) = labelled["conflict_items"]
    assert "which is unlabeled; this file says 'cat'" in conflict["reason"]
    settled = ingest.reviewer.post(
        f"/api/uploads/{labelled['id']}/conflicts/{conflict['entry_id']}", json={"keep": "new"}
    )
    assert settled.status_code in (200, 204), settled.text
    with Session(ingest.engine) as session:
        image = session.get(ImageRow, conflict["image_id"])
        assert image is not None and image.label_id is not None and image.label_version == 2


def test_unlabeled_takes_no_label_and_no_labels_csv(ingest: Ingest) -> None:
    dataset = ingest.create_dataset()
    files = [("files", ("a.jpg", noisy_jpeg(4), "image/jpeg"))]
    refused = ingest.reviewer.post(
        f"/api/datasets/{dataset}/uploads", files=files, data={"unlabeled": "true", "label": "cat"}
    )
    assert refused.status_code == 422 and "an unlabeled upload takes no label" in refused.json()["detail"]
    opened = ingest.reviewer.post(
        f"/api/datasets/{dataset}/uploads/open", json={"unlabeled": True, "label": "cat", "resume": False}
    )
    assert opened.status_code == 422
    # Without the option, loose files with no label are still refused as before.
    report = ingest.upload(dataset, [("loose.jpg", noisy_jpeg(5))])
    assert report["accepted"] == 0 and reasons(report)["loose.jpg"].startswith("no label")
