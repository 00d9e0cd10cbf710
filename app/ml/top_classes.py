"""A stored prediction's most probable classes, for the large view of an image (error grid and review)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class TopClass:
    label: str
    probability: float


def top_classes(probs: bytes, label_names: Sequence[str], k: int) -> list[TopClass]:
    """The ``k`` most probable classes of a float32 probability vector, ties in the run's label order; a column
    past the run's label names (should not happen) is shown as ``#column``."""
    values = np.frombuffer(probs, dtype=np.float32)
    names = [str(name) for name in label_names]
    order = np.argsort(-values, kind="stable")[:k].tolist()
    return [TopClass(names[i] if i < len(names) else f"#{i}", float(values[i])) for i in order]
