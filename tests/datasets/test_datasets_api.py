"""Datasets, labels, image browsing and image files through the API and the pages."""

from __future__ import annotations

import re

from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.models import Image, LabelChange, Split, SplitAssignment
from tests.datasets.conftest import Ingest, noisy_jpeg


def test_datasets_are_created_listed_and_described(as_reviewer: TestClient, as_viewer: TestClient) -> None:
    created = as_reviewer.post("/api/datasets", json={"name": "  street   signs ", "description": "from cars"})
    assert created.status_code == 201
    body = created.json()
    assert body["name"] == "street signs"
    assert as_reviewer.post("/api/datasets", json={"name": "street signs"}).status_code == 409
    assert as_viewer.post("/api/datasets", json={"name": "mine"}).status_code == 403
    listed = {d["name"]: d for d in as_viewer.get("/api/datasets").json()}
    assert listed["street signs"]["image_count"] == 0
    detail = as_viewer.get(f"/api/datasets/{body['id']}").json()
    assert detail == {
        "id": body["id"],
        "name": "street signs",
        "description": "from cars",
        "image_count": 0,
        "unlabeled": 0,
        "labels": {},
        "sources": {},
        "target_source": None,
        "counts": [],
    }
    assert as_viewer.get("/api/datasets/999999").status_code == 404


def test_counts_target_source_and_filters(ingest: Ingest) -> None:
    dataset = ingest.create_dataset()
    web = [("cat/w1.jpg", noisy_jpeg(1)), ("cat/w2.jpg", noisy_jpeg(2)), ("dog/w3.jpg", noisy_jpeg(3))]
    phone = [("train/cat/p1.jpg", noisy_jpeg(4)), ("test/dog/p2.jpg", noisy_jpeg(5)), ("val/dog/p3.jpg", noisy_jpeg(6))]
    assert ingest.upload(dataset, web, source="web")["accepted"] == 3
    assert ingest.upload(dataset, phone, source="phone")["accepted"] == 3

    detail = ingest.viewer.get(f"/api/datasets/{dataset}").json()
    assert detail["labels"] == {"cat": 3, "dog": 3}
    assert detail["sources"] == {"phone": 3, "web": 3}
    assert {(c["label"], c["source"]): c["images"] for c in detail["counts"]} == {
        ("cat", "phone"): 1,
        ("cat", "web"): 2,
        ("dog", "phone"): 2,
        ("dog", "web"): 1,
    }
    bad_target = ingest.reviewer.patch(f"/api/datasets/{dataset}", json={"target_source": "tablet"})
    assert bad_target.status_code == 422
    assert "no image comes from source 'tablet'" in bad_target.json()["detail"]
    assert (
        ingest.reviewer.patch(f"/api/datasets/{dataset}", json={"target_source": "phone"}).json()["target_source"]
        == "phone"
    )

    def names(**params: object) -> list[str]:
        response = ingest.viewer.get(f"/api/datasets/{dataset}/images", params=params)
        assert response.status_code == 200, response.text
        return sorted(item["filename"].rsplit("/", 1)[-1] for item in response.json()["items"])

    assert names(label="dog") == ["p2.jpg", "p3.jpg", "w3.jpg"]
    assert names(label="dog", source="web") == ["w3.jpg"]
    assert names(q="P1") == ["p1.jpg"]  # case-insensitive
    assert names(q="%") == []  # a wildcard is searched for, not expanded
    assert names(label="zebra") == []
    page = ingest.viewer.get(f"/api/datasets/{dataset}/images", params={"limit": 2, "offset": 1}).json()
    assert (page["total"], len(page["items"])) == (6, 2)
    imported = {
        i["filename"].rsplit("/", 1)[-1]: i["imported_subset"]
        for i in ingest.viewer.get(f"/api/datasets/{dataset}/images").json()["items"]
    }
    assert imported == {
        "w1.jpg": None,
        "w2.jpg": None,
        "w3.jpg": None,
        "p1.jpg": "train",
        "p2.jpg": "test",
        "p3.jpg": "dev",
    }

    # The subset filter reads a split: the newest ready one unless another is named.
    assert names(subset="dev") == []
    with Session(ingest.engine) as session:
        images = {
            i.filename.rsplit("/", 1)[-1]: i.id
            for i in session.scalars(select(Image).where(Image.dataset_id == dataset))
        }
        old = Split(dataset_id=dataset, version=1, status="ready")
        new = Split(dataset_id=dataset, version=2, status="ready")
        building = Split(dataset_id=dataset, version=3, status="building")
        session.add_all([old, new, building])
        session.flush()
        for split, dev in ((old, ["w1.jpg"]), (new, ["p2.jpg", "p3.jpg"]), (building, ["w2.jpg"])):
            session.add_all(
                SplitAssignment(split_id=split.id, image_id=image_id, subset="dev" if name in dev else "train")
                for name, image_id in images.items()
            )
        session.commit()
        old_id = old.id
    assert names(subset="dev") == ["p2.jpg", "p3.jpg"]
    assert names(subset="dev", label="dog", source="phone") == ["p2.jpg", "p3.jpg"]
    assert names(subset="dev", split_id=old_id) == ["w1.jpg"]
    assert len(names(subset="train")) == 4
    grid = ingest.viewer.get(f"/datasets/{dataset}", params={"subset": "dev"})
    assert grid.status_code == 200
    assert "2 images in dev of split v2" in grid.text


def test_labels_are_added_renamed_and_merged_with_history(ingest: Ingest) -> None:
    dataset = ingest.create_dataset()
    ingest.upload(dataset, [("cat/a.jpg", noisy_jpeg(1)), ("kitty/b.jpg", noisy_jpeg(2)), ("dog/c.jpg", noisy_jpeg(3))])
    labels = {label["name"]: label["id"] for label in ingest.viewer.get(f"/api/datasets/{dataset}/labels").json()}
    added = ingest.reviewer.post(f"/api/datasets/{dataset}/labels", json={"name": "  fox "})
    assert added.status_code == 201 and added.json()["name"] == "fox"
    assert ingest.reviewer.post(f"/api/datasets/{dataset}/labels", json={"name": "fox"}).status_code == 409
    assert ingest.reviewer.post(f"/api/datasets/{dataset}/labels", json={"name": " "}).json()["detail"] == "empty label"
    assert ingest.viewer.post(f"/api/datasets/{dataset}/labels", json={"name": "owl"}).status_code == 403

    renamed = ingest.reviewer.patch(f"/api/datasets/{dataset}/labels/{labels['dog']}", json={"name": "hound"})
    assert renamed.json() == {"id": labels["dog"], "name": "hound", "images": None}
    clash = ingest.reviewer.patch(f"/api/datasets/{dataset}/labels/{labels['cat']}", json={"name": "kitty"})
    assert clash.status_code == 409 and "merge" in clash.json()["detail"]

    merged = ingest.reviewer.post(
        f"/api/datasets/{dataset}/labels/{labels['kitty']}/merge", json={"into_label_id": labels["cat"]}
    )
    assert merged.json() == {"into": {"id": labels["cat"], "name": "cat", "images": None}, "moved": 1}
    assert ingest.viewer.get(f"/api/datasets/{dataset}").json()["labels"] == {"cat": 2, "fox": 0, "hound": 1}
    kitty_image = next(
        i for i in ingest.viewer.get(f"/api/datasets/{dataset}/images").json()["items"] if "kitty" in i["filename"]
    )
    history = ingest.viewer.get(f"/api/images/{kitty_image['id']}").json()["history"]
    assert [(h["kind"], h["old_label"], h["new_label"], h["version"]) for h in history] == [
        ("import", None, "kitty", 1),
        ("merge", "kitty", "cat", 2),
    ]
    events = ingest.viewer.get(f"/api/datasets/{dataset}/label-events").json()
    assert [(e["kind"], e["details"]) for e in events][:3] == [
        ("merge", {"from": "kitty", "into": "cat", "images": 1, "from_id": labels["kitty"], "into_id": labels["cat"]}),
        ("rename", {"from": "dog", "to": "hound"}),
        ("add", {"name": "fox"}),
    ]
    # A merged label is no longer offered; new files under its name join the label it was merged into.
    again = ingest.upload(dataset, [("kitty/d.jpg", noisy_jpeg(4))])
    assert again["accepted"] == 1
    assert ingest.viewer.get(f"/api/datasets/{dataset}").json()["labels"] == {"cat": 3, "fox": 0, "hound": 1}
    with Session(ingest.engine) as session:
        kinds = session.scalars(select(LabelChange.kind).join(Image).where(Image.dataset_id == dataset)).all()
        assert sorted(kinds) == ["import", "import", "import", "import", "merge"]


def test_image_files_need_a_login_and_are_cached_by_content(ingest: Ingest) -> None:
    dataset = ingest.create_dataset()
    ingest.upload(dataset, [("cat/a.jpg", noisy_jpeg(1, size=(400, 300)))])
    (item,) = ingest.viewer.get(f"/api/datasets/{dataset}/images").json()["items"]
    full = ingest.viewer.get(f"/images/{item['id']}/full")
    assert full.status_code == 200
    assert full.content == noisy_jpeg(1, size=(400, 300))
    assert full.headers["content-type"] == "image/jpeg"
    assert full.headers["etag"] == f'"{item["sha256"]}"'
    assert "immutable" in full.headers["cache-control"] and "private" in full.headers["cache-control"]
    assert full.headers["content-security-policy"] == "default-src 'none'; sandbox"
    assert full.headers["x-content-type-options"] == "nosniff"
    thumb = ingest.viewer.get(f"/images/{item['id']}/thumb")
    assert thumb.headers["content-type"] == "image/jpeg" and len(thumb.content) < len(full.content)
    again = ingest.viewer.get(f"/images/{item['id']}/thumb", headers={"if-none-match": thumb.headers["etag"]})
    assert again.status_code == 304 and again.content == b""
    anonymous = TestClient(ingest.app, follow_redirects=False)
    assert anonymous.get(f"/images/{item['id']}/full").status_code == 303
    assert anonymous.get(f"/api/images/{item['id']}").status_code == 401
    assert ingest.viewer.get("/images/999999/thumb").status_code == 404
    assert ingest.viewer.get("/images/..%2F..%2Fetc%2Fpasswd/full").status_code in (404, 422)


def test_user_text_is_escaped_on_every_page(ingest: Ingest) -> None:
    dataset = ingest.create_dataset("<i>sets</i>")
    nasty = '<b onmouseover="alert(1)">cat'
    report = ingest.upload(
        dataset,
        [(f"{nasty}/<img src=x onerror=alert(2)>.jpg", noisy_jpeg(1)), (f"{nasty}/bad.jpg", b"<svg onload=alert(3)>")],
    )
    assert report["accepted"] == 1
    (item,) = ingest.viewer.get(f"/api/datasets/{dataset}/images").json()["items"]
    assert item["label"] == nasty
    pages = [
        "/datasets",
        f"/datasets/{dataset}",
        f"/datasets/{dataset}?label={nasty}",
        f"/images/{item['id']}",
        f"/uploads/{report['id']}",
        f"/uploads/{report['id']}/panel",
    ]
    for url in pages:
        page = ingest.viewer.get(url)
        assert page.status_code == 200, url
        assert "<b onmouseover" not in page.text and "<img src=x" not in page.text and "<i>sets" not in page.text, url
        assert "<svg onload" not in page.text, url
    assert "&lt;b onmouseover=&#34;alert(1)&#34;&gt;cat" in ingest.viewer.get(f"/datasets/{dataset}").text
    assert "&lt;img src=x onerror=alert(2)&gt;" in ingest.viewer.get(f"/images/{item['id']}").text


def test_the_pages_render_and_link_the_workflow(ingest: Ingest) -> None:
    dataset = ingest.create_dataset("flowers")
    report = ingest.upload(dataset, [("rose/a.jpg", noisy_jpeg(1)), ("tulip/b.jpg", noisy_jpeg(2))], source="garden")
    page = ingest.viewer.get(f"/datasets/{dataset}")
    assert page.status_code == 200
    for link in (f"/datasets/{dataset}/splits", f"/datasets/{dataset}/runs", f"/uploads/{report['id']}"):
        assert f'href="{link}"' in page.text
    assert '<svg class="chart chart-fixed"' in page.text  # the class-balance chart, at its pixel size
    assert re.search(r"data-image-count>2<", page.text)
    assert f'href="/datasets/{dataset}/upload"' not in page.text  # viewers cannot upload
    assert ingest.viewer.get(f"/datasets/{dataset}/upload").status_code == 403
    upload_page = ingest.reviewer.get(f"/datasets/{dataset}/upload")
    assert upload_page.status_code == 200
    assert "data-uploader" in upload_page.text and "/static/js/upload.js" in upload_page.text
    grid = ingest.viewer.get(
        f"/datasets/{dataset}?label=rose", headers={"hx-request": "true", "hx-target": "image-grid"}
    )
    assert grid.text.lstrip().startswith('<div id="image-grid">')
    assert "rose/a.jpg" in grid.text and "tulip/b.jpg" not in grid.text
