"""Which given labels look wrong: a suspicion ranking in the style of confident learning.

Follows Northcutt, Jiang & Chuang, "Confident Learning: Estimating Uncertainty in Dataset Labels" (JAIR
2021), implemented here from the paper: cleanlab is AGPL, so only ``bench/label_noise.py`` uses it, to
compare.

Inputs are out-of-sample predicted probabilities (the model must not have trained on the examples it scores)
and the given labels.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt


@dataclass(frozen=True, eq=False)
class SuspicionRanking:
    """Per-example arrays are in input order; ``order`` lists input indices from most to least suspicious.

    ``scores`` are in [0, 1] (1 = the given label looks certainly wrong); ``order`` sorts them descending,
    ties flagged first, then by input index. ``flagged`` marks the estimated label issues (their number per
    class comes from the confident joint). ``suggested_labels`` holds each example's most plausible other
    label.
    ``thresholds`` are the per-class confidence thresholds (NaN for a class nobody carries), and
    ``estimated_issues`` is the estimated number of wrong labels per given class.
    """

    order: npt.NDArray[np.intp]
    scores: npt.NDArray[np.float64]
    flagged: npt.NDArray[np.bool_]
    suggested_labels: npt.NDArray[np.intp]
    thresholds: npt.NDArray[np.float64]
    estimated_issues: npt.NDArray[np.intp]


def rank_suspicious(probs: npt.ArrayLike, labels: npt.ArrayLike) -> SuspicionRanking:
    """Rank examples by how likely their given label is wrong.

    1. Score: self-confidence, ``1 - p[given]``. For out-of-sample, roughly calibrated probabilities and
       labels flipped at random this ranking is Bayes-optimal; reweighting rows by the class thresholds below
       did not improve it on the blobs of ``bench/label_noise.py`` and hurt with unequal classes.
    2. Per-class threshold ``t_j``: the mean ``p_j`` over examples labelled ``j`` (how confident the model
       usually is about its own class). A class nobody carries gets no threshold and is never "confident".
    3. Confident joint: an example labelled ``i`` counts towards ``C[i, j]`` for the class ``j`` with the
       highest ``p_j`` among those with ``p_j >= t_j``; off-diagonal entries are label-issue candidates, and
       ``j`` is their suggested label (for the others it is the most probable class besides the given one).
       Each row is calibrated to the number of examples labelled ``i``, which gives the estimated number of
       wrong labels ``n_i``.
    4. Prune by class: the ``n_i`` most suspicious examples labelled ``i`` are flagged, skipping those whose
       most probable class is the given one and always keeping at least one example per class.

    ``probs`` rows are clipped to be non-negative and renormalised (an all-zero row counts as uniform);
    NaN or infinite inputs are rejected.
    """
    probabilities = _normalised_rows(probs)
    given = np.asarray(labels, dtype=np.int64).ravel()
    count, num_classes = probabilities.shape
    if given.shape != (count,):
        raise ValueError(f"expected {count} labels, got {given.shape[0]}")
    if num_classes < 2:
        raise ValueError("suspicion needs at least two classes")
    if count and (given.min() < 0 or given.max() >= num_classes):
        raise ValueError(f"labels must be in [0, {num_classes})")

    rows = np.arange(count)
    class_sizes = np.bincount(given, minlength=num_classes)
    own_probability = probabilities[rows, given]
    own_sums = np.bincount(given, weights=own_probability, minlength=num_classes)
    thresholds = np.divide(own_sums, class_sizes, out=np.full(num_classes, np.nan), where=class_sizes > 0)

    scores = 1.0 - own_probability
    by_score = np.lexsort((rows, -scores))

    confident_class = _confident_class(probabilities, thresholds)
    is_candidate = (confident_class >= 0) & (confident_class != given)
    estimated_issues = _estimated_issues_per_class(given, confident_class, class_sizes)

    flagged = np.zeros(count, dtype=bool)
    model_disagrees = probabilities.argmax(axis=1) != given
    flag_budget = estimated_issues.copy()
    for index in by_score[model_disagrees[by_score]]:
        label = given[index]
        if flag_budget[label] > 0:
            flagged[index] = True
            flag_budget[label] -= 1
    # Equal scores are common with saturated (one-hot) probabilities; the estimated issues go first then.
    order = np.lexsort((rows, ~flagged, -scores)).astype(np.intp)

    others = probabilities.copy()
    others[rows, given] = -1.0
    suggested = np.where(is_candidate, confident_class, others.argmax(axis=1)).astype(np.intp)
    return SuspicionRanking(
        order=order,
        scores=scores,
        flagged=flagged,
        suggested_labels=suggested,
        thresholds=thresholds,
        estimated_issues=estimated_issues.astype(np.intp),
    )


def _normalised_rows(probs: npt.ArrayLike) -> npt.NDArray[np.float64]:
    probabilities = np.array(probs, dtype=np.float64, ndmin=2)
    if probabilities.ndim != 2:
        raise ValueError("probs must be a 2-d array (examples x classes)")
    if not np.all(np.isfinite(probabilities)):
        raise ValueError("probs must not contain NaN or infinite values")
    np.clip(probabilities, 0.0, None, out=probabilities)
    row_sums = probabilities.sum(axis=1, keepdims=True)
    uniform = 1.0 / max(probabilities.shape[1], 1)
    return np.divide(probabilities, row_sums, out=np.full_like(probabilities, uniform), where=row_sums > 0)


def _confident_class(
    probabilities: npt.NDArray[np.float64], thresholds: npt.NDArray[np.float64]
) -> npt.NDArray[np.int64]:
    """Per example, the most probable class among those at or above their threshold; -1 when there is none."""
    above = probabilities >= np.where(np.isnan(thresholds), np.inf, thresholds)
    masked = np.where(above, probabilities, -1.0)
    return np.where(above.any(axis=1), masked.argmax(axis=1), -1).astype(np.int64)


def _estimated_issues_per_class(
    given: npt.NDArray[np.int64], confident_class: npt.NDArray[np.int64], class_sizes: npt.NDArray[np.int64]
) -> npt.NDArray[np.int64]:
    num_classes = class_sizes.size
    counted = confident_class >= 0
    confident_joint = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(confident_joint, (given[counted], confident_class[counted]), 1)
    row_totals = confident_joint.sum(axis=1)
    off_diagonal = row_totals - np.diagonal(confident_joint)
    # Calibrate each row to the class size: the counted examples stand for all examples with that label.
    off_share = np.divide(off_diagonal, row_totals, out=np.zeros(num_classes), where=row_totals > 0)
    estimated = np.rint(off_share * class_sizes).astype(np.int64)
    return np.asarray(np.minimum(estimated, np.maximum(class_sizes - 1, 0)), dtype=np.int64)


# ---- fused with the embedding neighbours' vote ---------------------------------------------------------------

DEFAULT_VOTE_WEIGHT = 0.5
_VOTE_SMOOTHING = 1.0


def knn_label_vote(
    neighbour_labels: npt.ArrayLike,
    num_classes: int,
    *,
    neighbour_weights: npt.ArrayLike | None = None,
    smoothing: float = _VOTE_SMOOTHING,
) -> npt.NDArray[np.float64]:
    """Per example, the share of its nearest labelled neighbours' (weighted) votes for each class.

    ``neighbour_labels`` is examples x k class indices, ``-1`` where a neighbour is missing or unlabelled;
    ``neighbour_weights`` (same shape, e.g. cosine similarities) weight the votes, negatives count as 0.
    ``smoothing`` adds that much uniform vote, so an example with few or no neighbours leans on the model
    instead of a single neighbour's say (with none at all the vote is uniform).
    """
    given = np.array(neighbour_labels, dtype=np.int64, ndmin=2)
    if given.ndim != 2:
        raise ValueError("neighbour_labels must be a 2-d array (examples x neighbours)")
    if given.size and given.max() >= num_classes:
        raise ValueError(f"neighbour labels must be below {num_classes} (or -1 for none)")
    weights = np.ones(given.shape) if neighbour_weights is None else np.array(neighbour_weights, dtype=np.float64)
    if weights.shape != given.shape:
        raise ValueError("neighbour_weights must have the shape of neighbour_labels")
    if not np.all(np.isfinite(weights)):
        raise ValueError("neighbour_weights must not contain NaN or infinite values")
    weights = np.where(given >= 0, np.clip(weights, 0.0, None), 0.0)
    votes = np.zeros((given.shape[0], num_classes))
    rows = np.repeat(np.arange(given.shape[0]), given.shape[1])
    counted = given.ravel() >= 0
    np.add.at(votes, (rows[counted], given.ravel()[counted]), weights.ravel()[counted])
    votes += smoothing / num_classes
    return np.asarray(votes / votes.sum(axis=1, keepdims=True), dtype=np.float64)


def fused_suspicion(
    probs: npt.ArrayLike, labels: npt.ArrayLike, vote: npt.ArrayLike, *, vote_weight: float = DEFAULT_VOTE_WEIGHT
) -> npt.NDArray[np.float64]:
    """Suspicion in [0, 1] from two witnesses: 1 - ((1 - w) * p[given] + w * vote[given]).

    ``probs`` are the model's out-of-sample probabilities (self-confidence, as in ``rank_suspicious``) and
    ``vote`` the nearest labelled neighbours' shares from ``knn_label_vote`` (SimiFeat / Encord style). The
    two err differently: the model smooths over a class's odd corners that the neighbours know, the neighbours
    are noisy where the embedding mixes classes that the model separates; averaging them ranks flipped labels
    better than either alone in ``bench/label_noise.py``.
    """
    if not 0.0 <= vote_weight <= 1.0:
        raise ValueError("vote_weight must be between 0 and 1")
    probabilities = _normalised_rows(probs)
    shares = _normalised_rows(vote)
    given = np.asarray(labels, dtype=np.int64).ravel()
    count, num_classes = probabilities.shape
    if shares.shape != probabilities.shape:
        raise ValueError(f"vote must have the shape of probs {probabilities.shape}, got {shares.shape}")
    if given.shape != (count,):
        raise ValueError(f"expected {count} labels, got {given.shape[0]}")
    if count and (given.min() < 0 or given.max() >= num_classes):
        raise ValueError(f"labels must be in [0, {num_classes})")
    rows = np.arange(count)
    agreement = (1.0 - vote_weight) * probabilities[rows, given] + vote_weight * shares[rows, given]
    return np.asarray(np.clip(1.0 - agreement, 0.0, 1.0), dtype=np.float64)
