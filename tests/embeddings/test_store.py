"""The vector store: resumable appends, exact search, and the usearch index against exact search."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from app.embeddings.store import EmbeddingStore
from app.ml.similarity import exact_top_k, recall_at_k, unit_rows


def clustered(count: int, dims: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((50, dims))
    return unit_rows(centres[rng.integers(0, 50, size=count)] + 0.5 * rng.standard_normal((count, dims)))


def test_a_torn_append_is_ignored_and_overwritten(tmp_path: Path) -> None:
    store = EmbeddingStore(tmp_path, dataset_id=1, backbone="efficientnet_lite0")
    vectors = clustered(30, 16, seed=1)
    store.append(np.arange(10, 30), vectors[:20])
    # A crash after the vectors but before the ids were written: the tail is not counted.
    with (store.root / "vectors.f16").open("ab") as file:
        file.write(vectors[20:25].astype(np.float16).tobytes())
    assert store.count() == 20
    store.append(np.arange(30, 40), vectors[20:30])
    assert store.count() == 30
    assert store.ids().tolist() == list(range(10, 40))
    stored = store.vector_of(35)
    assert stored is not None
    np.testing.assert_allclose(stored, vectors[25], atol=1e-3)


def test_search_is_exact_for_small_sets_and_excludes_the_query(tmp_path: Path) -> None:
    store = EmbeddingStore(tmp_path, dataset_id=2, backbone="b")
    vectors = clustered(200, 32, seed=2)
    store.append(np.arange(1000, 1200), vectors)
    ids, similarities = store.search(vectors[7], 10, exclude_id=1007)
    assert 1007 not in ids.tolist() and ids.size == 10
    expected = exact_top_k(vectors.astype(np.float16), vectors[7], 10, exclude=7)
    assert ids.tolist() == (expected.positions + 1000).tolist()
    assert np.all(np.diff(similarities) <= 0)


def test_the_ann_index_grows_incrementally_and_agrees_with_exact_search(tmp_path: Path) -> None:
    store = EmbeddingStore(tmp_path, dataset_id=3, backbone="b", exact_limit=500)
    vectors = clustered(3_000, 64, seed=3)
    store.append(np.arange(2_000), vectors[:2_000])
    assert store.index_kind == "usearch" and store.refresh_index() == 2_000
    store.append(np.arange(2_000, 3_000), vectors[2_000:])
    assert store.refresh_index() == 1_000  # only the new rows
    assert store.refresh_index() == 0
    queries = np.arange(0, 3_000, 60)
    approximate = [store.search(vectors[q], 10, exclude_id=int(q))[0] for q in queries]
    exact = [exact_top_k(vectors, vectors[q], 10, exclude=int(q)).positions for q in queries]
    assert recall_at_k(approximate, exact) >= 0.95


def test_map_store_round_trips_and_refuses_misshapen_points(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from app.embeddings.store import MapStore

    store = EmbeddingStore(tmp_path, dataset_id=1, backbone="efficientnet_lite0")
    maps = MapStore(store)
    assert maps.read() is None and maps.count() == 0
    maps.write([3, 1, 2], [[0.1, 0.2], [0.3, 0.4], [0.5, 0.6]])
    found = maps.read()
    assert found is not None and found[0].tolist() == [3, 1, 2] and found[1].shape == (3, 2)
    with pytest.raises(ValueError, match="one"):
        maps.write([1, 2], [[0.1, 0.2]])
    assert maps.count() == 3  # the refused write left the stored map alone


def test_neighbour_store_finds_each_rows_nearest_others_exact_and_through_the_index(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from app.embeddings.store import NEIGHBOURS, NeighbourStore

    rng = np.random.default_rng(3)
    vectors = unit_rows(rng.standard_normal((300, 32)))
    ids = np.arange(1000, 1300)
    full = vectors @ vectors.T
    np.fill_diagonal(full, -np.inf)
    truth = ids[np.argsort(-full, axis=1)[:, :NEIGHBOURS]]
    for exact_limit, name in ((10_000, "exact"), (100, "indexed")):
        store = EmbeddingStore(tmp_path / name, dataset_id=1, backbone="efficientnet_lite0", exact_limit=exact_limit)
        store.append(ids, vectors)
        store.refresh_index()
        neighbours = NeighbourStore(store)
        assert neighbours.read() is None
        assert neighbours.refresh() == 300 and neighbours.refresh() == 0  # current: nothing to do
        found = neighbours.read()
        assert found is not None
        stored_ids, neighbour_ids, similarities = found
        assert stored_ids.tolist() == ids.tolist() and neighbour_ids.shape == (300, NEIGHBOURS)
        assert not (neighbour_ids == ids[:, None]).any()
        assert (np.diff(similarities, axis=1) <= 1e-5).all()  # most similar first
        overlap = np.mean([len(set(a) & set(b)) / NEIGHBOURS for a, b in zip(neighbour_ids, truth, strict=True)])
        # Centred by the PCA before the cosine, so not quite the raw vectors' neighbours (0.97 here).
        assert overlap > 0.9, name


def test_the_reduced_index_with_exact_re_ranking_gives_the_exact_answer_when_it_sees_every_row(
    tmp_path: Path,
) -> None:
    # Fewer rows than the candidates a search asks the index for: the exact re-ranking then scores every row, so
    # the PCA-reduced, int8 index changes nothing — ids, order and similarities are brute force's.
    store = EmbeddingStore(tmp_path, dataset_id=4, backbone="b", exact_limit=100)
    vectors = clustered(400, 48, seed=4)
    vectors[11] = vectors[3]  # an exact copy comes first, with similarity 1.0
    store.append(np.arange(5_000, 5_400), vectors)
    assert store.refresh_index() == 400 and store.index_kind == "usearch"
    assert (store.root / "projection.npz").exists()
    stored = store.vectors()
    for query in (3, 17, 250):
        ids, similarities = store.search(np.asarray(stored[query], np.float32), 10, exclude_id=5_000 + query)
        expected = exact_top_k(stored, stored[query], 10, exclude=query)
        assert ids.tolist() == (expected.positions + 5_000).tolist()
        np.testing.assert_allclose(similarities, expected.similarities, atol=1e-6)
    assert store.search(vectors[3], 1, exclude_id=5_003)[0].tolist() == [5_011]


def test_the_index_and_rows_are_opened_once_per_process_until_the_files_change(tmp_path: Path) -> None:
    from app.embeddings.store import _LOADED

    store = EmbeddingStore(tmp_path, dataset_id=5, backbone="b", exact_limit=100)
    vectors = clustered(300, 16, seed=5)
    store.append(np.arange(200), vectors[:200])
    store.refresh_index()
    store.search(vectors[0], 5)
    opened = _LOADED[store.root]
    assert isinstance(opened.vectors, np.memmap) and opened.index is not None
    # Another store object on the same folder (a new request) finds what this process opened.
    again = EmbeddingStore(tmp_path, dataset_id=5, backbone="b", exact_limit=100)
    again.search(vectors[1], 5)
    assert _LOADED[store.root] is opened
    # New rows, then the job's index refresh: the next query opens the new files and finds the new rows.
    store.append(np.arange(200, 300), vectors[200:])
    store.refresh_index()
    ids, _ = again.search(vectors[250], 1, exclude_id=None)
    assert _LOADED[store.root] is not opened and ids.tolist() == [250]
