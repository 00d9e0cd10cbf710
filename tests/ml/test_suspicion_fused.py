from __future__ import annotations

import numpy as np
import pytest

from app.ml.suspicion import fused_suspicion, knn_label_vote


def test_vote_counts_neighbours_labels_with_smoothing() -> None:
    vote = knn_label_vote([[0, 0, 1, -1]], 3, smoothing=0.0)
    assert vote[0] == pytest.approx([2 / 3, 1 / 3, 0.0])
    smoothed = knn_label_vote([[0, 0, 1, -1]], 3, smoothing=3.0)
    assert smoothed[0] == pytest.approx([3 / 6, 2 / 6, 1 / 6])


def test_vote_weights_by_similarity_and_ignores_negative_weights() -> None:
    vote = knn_label_vote([[0, 1, 2]], 3, neighbour_weights=[[0.9, 0.1, -0.5]], smoothing=0.0)
    assert vote[0] == pytest.approx([0.9, 0.1, 0.0])


def test_an_example_without_neighbours_gets_a_uniform_vote() -> None:
    assert knn_label_vote([[-1, -1]], 4)[0] == pytest.approx([0.25] * 4)


def test_vote_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="below 2"):
        knn_label_vote([[0, 2]], 2)
    with pytest.raises(ValueError, match="shape"):
        knn_label_vote([[0, 1]], 2, neighbour_weights=[[1.0]])
    with pytest.raises(ValueError, match="NaN"):
        knn_label_vote([[0, 1]], 2, neighbour_weights=[[1.0, np.nan]])


def test_fused_mixes_self_confidence_and_vote() -> None:
    probs = [[0.9, 0.1], [0.9, 0.1]]
    vote = [[0.9, 0.1], [0.1, 0.9]]  # the second image's neighbours disagree with its label 0
    scores = fused_suspicion(probs, [0, 0], vote, vote_weight=0.5)
    assert scores == pytest.approx([0.1, 0.5])
    assert fused_suspicion(probs, [0, 0], vote, vote_weight=0.0) == pytest.approx([0.1, 0.1])
    assert fused_suspicion(probs, [0, 0], vote, vote_weight=1.0) == pytest.approx([0.1, 0.9])


def test_neighbours_catch_a_flip_the_model_is_blind_to() -> None:
    """A class with an odd corner: the model is unsure about all of it, the neighbours know which one is wrong."""
    probs = np.tile([0.6, 0.4], (6, 1))
    labels = np.array([0, 0, 0, 0, 0, 1])  # the last one's neighbours all say 0: a flipped label
    vote = knn_label_vote(np.zeros((6, 5), dtype=int), 2)
    scores = fused_suspicion(probs, labels, vote)
    assert int(np.argmax(scores)) == 5
    assert scores[5] > scores[:5].max()


def test_fused_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="shape"):
        fused_suspicion([[0.5, 0.5]], [0], [[0.2, 0.3, 0.5]])
    with pytest.raises(ValueError, match="vote_weight"):
        fused_suspicion([[0.5, 0.5]], [0], [[0.5, 0.5]], vote_weight=1.5)
    with pytest.raises(ValueError, match="labels"):
        fused_suspicion([[0.5, 0.5]], [2], [[0.5, 0.5]])
