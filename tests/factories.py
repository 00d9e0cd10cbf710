"""Builders for tests that need a dataset with a finished run, without training anything.

Rows are made through the ORM exactly as the services would leave them; probabilities are drawn so that a
chosen share of each subset is misclassified."""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass, field

import numpy as np
from PIL import Image as PILImage
from sqlalchemy.orm import Session

from app.models import Dataset, Image, Label, LabelChange, Prediction, Run, Split, SplitAssignment


@dataclass
class RunFixture:
    dataset: Dataset
    labels: list[Label]
    split: Split
    run: Run
    images: dict[str, list[Image]] = field(default_factory=dict)  # subset -> images
    predicted: dict[int, int] = field(default_factory=dict)  # image id -> predicted label id


def make_run(
    db: Session,
    *,
    label_names: tuple[str, ...] = ("cat", "dog", "fox"),
    sizes: dict[str, int] | None = None,
    error_rate: float = 0.3,
    seed: int = 0,
    name: str | None = None,
    thumb_sha256: str | None = None,
) -> RunFixture:
    rng = np.random.default_rng(seed)
    sizes = sizes or {"train": 60, "dev": 40, "test": 40}
    dataset = Dataset(name=name or f"ds-{seed}-{rng.integers(1 << 30)}", target_source="phone")
    db.add(dataset)
    db.flush()
    labels = [Label(dataset_id=dataset.id, name=n) for n in label_names]
    db.add_all(labels)
    db.flush()
    split = Split(dataset_id=dataset.id, version=1, status="ready", params={"seed": seed})
    db.add(split)
    db.flush()
    run = Run(
        dataset_id=dataset.id,
        split_id=split.id,
        status="succeeded",
        config={"backbone": "efficientnet_lite0", "mode": "linear"},
        label_names=list(label_names),
    )
    db.add(run)
    db.flush()
    fixture = RunFixture(dataset=dataset, labels=labels, split=split, run=run)
    k = len(labels)
    for subset, count in sizes.items():
        fixture.images[subset] = []
        for i in range(count):
            label_index = int(rng.integers(k))
            sha = hashlib.sha256(f"{dataset.id}-{subset}-{i}".encode()).hexdigest()
            image = Image(
                dataset_id=dataset.id,
                sha256=sha,
                thumb_sha256=thumb_sha256,
                filename=f"{subset}/{label_names[label_index]}/{i}.jpg",
                source="phone",
                label_id=labels[label_index].id,
                width=64,
                height=64,
                format="JPEG",
            )
            db.add(image)
            db.flush()
            db.add(LabelChange(image_id=image.id, kind="import", new_label_id=image.label_id, version=1))
            db.add(SplitAssignment(split_id=split.id, image_id=image.id, subset=subset, position=i))
            wrong = rng.random() < error_rate
            predicted_index = (label_index + 1 + int(rng.integers(k - 1))) % k if wrong else label_index
            probs = rng.dirichlet(np.ones(k)).astype(np.float32) * 0.4
            probs[predicted_index] += 0.6
            probs /= probs.sum()
            db.add(
                Prediction(
                    run_id=run.id,
                    image_id=image.id,
                    subset=subset,
                    label_id=image.label_id,
                    predicted_label_id=labels[predicted_index].id,
                    confidence=float(probs[predicted_index]),
                    is_error=wrong,
                    probs=probs.tobytes(),
                )
            )
            fixture.images[subset].append(image)
            fixture.predicted[image.id] = labels[predicted_index].id
    db.flush()
    return fixture


# Three plain colours with noise: a data set a linear head on any backbone learns in a few epochs.
COLOURS = {"red": (220, 40, 40), "green": (40, 200, 60), "blue": (40, 60, 220)}


def colour_jpeg(colour: tuple[int, int, int], seed: int) -> bytes:
    """A 64x64 JPEG of `colour` with per-pixel noise, reproducible for `seed`."""
    rng = np.random.default_rng(seed)
    pixels = np.clip(np.array(colour) + rng.normal(0, 25, (64, 64, 3)), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    PILImage.fromarray(pixels).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()
