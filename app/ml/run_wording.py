"""How a run's figures read on its page: one line per diagnosis gap (negative gaps explained), and the
timings in words instead of their storage keys."""

from __future__ import annotations

from collections.abc import Mapping

GAP_MEANING = {
    "avoidable_bias": "train error − human-level error",
    "variance": "held-out error − train error",
    "data_mismatch": "dev error − train-dev error",
    "dev_overfitting": "test error − dev error",
}
NEGATIVE_GAP_NOTES = {
    "avoidable_bias": "Negative: train error is below human-level error; the model may be memorising the training "
    "set, or the human-level figure is set too high.",
    "variance": "Negative: held-out error is below train error; the training images are harder for the model "
    "(augmentation, label noise in train, or a small held-out set); no variance to reduce.",
    "data_mismatch": "Negative: dev error is below train-dev error; the target data is no harder than the "
    "training distribution, so there is no mismatch to address.",
    "dev_overfitting": "Negative: test error is below dev error; no sign of overfitting to dev (small sets "
    "differ by chance).",
}
TIMING_WORDS = {
    "load_backbone_s": "Loading the backbone",
    "features_s": "Feature extraction",
    "training_s": "Training",
    "total_s": "Total",
    "extracted_train": "Train images through the backbone",
    "extracted_train_dev": "Train-dev images through the backbone",
    "extracted_dev": "Dev images through the backbone",
    "extracted_test": "Test images through the backbone",
    "device": "Device",
    "feature_precision": "Feature precision",
}


def gap_note(gap: str, value: float, *, has_train_dev: bool = False) -> str:
    """One line: what the gap measures, and what a negative value means."""
    meaning = GAP_MEANING.get(gap, "")
    if gap == "variance":
        meaning = "train-dev error − train error" if has_train_dev else "dev error − train error (no train-dev set)"
    if value < 0 and gap in NEGATIVE_GAP_NOTES:
        return f"{meaning}. {NEGATIVE_GAP_NOTES[gap]}"
    return meaning


def timing_lines(timings: Mapping[str, object]) -> list[tuple[str, str]]:
    """(label, value) pairs: seconds as "1.3 s", counts as numbers, the rest as they are."""
    lines = []
    for key, value in timings.items():
        if isinstance(value, Mapping):
            continue  # structured facts (the inference runtime, the model's input) have lines of their own
        label = TIMING_WORDS.get(key, key.removesuffix("_s").replace("_", " ").capitalize())
        if key.endswith("_s") and isinstance(value, int | float):
            lines.append((label, f"{value:.1f} s"))
        else:
            lines.append((label, str(value)))
    return lines
