"""What a finished run stores, worked out from its class probabilities alone: per-subset metrics, dev per-class
numbers and confusion, the bias/variance diagnosis, and one prediction row per image. Pure: arrays in, plain
data out, so the training job only loads, fits and writes."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from app.ml import metrics


@dataclass(frozen=True)
class RunScores:
    metrics: dict[str, dict[str, Any]]  # subset -> count, accuracy, error, loss
    per_class: dict[str, dict[str, Any]]  # label name -> precision, recall, f1, support (on dev)
    confusion: dict[str, Any]  # {"labels": [...], "matrix": [[...]]} (on dev)
    diagnosis: dict[str, Any]


def score_run(
    probabilities: Mapping[str, npt.ArrayLike],
    labels: Mapping[str, npt.ArrayLike],
    label_names: Sequence[str],
    *,
    human_error: float = 0.0,
) -> RunScores:
    """Score class probabilities [N, C] per subset against class indices [N]; needs "train" and "dev"."""
    if "train" not in probabilities or "dev" not in probabilities:
        raise ValueError("scoring a run needs train and dev probabilities")
    subset_metrics: dict[str, dict[str, Any]] = {}
    for subset, probs in probabilities.items():
        m = metrics.subset_metrics(probs, labels[subset])
        subset_metrics[subset] = {"count": m.count, "accuracy": m.accuracy, "error": m.error, "loss": m.loss}
    classes = len(label_names)
    dev_predicted = np.asarray(probabilities["dev"]).argmax(axis=1)
    dev_labels = labels["dev"]
    per_class = {
        label_names[c.class_index]: {"precision": c.precision, "recall": c.recall, "f1": c.f1, "support": c.support}
        for c in metrics.per_class_metrics(dev_predicted, dev_labels, classes)
    }
    confusion = {
        "labels": list(label_names),
        "matrix": metrics.confusion_matrix(dev_predicted, dev_labels, classes).tolist(),
    }
    errors = {s: v["error"] for s, v in subset_metrics.items()}
    diagnosis = metrics.diagnose(
        train_error=errors["train"],
        dev_error=errors["dev"],
        human_error=human_error,
        train_dev_error=errors.get("train_dev"),
        test_error=errors.get("test"),
    )
    diagnosis_out = {
        "human_error": diagnosis.human_error,
        "gaps": {str(gap): value for gap, value in diagnosis.gaps().items()},
        "largest": str(diagnosis.largest) if diagnosis.largest else None,
        "advice": diagnosis.advice,
    }
    return RunScores(subset_metrics, per_class, confusion, diagnosis_out)


def prediction_rows(
    *,
    run_id: int,
    probabilities: Mapping[str, npt.ArrayLike],
    images: Mapping[str, Sequence[tuple[int, int]]],
    class_label_ids: Sequence[int],
) -> list[dict[str, Any]]:
    """One row per image: `images[subset]` lists (image_id, label_id) in the order of the probability rows;
    column k of the probabilities is the label `class_label_ids[k]`."""
    rows = []
    for subset, probs in probabilities.items():
        for (image_id, label_id), row in zip(images[subset], np.asarray(probs), strict=True):
            predicted = int(row.argmax())
            predicted_label_id = class_label_ids[predicted]
            rows.append(
                {
                    "run_id": run_id,
                    "image_id": image_id,
                    "subset": subset,
                    "label_id": label_id,
                    "predicted_label_id": predicted_label_id,
                    "confidence": float(row[predicted]),
                    "is_error": predicted_label_id != label_id,
                    "probs": np.asarray(row, dtype=np.float32).tobytes(),
                }
            )
    return rows
