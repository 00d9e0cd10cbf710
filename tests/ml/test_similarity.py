from __future__ import annotations

import numpy as np

from app.ml.similarity import exact_top_k, fit_projection, ordered, recall_at_k, unit_rows


def test_exact_top_k_matches_a_full_sort() -> None:
    vectors = unit_rows(np.random.default_rng(0).standard_normal((300, 8)))
    found = exact_top_k(vectors, vectors[5], 7, exclude=5)
    scores = vectors @ vectors[5]
    scores[5] = -np.inf
    assert found.positions.tolist() == np.argsort(-scores, kind="stable")[:7].tolist()
    assert exact_top_k(vectors[:1], vectors[0], 5, exclude=0).positions.size == 0


def test_copies_come_first_with_similarity_one_in_a_stable_order() -> None:
    result = ordered([9, 4, 2, 7], [0.5, 0.99999, 1.0000001, 0.7])
    assert result.positions.tolist() == [2, 4, 7, 9]
    assert result.similarities.tolist()[:2] == [1.0, 1.0]


def test_projection_keeps_the_main_directions_and_recall_counts_overlap() -> None:
    rng = np.random.default_rng(1)
    sample = rng.standard_normal((500, 3)) @ np.asarray([[5.0, 0, 0, 0], [0, 3.0, 0, 0], [0, 0, 0.01, 0]])
    projection = fit_projection(sample, 2)
    # The two kept directions lie in the plane of the two big axes.
    assert np.allclose((projection.components[:, :2] ** 2).sum(axis=1), 1.0, atol=1e-3)
    assert np.allclose(np.linalg.norm(projection.project(sample), axis=1), 1.0, atol=1e-5)
    assert recall_at_k([[1, 2, 3], [4, 5, 6]], [[1, 2, 9], [4, 5, 6]]) == (2 / 3 + 1) / 2


def test_exact_top_k_on_float16_rows_finds_brute_forces_rows_and_copies_first() -> None:
    rows = unit_rows(np.random.default_rng(2).standard_normal((2_000, 64))).astype(np.float16)
    rows[40] = rows[7]
    found = exact_top_k(rows, rows[7], 12, exclude=7)
    scores = rows.astype(np.float32) @ rows[7].astype(np.float32)
    scores[7] = -np.inf
    assert found.positions[0] == 40 and found.similarities[0] == 1.0
    assert set(found.positions.tolist()) == set(np.argsort(-scores)[:12].tolist())
    assert np.all(np.diff(found.similarities) <= 0)
