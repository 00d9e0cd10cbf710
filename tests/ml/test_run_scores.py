"""The pure scoring step of a training run: metrics per subset, dev per-class numbers, confusion, diagnosis and
the prediction rows, from probability arrays alone."""

from __future__ import annotations

import math

import numpy as np
import pytest

from app.ml.run_scores import prediction_rows, score_run

NAMES = ["cat", "dog"]


def _onehot(predicted: list[int], confidence: float = 0.9) -> np.ndarray:
    probs = np.full((len(predicted), 2), 1 - confidence, dtype=np.float32)
    probs[np.arange(len(predicted)), predicted] = confidence
    return probs


def test_scores_every_subset_and_diagnoses_the_largest_gap() -> None:
    probabilities = {
        "train": _onehot([0, 1, 0, 1]),  # all right
        "dev": _onehot([0, 0, 0, 1]),  # one dog called a cat
    }
    labels = {"train": np.array([0, 1, 0, 1]), "dev": np.array([0, 1, 0, 1])}
    scores = score_run(probabilities, labels, NAMES, human_error=0.0)
    assert scores.metrics["train"]["accuracy"] == 1.0
    assert scores.metrics["dev"] == {
        "count": 4,
        "accuracy": 0.75,
        "error": 0.25,
        "loss": pytest.approx(-(3 * math.log(0.9) + math.log(0.1)) / 4, rel=1e-6),
    }
    assert scores.confusion == {"labels": NAMES, "matrix": [[2, 0], [1, 1]]}
    assert scores.per_class["dog"]["recall"] == 0.5 and scores.per_class["dog"]["support"] == 2
    assert scores.per_class["cat"]["precision"] == pytest.approx(2 / 3)
    assert scores.diagnosis["largest"] == "variance"
    assert scores.diagnosis["gaps"]["variance"] == pytest.approx(0.25)
    assert "test" not in scores.metrics


def test_train_dev_and_test_enter_the_diagnosis_when_present() -> None:
    right, wrong = _onehot([0, 1]), _onehot([1, 0])
    labels = {s: np.array([0, 1]) for s in ("train", "train_dev", "dev", "test")}
    probabilities = {"train": right, "train_dev": right, "dev": wrong, "test": wrong}
    scores = score_run(probabilities, labels, NAMES, human_error=0.0)
    assert scores.diagnosis["largest"] == "data_mismatch"
    assert set(scores.diagnosis["gaps"]) == {"avoidable_bias", "variance", "data_mismatch", "dev_overfitting"}


def test_scoring_needs_train_and_dev() -> None:
    with pytest.raises(ValueError, match="train and dev"):
        score_run({"train": _onehot([0])}, {"train": np.array([0])}, NAMES)


def test_prediction_rows_map_columns_to_label_ids_and_flag_errors() -> None:
    probabilities = {"dev": np.array([[0.2, 0.8], [0.7, 0.3]], dtype=np.float32)}
    rows = prediction_rows(
        run_id=7, probabilities=probabilities, images={"dev": [(101, 11), (102, 11)]}, class_label_ids=[11, 12]
    )
    outcomes = [(r["image_id"], r["predicted_label_id"], r["is_error"]) for r in rows]
    assert outcomes == [(101, 12, True), (102, 11, False)]
    assert rows[0]["confidence"] == pytest.approx(0.8)
    assert rows[0]["run_id"] == 7 and rows[0]["subset"] == "dev" and rows[0]["label_id"] == 11
    assert np.frombuffer(rows[1]["probs"], dtype=np.float32).tolist() == pytest.approx([0.7, 0.3])


def test_prediction_rows_refuse_a_count_mismatch() -> None:
    with pytest.raises(ValueError):
        prediction_rows(
            run_id=1, probabilities={"dev": _onehot([0, 1])}, images={"dev": [(1, 11)]}, class_label_ids=[11, 12]
        )
