"""Unlabeled images on the dataset's pages and API: counted apart, filtered in the grid, exported with an empty
label, and kept out of splits until someone labels them."""

from __future__ import annotations

import csv
import io

from tests.factories import make_run
from tests.pool.conftest import add_pool


def test_unlabeled_images_are_counted_filtered_and_exported(db, as_viewer) -> None:
    fixture = make_run(db, sizes={"train": 4, "dev": 2, "test": 2})
    pool = add_pool(db, fixture, 3)
    db.commit()
    dataset_id = fixture.dataset.id
    summary = as_viewer.get(f"/api/datasets/{dataset_id}").json()
    assert (summary["image_count"], summary["unlabeled"]) == (8, 3)
    assert sum(summary["labels"].values()) == 8

    only_pool = as_viewer.get(f"/api/datasets/{dataset_id}/images", params={"unlabeled": "true"}).json()
    assert only_pool["total"] == 3
    assert {item["id"] for item in only_pool["items"]} == {image.id for image in pool}
    assert all(item["label"] is None for item in only_pool["items"])
    everything = as_viewer.get(f"/api/datasets/{dataset_id}/images").json()
    assert everything["total"] == 11
    one = as_viewer.get(f"/api/images/{pool[0].id}").json()
    assert one["label"] is None and one["label_version"] == 1

    rows = list(csv.DictReader(io.StringIO(as_viewer.get(f"/api/datasets/{dataset_id}/images.csv").text)))
    assert len(rows) == 11 and sum(1 for row in rows if row["label"] == "") == 3

    page = as_viewer.get(f"/datasets/{dataset_id}").text
    assert "data-unlabeled-count" in page and f'href="/datasets/{dataset_id}/label"' in page
    grid = as_viewer.get(f"/datasets/{dataset_id}", params={"unlabeled": "true"}).text
    assert grid.count('<em class="muted">unlabeled</em>') == 3
    assert as_viewer.get(f"/images/{pool[0].id}").status_code == 200


def test_a_split_leaves_the_pool_out(db, as_reviewer) -> None:
    from app.core.storage import LocalBlobStore
    from app.ml.splitting import SplitParams
    from app.splits import service as splits

    fixture = make_run(db, sizes={"train": 6, "dev": 3, "test": 3})
    pool = add_pool(db, fixture, 4)
    db.commit()
    blobs = LocalBlobStore(as_reviewer.app.state.settings.blob_dir)
    data = splits.split_input(db, dataset_id=fixture.dataset.id, params=SplitParams(seed=1), blobs=blobs)
    assert len(data.image_ids) == 12 and not set(int(i) for i in data.image_ids) & {image.id for image in pool}
    assert data.train_only is None

    # Labelled from the pool: in the split's input now, and train-only unless from the target source ("phone").
    web = add_pool(db, fixture, 1, source="web", start=10)[0]
    for image in (pool[0], web):
        labelled = as_reviewer.post(f"/api/images/{image.id}/label", json={"label": "cat", "expected_version": 1})
        assert labelled.status_code == 200, labelled.text
    db.expire_all()
    params = SplitParams(seed=1, target_source="phone")
    data = splits.split_input(db, dataset_id=fixture.dataset.id, params=params, blobs=blobs)
    ids = [int(i) for i in data.image_ids]
    assert pool[0].id in ids and web.id in ids and pool[1].id not in ids
    assert data.train_only is not None
    train_only = {ids[k] for k in range(len(ids)) if data.train_only[k]}
    assert train_only == {web.id}  # the phone one is left to the split's rule
