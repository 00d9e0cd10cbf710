"""Pool images and a run's scores on them, made through the ORM as the upload and the scoring job leave them."""

from __future__ import annotations

import hashlib

import numpy as np
from sqlalchemy.orm import Session

from app.ml.active_learning import margins, normalised_entropy, project_features
from app.models import Image, PoolScore, PoolScoring, utcnow
from tests.factories import RunFixture


def add_pool(db: Session, fixture: RunFixture, count: int, *, source: str = "phone", start: int = 0) -> list[Image]:
    images = []
    for i in range(start, start + count):
        sha = hashlib.sha256(f"pool-{fixture.dataset.id}-{i}".encode()).hexdigest()
        image = Image(
            dataset_id=fixture.dataset.id,
            sha256=sha,
            filename=f"pool/{i}.jpg",
            source=source,
            label_id=None,
            from_pool=True,
            width=64,
            height=64,
            format="JPEG",
        )
        db.add(image)
        images.append(image)
    db.flush()
    return images


def score(db: Session, fixture: RunFixture, images: list[Image], probs: np.ndarray, features: np.ndarray) -> None:
    """What a finished scoring job leaves: one row per image and the scoring marked done."""
    by_name = {label.name: label.id for label in fixture.labels}
    names = list(fixture.run.label_names)
    embeddings = project_features(features).astype(np.float16)
    margin, entropy = margins(probs), normalised_entropy(probs)
    for row, image in enumerate(images):
        top = int(np.argmax(probs[row]))
        db.add(
            PoolScore(
                run_id=fixture.run.id,
                image_id=image.id,
                predicted_label_id=by_name[names[top]],
                confidence=float(probs[row, top]),
                margin=float(margin[row]),
                entropy=float(entropy[row]),
                probs=probs[row].astype(np.float32).tobytes(),
                embedding=embeddings[row].tobytes(),
            )
        )
    db.add(PoolScoring(run_id=fixture.run.id, status="succeeded", scored=len(images), finished_at=utcnow()))
    db.flush()
