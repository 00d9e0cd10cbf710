"""Helpers shared by the error-analysis tests."""

from __future__ import annotations

from sqlalchemy.orm import Session

from app.models import Image, LabelChange
from tests.factories import RunFixture


def errors_of(fixture: RunFixture, subset: str = "dev") -> list[Image]:
    """The subset's misclassified images by their current labels, in id order."""
    return [image for image in fixture.images[subset] if fixture.predicted[image.id] != image.label_id]


def correct_of(fixture: RunFixture, subset: str = "dev") -> list[Image]:
    return [image for image in fixture.images[subset] if fixture.predicted[image.id] == image.label_id]


def change_label(db: Session, image: Image, *, label_id: int | None = None, excluded: str | None = None) -> None:
    """Relabel or exclude an image the way label review does: with a trace in label_changes."""
    old = image.label_id
    if label_id is not None:
        image.label_id = label_id
    image.excluded_reason = excluded
    image.label_version += 1
    kind = "ambiguous" if excluded else "relabel"
    db.add(
        LabelChange(
            image_id=image.id, kind=kind, old_label_id=old, new_label_id=image.label_id, version=image.label_version
        )
    )
    db.commit()
