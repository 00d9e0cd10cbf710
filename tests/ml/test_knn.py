from __future__ import annotations

import numpy as np
import pytest

from app.ml.knn import nearest_neighbours
from app.ml.similarity import unit_rows


def test_matches_brute_force_and_leaves_each_row_out() -> None:
    rows = unit_rows(np.random.default_rng(0).standard_normal((57, 6)))
    positions, similarities = nearest_neighbours(rows, 4, block=10)  # several blocks, the last one short
    full = rows @ rows.T
    np.fill_diagonal(full, -np.inf)
    expected = np.argsort(-full, axis=1, kind="stable")[:, :4]
    assert np.array_equal(positions, expected)
    assert np.allclose(similarities, np.take_along_axis(full, expected, axis=1), atol=1e-6)
    assert not (positions == np.arange(57)[:, None]).any()


def test_small_inputs_and_bad_input() -> None:
    assert nearest_neighbours(np.eye(1, 3), 5)[0].shape == (1, 0)
    positions, _ = nearest_neighbours(np.eye(3), 10)  # k above rows - 1: every other row
    assert positions.shape == (3, 2)
    with pytest.raises(ValueError, match="k"):
        nearest_neighbours(np.eye(3), 0)
    with pytest.raises(ValueError, match="2-d"):
        nearest_neighbours(np.ones(3), 1)
