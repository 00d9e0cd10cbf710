import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.ml.metrics import (
    GAP_ADVICE,
    NO_GAP_ADVICE,
    Gap,
    confusion_matrix,
    diagnose,
    per_class_metrics,
    rescore,
    subset_metrics,
)

# Labels and predictions of six images over three classes, worked out by hand below.
LABELS = [0, 0, 1, 1, 2, 2]
PREDICTED = [0, 1, 1, 1, 0, 2]


def test_confusion_matrix_counts_true_rows_against_predicted_columns() -> None:
    matrix = confusion_matrix(PREDICTED, LABELS, 3)

    assert matrix.tolist() == [
        [1, 1, 0],  # class 0: one right, one called class 1
        [0, 2, 0],  # class 1: both right
        [1, 0, 1],  # class 2: one called class 0, one right
    ]


def test_per_class_precision_recall_f1_by_hand() -> None:
    rows = per_class_metrics(PREDICTED, LABELS, 3)

    # class 0: predicted twice (1 right) -> P 1/2; occurs twice (1 found) -> R 1/2; F1 1/2
    # class 1: predicted three times (2 right) -> P 2/3; R 2/2; F1 = 2*(2/3)/(2/3+1) = 0.8
    # class 2: predicted once (right) -> P 1; R 1/2; F1 = 2*0.5/1.5 = 2/3
    assert [row.support for row in rows] == [2, 2, 2]
    assert [row.precision for row in rows] == pytest.approx([0.5, 2 / 3, 1.0])
    assert [row.recall for row in rows] == pytest.approx([0.5, 1.0, 0.5])
    assert [row.f1 for row in rows] == pytest.approx([0.5, 0.8, 2 / 3])


def test_class_never_predicted_or_absent_scores_zero_instead_of_dividing_by_zero() -> None:
    rows = per_class_metrics([0, 0], [0, 1], 3)

    assert (rows[1].precision, rows[1].recall, rows[1].f1) == (0.0, 0.0, 0.0)
    assert (rows[2].precision, rows[2].recall, rows[2].support) == (0.0, 0.0, 0)


def test_subset_metrics_accuracy_error_and_cross_entropy() -> None:
    probabilities = [[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.5, 0.5]]
    labels = [0, 1, 1, 0]

    metrics = subset_metrics(probabilities, labels)

    # argmax of [0.5, 0.5] is class 0, so it counts as right
    assert (metrics.count, metrics.correct) == (4, 3)
    assert metrics.accuracy == pytest.approx(0.75)
    assert metrics.error == pytest.approx(0.25)
    expected_loss = -(math.log(0.9) + math.log(0.8) + math.log(0.4) + math.log(0.5)) / 4
    assert metrics.loss == pytest.approx(expected_loss)


def test_subset_metrics_stays_finite_for_a_zero_probability_on_the_true_class() -> None:
    metrics = subset_metrics([[1.0, 0.0]], [1])

    assert metrics.loss is not None and math.isfinite(metrics.loss)
    assert metrics.error == 1.0


def test_empty_subset_has_no_accuracy() -> None:
    metrics = subset_metrics(np.zeros((0, 3)), np.zeros(0, dtype=int))

    assert metrics.count == 0 and math.isnan(metrics.accuracy)


def test_rescore_leaves_out_excluded_images_and_uses_corrected_labels() -> None:
    predicted = [0, 1, 1, 0, 2]
    corrected_labels = [0, 1, 0, 0, 1]  # image 2 and 4 were relabelled after review
    excluded = [False, False, False, False, True]  # image 4 was excluded as unusable

    metrics = rescore(predicted, corrected_labels, excluded)

    assert (metrics.count, metrics.correct) == (4, 3)
    assert metrics.error == pytest.approx(0.25)
    assert metrics.loss is None


def test_rescore_rejects_mismatched_lengths() -> None:
    with pytest.raises(ValueError):
        rescore([0, 1], [0, 1, 1], [False, False])


def test_diagnosis_worked_example_with_train_dev_and_test() -> None:
    diagnosis = diagnose(human_error=0.01, train_error=0.08, train_dev_error=0.10, dev_error=0.12, test_error=0.125)

    assert diagnosis.avoidable_bias == pytest.approx(0.07)
    assert diagnosis.variance == pytest.approx(0.02)
    assert diagnosis.data_mismatch == pytest.approx(0.02)
    assert diagnosis.dev_overfitting == pytest.approx(0.005)
    assert diagnosis.largest is Gap.AVOIDABLE_BIAS
    assert "bigger model" in diagnosis.advice


def test_diagnosis_without_train_dev_measures_variance_against_dev() -> None:
    diagnosis = diagnose(human_error=0.005, train_error=0.01, dev_error=0.11)

    assert diagnosis.variance == pytest.approx(0.10)
    assert diagnosis.data_mismatch is None and diagnosis.dev_overfitting is None
    assert diagnosis.largest is Gap.VARIANCE
    assert "more training data" in diagnosis.advice
    assert set(diagnosis.gaps()) == {Gap.AVOIDABLE_BIAS, Gap.VARIANCE}


@pytest.mark.parametrize(
    ("errors", "expected"),
    [
        ({"train_error": 0.02, "train_dev_error": 0.03, "dev_error": 0.15}, Gap.DATA_MISMATCH),
        ({"train_error": 0.02, "train_dev_error": 0.03, "dev_error": 0.04, "test_error": 0.12}, Gap.DEV_OVERFITTING),
    ],
)
def test_diagnosis_names_the_largest_gap_with_its_advice(errors: dict[str, float], expected: Gap) -> None:
    diagnosis = diagnose(human_error=0.01, **errors)

    assert diagnosis.largest is expected
    assert diagnosis.advice == GAP_ADVICE[expected]


def test_diagnosis_with_no_positive_gap_says_so() -> None:
    diagnosis = diagnose(human_error=0.05, train_error=0.04, dev_error=0.04)

    assert diagnosis.largest is None
    assert diagnosis.advice == NO_GAP_ADVICE


def test_diagnosis_rejects_percentages() -> None:
    with pytest.raises(ValueError, match="fraction"):
        diagnose(train_error=8.0, dev_error=10.0)


@given(
    st.integers(min_value=1, max_value=5).flatmap(
        lambda classes: st.lists(
            st.tuples(st.integers(0, classes - 1), st.integers(0, classes - 1)), min_size=1, max_size=40
        ).map(lambda pairs: (classes, pairs))
    )
)
def test_confusion_and_per_class_metrics_agree_with_accuracy(case: tuple[int, list[tuple[int, int]]]) -> None:
    classes, pairs = case
    predicted = [guess for guess, _ in pairs]
    labels = [truth for _, truth in pairs]

    matrix = confusion_matrix(predicted, labels, classes)
    rows = per_class_metrics(predicted, labels, classes)
    accuracy = rescore(predicted, labels, [False] * len(pairs)).accuracy

    assert matrix.sum() == len(pairs)
    assert np.trace(matrix) / len(pairs) == pytest.approx(accuracy)
    # Recall weighted by support is the overall accuracy.
    assert sum(row.recall * row.support for row in rows) / len(pairs) == pytest.approx(accuracy)
