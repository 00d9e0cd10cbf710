"""Training modes and the mode proposed for a training-set size. Free of torch on purpose: the web pages
import it, and the web process should not carry torch's memory."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

# Below this many training images a frozen backbone generalises better than tuning it; above the second
# threshold there is enough data to adapt all layers.
LINEAR_MAX_TRAIN_IMAGES = 2_000
FINETUNE_MAX_TRAIN_IMAGES = 20_000


class TrainingMode(StrEnum):
    LINEAR = "linear"
    FINETUNE = "finetune"
    FULL = "full"


@dataclass(frozen=True)
class ModeProposal:
    mode: TrainingMode
    explanation: str


def propose_mode(*, train_size: int, pretrained: bool = True) -> ModeProposal:
    """Suggest a training mode for a training set of `train_size` images, with a one-sentence reason."""
    if not pretrained:
        return ModeProposal(
            TrainingMode.FULL, "This backbone has no pre-trained weights, so every layer has to be trained."
        )
    if train_size < LINEAR_MAX_TRAIN_IMAGES:
        return ModeProposal(
            TrainingMode.LINEAR,
            f"With {train_size} training images, reuse the pre-trained feature extractor as it is and train "
            "only the last layer: it cannot overfit much and takes seconds.",
        )
    if train_size < FINETUNE_MAX_TRAIN_IMAGES:
        return ModeProposal(
            TrainingMode.FINETUNE,
            f"With {train_size} training images there is enough data to adapt the last blocks of the "
            "pre-trained model, while its low-level features stay frozen.",
        )
    return ModeProposal(
        TrainingMode.FULL,
        f"With {train_size} training images every layer of the pre-trained model can adapt to this task.",
    )
