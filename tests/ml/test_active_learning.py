"""The pure ranking of pool images: uncertainty measures, k-center greedy, hybrid batches."""

from __future__ import annotations

import numpy as np
import pytest

from app.ml import active_learning as al


def test_margin_and_entropy_order_rows_by_how_unsure_the_model_is() -> None:
    probs = np.array([[0.98, 0.01, 0.01], [0.5, 0.45, 0.05], [1 / 3, 1 / 3, 1 / 3]])
    assert np.allclose(al.margins(probs), [0.97, 0.05, 0.0])
    assert np.allclose(al.uncertainty(probs), [0.03, 0.95, 1.0])
    entropy = al.uncertainty(probs, measure="entropy")
    assert entropy[0] < entropy[1] < entropy[2] and entropy[2] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="margin"):
        al.uncertainty(probs, measure="bald")


def test_k_center_greedy_covers_clusters_before_repeating_one() -> None:
    rng = np.random.default_rng(0)
    centres = np.array([[0, 0], [10, 0], [0, 10], [10, 10]], dtype=np.float32)
    points = np.concatenate([c + rng.normal(0, 0.1, (25, 2)) for c in centres]).astype(np.float32)
    picked = al.greedy_pick(points, 4).indices
    assert sorted(set(picked // 25)) == [0, 1, 2, 3]  # one per cluster
    assert len(set(picked.tolist())) == 4


def test_labelled_images_count_as_centres_already_covered() -> None:
    points = np.array([[0, 0], [0.1, 0], [5, 5], [5.1, 5]], dtype=np.float32)
    picked = al.greedy_pick(points, 1, labelled=np.array([[0, 0]], dtype=np.float32)).indices
    assert picked[0] in (2, 3)


def test_uncertainty_picks_the_hardest_and_hybrid_spreads_them() -> None:
    # 20 near-copies of one hard case, and 20 spread-out images that are almost as hard.
    rng = np.random.default_rng(1)
    copies = np.tile([[1.0, 0.0, 0.0]], (20, 1)) + rng.normal(0, 0.001, (20, 3))
    spread = rng.normal(0, 1.0, (20, 3))
    embeddings = np.concatenate([copies, spread]).astype(np.float32)
    probs = np.concatenate([np.tile([[0.5, 0.5]], (20, 1)), np.tile([[0.55, 0.45]], (20, 1))])
    by_uncertainty = al.rank_pool(probs, embeddings, strategy="uncertainty", limit=10)
    assert set(by_uncertainty.indices.tolist()) <= set(range(20))
    assert np.all(np.diff(by_uncertainty.scores) <= 0)
    hybrid = al.rank_pool(probs, embeddings, strategy="hybrid", limit=10)
    copies_in_batch = int(np.count_nonzero(hybrid.indices < 20))
    assert 1 <= copies_in_batch <= 3  # the hard case is in the batch, but not ten times
    assert len(set(hybrid.indices.tolist())) == 10
    diversity = al.rank_pool(probs, embeddings, strategy="diversity", limit=5)
    assert len(set(diversity.indices.tolist())) == 5


def test_limits_larger_than_the_pool_and_bad_input() -> None:
    probs = np.array([[0.6, 0.4], [0.9, 0.1]])
    emb = np.zeros((2, 4), dtype=np.float32)
    for strategy in al.STRATEGIES:
        assert sorted(al.rank_pool(probs, emb, strategy=strategy, limit=10).indices.tolist()) == [0, 1]
    empty = al.rank_pool(np.zeros((0, 2)), np.zeros((0, 4)), strategy="hybrid", limit=5)
    assert empty.indices.size == 0
    with pytest.raises(ValueError, match="strategy"):
        al.rank_pool(probs, emb, strategy="random", limit=1)
    with pytest.raises(ValueError, match="one row per pool image"):
        al.rank_pool(probs, emb[:1], strategy="hybrid", limit=1)


def test_projection_keeps_distances_roughly_and_is_the_same_for_every_call() -> None:
    rng = np.random.default_rng(2)
    features = rng.normal(size=(50, 1280)).astype(np.float32)
    a, b = al.project_features(features), al.project_features(features)
    assert a.shape == (50, al.EMBEDDING_DIMS) and np.array_equal(a, b)
    normed = features / np.linalg.norm(features, axis=1, keepdims=True)
    original = np.linalg.norm(normed[0] - normed[1:], axis=1)
    projected = np.linalg.norm(a[0] - a[1:], axis=1)
    assert np.median(np.abs(projected / original - 1)) < 0.15
    small = al.project_features(features[:, :8])
    assert small.shape == (50, 8)
