"""The outlier check's kNN distances on a set too large for the exact path: read in chunks from float16, projected,
and still finding the image far from every other."""

from __future__ import annotations

import numpy as np

from app.health import logic, service


def test_projected_knn_distances_find_the_same_outlier_as_exact_search() -> None:
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(20, 256))
    vectors = centres[rng.integers(0, 20, 6_000)] + 0.3 * rng.normal(size=(6_000, 256))
    vectors[17] = rng.normal(size=256) * 5
    vectors = (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float16)
    assert service._EXACT_OUTLIER_LIMIT < 6_000  # the projected path
    rows = np.arange(1, 6_000)  # row 0 belongs to a deleted image: skipped
    projected = service._knn_distances(vectors, rows)
    exact = logic.knn_mean_distance(np.asarray(vectors[rows], dtype=np.float32))
    assert projected.shape == (5_999,)
    assert int(np.argmax(projected)) == int(np.argmax(exact)) == 16
    assert 16 in logic.outliers(projected).positions.tolist()
    assert np.corrcoef(projected, exact)[0, 1] > 0.9
