"""Evaluation numbers for a run, and the bias/variance diagnosis that says what to try next.

The diagnosis follows Andrew Ng's reading of errors (all as fractions in 0..1): with human-level error h,
avoidable bias = train - h; variance = train_dev - train (dev - train when there is no train-dev set);
data mismatch = dev - train_dev (only with a train-dev set); overfitting to dev = test - dev. The largest gap
names the next step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum

import numpy as np
import numpy.typing as npt

# Probabilities are clipped before the log so one confident mistake cannot make the loss infinite.
_PROBABILITY_FLOOR = 1e-12


@dataclass(frozen=True)
class SubsetMetrics:
    count: int
    correct: int
    accuracy: float  # NaN for an empty subset
    error: float
    loss: float | None  # mean cross-entropy; None when only predicted classes were given


@dataclass(frozen=True)
class ClassMetrics:
    class_index: int
    precision: float  # 0.0 when the class was never predicted
    recall: float  # 0.0 when the class never occurs
    f1: float
    support: int  # images whose true label is this class


def subset_metrics(probabilities: npt.ArrayLike, labels: npt.ArrayLike) -> SubsetMetrics:
    """Accuracy, error and mean cross-entropy of class probabilities [N, C] against labels [N]."""
    probs = np.asarray(probabilities, dtype=np.float64)
    truth = _labels(labels)
    if probs.ndim != 2 or probs.shape[0] != truth.shape[0]:
        raise ValueError(f"expected probabilities [N, C] for {truth.shape[0]} labels, got {probs.shape}")
    if truth.size and truth.max() >= probs.shape[1]:
        raise ValueError("a label is outside the probability columns")
    counts = _counts(probs.argmax(axis=1).astype(np.int64), truth)
    if not truth.size:
        return counts
    picked = probs[np.arange(truth.size), truth]
    loss = float(-np.log(np.clip(picked, _PROBABILITY_FLOOR, 1.0)).mean())
    return SubsetMetrics(counts.count, counts.correct, counts.accuracy, counts.error, loss)


def rescore(predicted: npt.ArrayLike, labels: npt.ArrayLike, excluded_mask: npt.ArrayLike) -> SubsetMetrics:
    """Accuracy and error of fixed predictions against (corrected) labels, leaving out excluded images."""
    guesses, truth = _labels(predicted), _labels(labels)
    excluded = np.asarray(excluded_mask, dtype=bool)
    if not guesses.shape == truth.shape == excluded.shape:
        raise ValueError("predicted, labels and excluded_mask must have the same length")
    return _counts(guesses[~excluded], truth[~excluded])


def confusion_matrix(predicted: npt.ArrayLike, labels: npt.ArrayLike, num_classes: int) -> npt.NDArray[np.int64]:
    """Counts [true class, predicted class]."""
    guesses, truth = _labels(predicted), _labels(labels)
    if guesses.shape != truth.shape:
        raise ValueError("predicted and labels must have the same length")
    if guesses.size and max(guesses.max(), truth.max()) >= num_classes:
        raise ValueError(f"class indices must be below {num_classes}")
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(matrix, (truth, guesses), 1)
    return matrix


def per_class_metrics(predicted: npt.ArrayLike, labels: npt.ArrayLike, num_classes: int) -> list[ClassMetrics]:
    matrix = confusion_matrix(predicted, labels, num_classes)
    true_positives = np.diag(matrix)
    predicted_totals, actual_totals = matrix.sum(axis=0), matrix.sum(axis=1)
    rows = []
    for index in range(num_classes):
        hits = int(true_positives[index])
        precision = hits / predicted_totals[index] if predicted_totals[index] else 0.0
        recall = hits / actual_totals[index] if actual_totals[index] else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        support = int(actual_totals[index])
        rows.append(ClassMetrics(index, float(precision), float(recall), float(f1), support))
    return rows


class Gap(StrEnum):
    AVOIDABLE_BIAS = "avoidable_bias"
    VARIANCE = "variance"
    DATA_MISMATCH = "data_mismatch"
    DEV_OVERFITTING = "dev_overfitting"


GAP_ADVICE = {
    Gap.AVOIDABLE_BIAS: "Reduce bias: train a bigger model, train longer, or try a better architecture.",
    Gap.VARIANCE: "Reduce variance: get more training data, add regularisation or augmentation.",
    Gap.DATA_MISMATCH: "Reduce data mismatch: make the training data more like the target data, or collect "
    "more target data for training.",
    Gap.DEV_OVERFITTING: "The dev set has been overfitted: use a bigger dev set (and refresh it).",
}
NO_GAP_ADVICE = "No gap stands out: the model is close to human-level performance on every subset."


@dataclass(frozen=True)
class Diagnosis:
    human_error: float
    avoidable_bias: float
    variance: float
    data_mismatch: float | None  # only with a train-dev set
    dev_overfitting: float | None  # only with a test error
    largest: Gap | None  # None when no gap is positive
    advice: str

    def gaps(self) -> dict[Gap, float]:
        values = {
            Gap.AVOIDABLE_BIAS: self.avoidable_bias,
            Gap.VARIANCE: self.variance,
            Gap.DATA_MISMATCH: self.data_mismatch,
            Gap.DEV_OVERFITTING: self.dev_overfitting,
        }
        return {gap: value for gap, value in values.items() if value is not None}


def diagnose(
    *,
    train_error: float,
    dev_error: float,
    human_error: float = 0.0,
    train_dev_error: float | None = None,
    test_error: float | None = None,
) -> Diagnosis:
    """Split the error into its gaps and name the largest one with the standard advice."""
    for name, value in (
        ("train_error", train_error),
        ("dev_error", dev_error),
        ("human_error", human_error),
        ("train_dev_error", train_dev_error),
        ("test_error", test_error),
    ):
        if value is not None and not (0.0 <= value <= 1.0):
            raise ValueError(f"{name} must be a fraction between 0 and 1, got {value}")
    variance_reference = dev_error if train_dev_error is None else train_dev_error
    avoidable_bias = train_error - human_error
    variance = variance_reference - train_error
    data_mismatch = None if train_dev_error is None else dev_error - train_dev_error
    dev_overfitting = None if test_error is None else test_error - dev_error
    candidates = {
        Gap.AVOIDABLE_BIAS: avoidable_bias,
        Gap.VARIANCE: variance,
        Gap.DATA_MISMATCH: data_mismatch,
        Gap.DEV_OVERFITTING: dev_overfitting,
    }
    positive = {gap: value for gap, value in candidates.items() if value is not None and value > 0}
    largest = max(positive, key=lambda gap: positive[gap]) if positive else None
    return Diagnosis(
        human_error=human_error,
        avoidable_bias=avoidable_bias,
        variance=variance,
        data_mismatch=data_mismatch,
        dev_overfitting=dev_overfitting,
        largest=largest,
        advice=GAP_ADVICE[largest] if largest is not None else NO_GAP_ADVICE,
    )


def _labels(values: npt.ArrayLike) -> npt.NDArray[np.int64]:
    array = np.asarray(values)
    if array.ndim != 1:
        raise ValueError(f"expected a 1-D array of class indices, got shape {array.shape}")
    if array.size and (not np.issubdtype(array.dtype, np.integer) or array.min() < 0):
        raise ValueError("class indices must be non-negative integers")
    return array.astype(np.int64)


def _counts(guesses: npt.NDArray[np.int64], truth: npt.NDArray[np.int64]) -> SubsetMetrics:
    count = int(truth.size)
    correct = int((guesses == truth).sum())
    accuracy = correct / count if count else math.nan
    return SubsetMetrics(count=count, correct=correct, accuracy=accuracy, error=1.0 - accuracy, loss=None)
