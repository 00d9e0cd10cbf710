from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from app.ml.suspicion import SuspicionRanking, rank_suspicious

FLIP_RATE = 0.05


def gaussian_blobs(
    count: int, num_classes: int, features: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    centres = 1.6 * rng.standard_normal((num_classes, features))
    labels = rng.integers(0, num_classes, size=count)
    return centres[labels] + rng.standard_normal((count, features)), labels


def flip_some(labels: np.ndarray, num_classes: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    flipped = np.zeros(labels.size, dtype=bool)
    flipped[rng.choice(labels.size, size=round(FLIP_RATE * labels.size), replace=False)] = True
    return np.where(flipped, (labels + rng.integers(1, num_classes, size=labels.size)) % num_classes, labels), flipped


def cross_validated_probs(features: np.ndarray, labels: np.ndarray, num_classes: int, folds: int) -> np.ndarray:
    """Out-of-fold probabilities of linear discriminant analysis (Gaussian classes with a shared
    covariance, whose posterior is a multinomial logistic model), fitted on the noisy labels as a real model
    would be."""
    probs = np.zeros((labels.size, num_classes))
    fold_of = np.arange(labels.size) % folds
    for fold in range(folds):
        train, held_out = fold_of != fold, fold_of == fold
        x, y = features[train], labels[train]
        means = np.stack([x[y == c].mean(axis=0) for c in range(num_classes)])
        covariance = np.cov((x - means[y]).T) + 1e-6 * np.eye(features.shape[1])
        weights = np.linalg.solve(covariance, means.T)
        priors = np.bincount(y, minlength=num_classes) / y.size
        bias = -0.5 * np.einsum("cf,fc->c", means, weights) + np.log(priors)
        logits = features[held_out] @ weights + bias
        logits -= logits.max(axis=1, keepdims=True)
        probs[held_out] = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return probs


def noisy_problem(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    features, clean = gaussian_blobs(2000, num_classes=4, features=6, rng=rng)
    noisy, flipped = flip_some(clean, 4, rng)
    return cross_validated_probs(features, noisy, 4, folds=5), noisy, clean, flipped


def assert_well_formed(ranking: SuspicionRanking, labels: np.ndarray, num_classes: int) -> None:
    count = labels.size
    assert sorted(ranking.order.tolist()) == list(range(count))
    assert np.all(np.isfinite(ranking.scores))
    assert np.all((ranking.scores >= 0) & (ranking.scores <= 1))
    assert np.all(np.diff(ranking.scores[ranking.order]) <= 0)
    assert ranking.flagged.shape == ranking.suggested_labels.shape == (count,)
    assert np.all((ranking.suggested_labels >= 0) & (ranking.suggested_labels < num_classes))
    assert not np.any(ranking.suggested_labels == labels)
    assert ranking.estimated_issues.shape == (num_classes,)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_flipped_labels_come_first(seed: int) -> None:
    probs, noisy, clean, flipped = noisy_problem(seed)
    ranking = rank_suspicious(probs, noisy)
    assert_well_formed(ranking, noisy, 4)

    flips = int(flipped.sum())
    precision_at_flips = flipped[ranking.order[:flips]].mean()
    # A random list finds flips at the 5% base rate; the top of the ranking should be far better.
    assert precision_at_flips > 0.6
    # The flagged set also holds the model's own mistakes (these seeds give 86-95% accuracy), so its
    # precision is lower, but it should catch most flips.
    assert flipped[ranking.flagged].mean() > 0.25
    assert flipped[ranking.flagged].sum() > 0.8 * flips
    # For a found flip, the suggestion should mostly be the label it had before flipping.
    found = ranking.flagged & flipped
    assert (ranking.suggested_labels[found] == clean[found]).mean() > 0.8
    # Confident-joint estimate: at least most of the flips, at most the flips plus the model's own mistakes.
    model_mistakes = int((probs.argmax(axis=1) != clean).sum())
    assert 0.8 * flips <= ranking.estimated_issues.sum() <= flips + model_mistakes
    np.testing.assert_array_equal(np.bincount(noisy[ranking.flagged], minlength=4), ranking.estimated_issues)


def test_thresholds_are_the_mean_own_class_probability() -> None:
    probs, noisy, _, _ = noisy_problem(3)
    ranking = rank_suspicious(probs, noisy)
    for label in range(4):
        assert ranking.thresholds[label] == pytest.approx(probs[noisy == label, label].mean())


def test_ranking_follows_the_examples_when_rows_are_reordered() -> None:
    probs, noisy, _, _ = noisy_problem(4)
    permutation = np.random.default_rng(0).permutation(noisy.size)
    original = rank_suspicious(probs, noisy)
    reordered = rank_suspicious(probs[permutation], noisy[permutation])
    np.testing.assert_array_equal(reordered.scores, original.scores[permutation])
    np.testing.assert_array_equal(reordered.flagged, original.flagged[permutation])
    np.testing.assert_array_equal(reordered.suggested_labels, original.suggested_labels[permutation])
    np.testing.assert_array_equal(reordered.estimated_issues, original.estimated_issues)


def test_one_hot_predictions_flag_exactly_the_disagreements() -> None:
    labels = np.array([0, 0, 0, 1, 1, 1, 2, 2, 2, 2])
    predicted = np.array([0, 0, 1, 1, 1, 2, 2, 2, 2, 0])
    probs = np.eye(3)[predicted]
    ranking = rank_suspicious(probs, labels)
    assert_well_formed(ranking, labels, 3)
    disagree = predicted != labels
    np.testing.assert_array_equal(ranking.flagged, disagree)
    np.testing.assert_array_equal(ranking.scores, disagree.astype(float))
    np.testing.assert_array_equal(ranking.suggested_labels[disagree], predicted[disagree])
    assert set(ranking.order[: disagree.sum()].tolist()) == set(np.flatnonzero(disagree).tolist())


def test_ties_put_flagged_examples_first() -> None:
    # Class 0 has four examples the model calls class 1 with certainty, but only three can be flagged
    # (one example of a class always stays), so the fourth ties on score and must come after them.
    labels = np.array([0, 0, 0, 0, 1, 1])
    probs = np.eye(2)[[1, 1, 1, 1, 1, 1]]
    ranking = rank_suspicious(probs, labels)
    assert ranking.flagged.tolist() == [True, True, True, False, False, False]
    assert ranking.order[:4].tolist() == [0, 1, 2, 3]


def test_full_agreement_flags_nothing() -> None:
    labels = np.array([0, 1, 2, 1, 0])
    probs = np.full((5, 3), 0.1)
    probs[np.arange(5), labels] = 0.8
    ranking = rank_suspicious(probs, labels)
    assert not ranking.flagged.any()
    assert np.all(ranking.estimated_issues == 0)
    np.testing.assert_allclose(ranking.scores, 0.2)


def test_a_class_nobody_carries_gets_no_threshold_and_no_nan() -> None:
    labels = np.array([0, 0, 1, 1, 0])
    probs = np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8], [0.2, 0.7, 0.1], [0.6, 0.3, 0.1], [0.5, 0.4, 0.1]])
    ranking = rank_suspicious(probs, labels)
    assert_well_formed(ranking, labels, 3)
    assert np.isnan(ranking.thresholds[2])
    assert ranking.estimated_issues[2] == 0
    # Example 1 is never "confidently" class 2, but its most plausible other label still is.
    assert ranking.suggested_labels[1] == 2
    assert ranking.order[0] == 1


def test_two_classes() -> None:
    rng = np.random.default_rng(5)
    features, clean = gaussian_blobs(400, num_classes=2, features=3, rng=rng)
    noisy, flipped = flip_some(clean, 2, rng)
    ranking = rank_suspicious(cross_validated_probs(features, noisy, 2, folds=4), noisy)
    assert_well_formed(ranking, noisy, 2)
    np.testing.assert_array_equal(ranking.suggested_labels, 1 - noisy)
    assert flipped[ranking.order[: flipped.sum()]].mean() > 0.5


def test_rows_are_cleaned_up_before_ranking() -> None:
    labels = np.array([0, 1, 1])
    raw = np.array([[0.0, 0.0], [-0.2, 2.0], [3.0, 1.0]])  # all-zero row, negative entry, unnormalised
    ranking = rank_suspicious(raw, labels)
    assert_well_formed(ranking, labels, 2)
    np.testing.assert_allclose(ranking.scores, [0.5, 0.0, 0.75])


def test_empty_input() -> None:
    ranking = rank_suspicious(np.zeros((0, 3)), np.zeros(0, dtype=int))
    assert ranking.order.size == ranking.scores.size == ranking.flagged.size == 0
    assert np.all(np.isnan(ranking.thresholds))
    assert ranking.estimated_issues.tolist() == [0, 0, 0]


@pytest.mark.parametrize(
    ("probs", "labels"),
    [
        (np.array([[0.5, np.nan]]), [0]),
        (np.array([[np.inf, 0.5]]), [0]),
        (np.array([[1.0], [1.0]]), [0, 0]),
        (np.array([[0.5, 0.5]]), [2]),
        (np.array([[0.5, 0.5]]), [-1]),
        (np.array([[0.5, 0.5]]), [0, 1]),
        (np.zeros((2, 2, 2)), [0, 1]),
    ],
)
def test_rejects_bad_input(probs: np.ndarray, labels: list[int]) -> None:
    with pytest.raises(ValueError):
        rank_suspicious(probs, labels)


@settings(max_examples=60, deadline=None)
@given(
    data=st.integers(2, 5).flatmap(
        lambda k: st.tuples(
            hnp.arrays(np.float64, st.tuples(st.integers(1, 30), st.just(k)), elements=st.floats(0, 1)),
            st.just(k),
        )
    ),
    label_seed=st.integers(0, 2**32 - 1),
)
def test_any_probabilities_give_a_well_formed_ranking(data: tuple[np.ndarray, int], label_seed: int) -> None:
    probs, num_classes = data
    labels = np.random.default_rng(label_seed).integers(0, num_classes, size=(probs.shape[0],))
    ranking = rank_suspicious(probs, labels)
    assert_well_formed(ranking, labels, num_classes)
    class_sizes = np.bincount(labels, minlength=num_classes)
    assert np.all(ranking.estimated_issues <= np.maximum(class_sizes - 1, 0))
    assert np.all(np.bincount(labels[ranking.flagged], minlength=num_classes) <= ranking.estimated_issues)
