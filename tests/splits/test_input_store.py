"""The on-disk split input: what only new images change is read once and kept; labels are always fresh."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.core.storage import LocalBlobStore
from app.ml.demo import generate_demo_dataset
from app.ml.near_duplicates import group_near_duplicates
from app.ml.splitting import SplitParams
from app.models import Dataset, Image, Label
from app.splits import repository, service
from app.splits.input_store import ImagesKey, SplitInputStore, StableColumns
from tests.datasets.conftest import Ingest, noisy_jpeg, zip_of
from tests.splits.test_splits import add_images


def _pair_hash(i: int) -> int:
    """Images 2k and 2k+1 share a random dHash; other pairs are far apart."""
    return int(np.random.default_rng(i // 2).integers(-(2**62), 2**62))


def _columns(n: int, *, imported: bool) -> StableColumns:
    return StableColumns(
        image_ids=np.arange(1, n + 1, dtype=np.int64),
        source_codes=np.arange(n, dtype=np.int64) % 3,
        source_names=("phone", "scan", "web"),
        group_ids=np.arange(n, dtype=np.int64) // 2,
        imported_subsets=(np.arange(n) % 4).astype(np.int8) if imported else None,
    )


@pytest.mark.parametrize("imported", [True, False])
def test_stored_columns_come_back_only_for_the_same_images_and_threshold(tmp_path: Path, imported: bool) -> None:
    store = SplitInputStore(tmp_path / "inputs")
    key = ImagesKey(dataset_id=7, threshold=4, image_count=10, last_image_id=10)
    written = _columns(10, imported=imported)
    store.save(key, written)
    read = store.load(key)
    assert read is not None
    assert read.source_names == written.source_names
    for name in ("image_ids", "source_codes", "group_ids", "imported_subsets"):
        np.testing.assert_array_equal(getattr(read, name), getattr(written, name))
    # An image added since, or another threshold or dataset: not these columns.
    assert store.load(ImagesKey(7, 4, 11, 11)) is None
    assert store.load(ImagesKey(7, 6, 10, 10)) is None
    assert store.load(ImagesKey(8, 4, 10, 10)) is None
    assert [p.name for p in (tmp_path / "inputs").iterdir()] == ["dataset-7-t4.npz"]  # no temp file left


def test_a_damaged_or_unwritable_store_only_costs_speed(tmp_path: Path) -> None:
    store = SplitInputStore(tmp_path / "inputs")
    key = ImagesKey(1, 4, 3, 3)
    store.save(key, _columns(3, imported=False))
    (tmp_path / "inputs" / "dataset-1-t4.npz").write_bytes(b"not a zip")
    assert store.load(key) is None
    blocked = tmp_path / "a-file"
    blocked.write_text("")
    SplitInputStore(blocked / "inputs").save(key, _columns(3, imported=False))  # no exception
    assert SplitInputStore(blocked / "inputs").load(key) is None


def test_the_preview_reads_stored_columns_and_fresh_labels(
    db: Session, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dataset = Dataset(name="stored")
    db.add(dataset)
    db.flush()
    images = add_images(db, dataset, count=40, sources=("web", "phone"), phash=_pair_hash)
    store = SplitInputStore(tmp_path / "inputs")
    blobs = LocalBlobStore(tmp_path / "blobs")
    params = SplitParams(seed=3)
    full_reads = []
    read_columns = repository.image_columns
    monkeypatch.setattr(repository, "image_columns", lambda *a: full_reads.append(1) or read_columns(*a))

    service._INPUT_CACHE.clear()
    first = service.split_input(db, dataset_id=dataset.id, params=params, blobs=blobs, store=store)
    assert len(full_reads) == 1
    assert list(store.root.iterdir())

    # A relabel (no new image): the stored columns serve, and the label comes from the database.
    dog = db.scalar(select(Label).where(Label.dataset_id == dataset.id, Label.name == "dog"))
    assert dog is not None
    cat_image = db.get(Image, images[0].id)
    assert cat_image is not None
    cat_image.label_id = dog.id
    db.flush()
    service._INPUT_CACHE.clear()
    second = service.split_input(db, dataset_id=dataset.id, params=params, blobs=blobs, store=store)
    assert len(full_reads) == 1
    np.testing.assert_array_equal(second.group_ids, first.group_ids)
    assert np.unique(second.group_ids).size == 20  # pairs of equal dHashes
    dog_code = second.label_names.index("dog")
    assert second.label_codes[0] == dog_code != first.label_codes[0]
    assert service.split_input(db, dataset_id=dataset.id, params=params, blobs=blobs, store=store) is second

    # New images: read again, in full.
    add_images(db, dataset, count=5, start=40)
    service._INPUT_CACHE.clear()
    third = service.split_input(db, dataset_id=dataset.id, params=params, blobs=blobs, store=store)
    assert len(full_reads) == 2
    assert third.image_ids.size == 45


def test_an_ingest_fills_the_store_for_the_first_preview(ingest: Ingest) -> None:
    dataset_id = ingest.create_dataset()
    files = [(f"cat/{i}.jpg", noisy_jpeg(i)) for i in range(6)] + [
        (f"dog/{i}.jpg", noisy_jpeg(100 + i)) for i in range(6)
    ]
    report = ingest.upload(dataset_id, [("batch.zip", zip_of(files))])
    assert report["accepted"] == 12
    store = SplitInputStore(ingest.settings.split_input_dir)
    with Session(ingest.engine) as session:
        count, last_id, _, _ = repository.images_fingerprint(session, dataset_id)
    stored = store.load(ImagesKey(dataset_id, SplitParams().near_duplicate_threshold, count, last_id))
    assert stored is not None
    assert stored.image_ids.size == 12
    response = ingest.reviewer.post(f"/api/datasets/{dataset_id}/splits", json={"seed": 1, "dry_run": True})
    assert response.status_code == 200, response.text
    assert sum(subset["total"] for subset in response.json()["counts"].values()) == 12


def test_split_groups_verify_hash_matches_on_the_stored_thumbnails(ingest: Ingest) -> None:
    # Different demo stripe pictures whose dHashes alone chain into big groups (issue 16).
    stripes = [item for item in generate_demo_dataset(n_images=240, seed=0) if item.true_label == "stripes"]
    dataset_id = ingest.create_dataset()
    report = ingest.upload(dataset_id, [("batch.zip", zip_of([(f"s/{i}.jpg", s.jpeg) for i, s in enumerate(stripes)]))])
    assert report["accepted"] == len(stripes)
    with Session(ingest.engine) as session:
        columns = repository.image_columns(session, dataset_id)
        count, last_id, _, _ = repository.images_fingerprint(session, dataset_id)
    hash_only = group_near_duplicates(columns.phashes).group_ids
    assert np.unique(hash_only, return_counts=True)[1].max() > 2

    stored = SplitInputStore(ingest.settings.split_input_dir).load(
        ImagesKey(dataset_id, SplitParams().near_duplicate_threshold, count, last_id)
    )
    assert stored is not None
    assert np.unique(stored.group_ids, return_counts=True)[1].max() <= 2
