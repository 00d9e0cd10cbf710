from __future__ import annotations

import numpy as np
import pytest

from app.ml.embedding_map import MIN_UMAP_ROWS, layout


def _blobs(count: int, *, dims: int = 64, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = 6.0 * rng.standard_normal((3, dims))
    labels = rng.integers(3, size=count)
    return centres[labels] + rng.standard_normal((count, dims)), labels


def _neighbour_agreement(xy: np.ndarray, labels: np.ndarray) -> float:
    """Share of points whose nearest other point on the map carries the same blob."""
    distances = ((xy[:, None, :] - xy[None, :, :]) ** 2).sum(axis=2)
    np.fill_diagonal(distances, np.inf)
    return float((labels[distances.argmin(axis=1)] == labels).mean())


def test_small_sets_get_the_principal_plane_scaled_into_the_unit_square() -> None:
    vectors, labels = _blobs(MIN_UMAP_ROWS - 1)
    xy = layout(vectors)
    assert xy.shape == (vectors.shape[0], 2) and xy.dtype == np.float32
    assert xy.min() >= 0.0 and xy.max() <= 1.0 and np.isclose(xy.max(axis=0), 1.0).any()
    assert _neighbour_agreement(xy, labels) > 0.95


def test_edge_cases() -> None:
    assert layout(np.zeros((0, 8))).shape == (0, 2)
    assert np.allclose(layout(np.ones((1, 8))), 0.5)  # one point: the centre
    assert np.allclose(layout(np.ones((5, 8))), 0.5)  # all alike: the centre, no division by zero
    with pytest.raises(ValueError, match="2-d"):
        layout(np.zeros(8))
    with pytest.raises(ValueError, match="sample_size"):
        layout(np.zeros((3, 8)), sample_size=1)


@pytest.mark.slow
def test_umap_fitted_on_a_sample_places_the_rest_by_transform_beside_their_kind() -> None:
    vectors, labels = _blobs(400, seed=1)
    xy = layout(vectors, sample_size=150, seed=0)  # 150 fitted, 250 transformed
    assert xy.shape == (400, 2) and xy.min() >= 0.0 and xy.max() <= 1.0
    assert _neighbour_agreement(xy, labels) > 0.95
    assert np.array_equal(xy, layout(vectors, sample_size=150, seed=0))  # a seed makes it repeatable
