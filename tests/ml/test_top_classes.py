"""The shared helpers behind the large views and the sample draws: top classes and mixing in correct examples."""

from __future__ import annotations

import numpy as np

from app.ml.error_analysis import mix_in_at_random_slots
from app.ml.top_classes import TopClass, top_classes


def test_top_classes_are_the_most_probable_first_ties_in_label_order() -> None:
    probs = np.array([0.1, 0.4, 0.1, 0.4], dtype=np.float32).tobytes()
    top = top_classes(probs, ["cat", "dog", "fox", "owl"], 3)
    assert [row.label for row in top] == ["dog", "owl", "cat"]
    assert top[0].probability == np.float32(0.4)


def test_a_column_past_the_label_names_is_shown_by_number() -> None:
    probs = np.array([0.2, 0.8], dtype=np.float32).tobytes()
    assert top_classes(probs, ["cat"], 5) == [
        TopClass("#1", float(np.float32(0.8))),
        TopClass("cat", float(np.float32(0.2))),
    ]


def test_mixed_in_values_take_random_slots_and_the_kept_ones_keep_their_order() -> None:
    kept = np.array([10, 11, 12, 13], dtype=np.int64)
    mixed_in = np.array([90, 91], dtype=np.int64)
    values, mixed = mix_in_at_random_slots(np.random.Generator(np.random.PCG64(3)), kept, mixed_in)
    assert values.tolist().count(90) == 1 and mixed.sum() == 2
    assert values[~mixed].tolist() == kept.tolist()
    assert values[mixed].tolist() == mixed_in.tolist()
