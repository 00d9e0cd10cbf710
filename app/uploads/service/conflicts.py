"""Upload conflicts (same content as an image, another label) and the labels an upload names.

An image's label changes here only through app/labels' versioned writes; a label an upload names is created
here with its dataset event (creating and renaming labels is still the datasets domain's).
"""

from __future__ import annotations

from typing import Literal

from sqlalchemy.orm import Session

from app.core.errors import Conflict, NotFound
from app.core.lookup import get_or_404
from app.datasets import repository
from app.labels import service as label_service
from app.models import Image, Label, UploadEntry
from app.uploads import repository as uploads_repository
from app.uploads.states import EntryOutcome


def resolve_conflict(
    session: Session, *, upload_id: int, entry_id: int, keep: Literal["existing", "new"], user_id: int | None
) -> UploadEntry:
    """Settle a same-content-different-label conflict: keep the stored label, or relabel the image."""
    entry = uploads_repository.get_entry(session, entry_id)
    if entry is None or entry.upload_id != upload_id:
        raise NotFound(f"entry {entry_id} is not part of upload {upload_id}")
    if entry.outcome != EntryOutcome.CONFLICT or entry.image_id is None or entry.label is None:
        raise Conflict(f"{entry.name} is not an open conflict")
    image = get_or_404(session, Image, entry.image_id)
    stored = repository.get_label(session, image.label_id) if image.label_id is not None else None
    kept = stored.name if stored is not None else ("?" if image.label_id is not None else "unlabeled")
    if keep == "new":
        label = _label_for(session, dataset_id=image.dataset_id, name=entry.label, upload_id=upload_id, user_id=user_id)
        reason = f"upload {upload_id}: {entry.name} has the same content, labelled {entry.label!r}"
        # Versioned like every label write: a relabel committed since this request read the image refuses it (409).
        version = image.label_version
        label_service.set_label(
            session, image=image, label_id=label.id, expected_version=version, reason=reason, user_id=user_id
        )
        kept = entry.label
    entry.outcome = EntryOutcome.RESOLVED
    entry.reason = f"{entry.reason} Resolved: the image is labelled {kept!r}."
    session.flush()
    return entry


def _label_for(session: Session, *, dataset_id: int, name: str, upload_id: int, user_id: int | None) -> Label:
    """The label called `name` (following merges), created with a history event when new."""
    label = label_service.resolve_name(session, dataset_id=dataset_id, name=name)
    if label is not None:
        return label
    label = repository.add_label(session, dataset_id=dataset_id, name=name)
    details = {"name": name, "upload_id": upload_id}
    repository.add_label_event(session, dataset_id=dataset_id, kind="add", details=details, user_id=user_id)
    return label
