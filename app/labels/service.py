"""Merging one label into another, and undoing that merge: exactly the images the merge moved go back, each
only if its label has not changed since (every update names the label_version the merge left).

Services take keyword-only arguments and only flush; the caller's unit of work commits (or rolls back when a
domain error is raised part-way, so a refused undo changes nothing)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session

from app.core.errors import Conflict, Invalid, NotFound
from app.datasets.service import dataset_label
from app.labels import repository
from app.models import Label, utcnow

# A refusal lists at most this many of the images relabelled since (the count is always complete).
LISTED_IMAGES = 200


@dataclass(frozen=True)
class LabelEventView:
    id: int
    kind: str
    details: dict[str, Any]
    user: str | None
    created_at: datetime

    @property
    def undoable(self) -> bool:
        return self.kind == repository.MERGE and not self.details.get("undone_by")


@dataclass(frozen=True)
class MergeUndone:
    label: Label  # the label that is back
    moved: int
    event_id: int


def merge_labels(
    session: Session, *, dataset_id: int, label_id: int, into_label_id: int, user_id: int | None
) -> tuple[Label, int]:
    """Move every image of one label to another (each with a label change tied to the merge event), and
    retire the first label: its name becomes an alias of the other."""
    if label_id == into_label_id:
        raise Invalid("a label cannot be merged into itself")
    merged = dataset_label(session, dataset_id=dataset_id, label_id=label_id)
    into = dataset_label(session, dataset_id=dataset_id, label_id=into_label_id)
    details: dict[str, Any] = {"from": merged.name, "into": into.name, "from_id": merged.id, "into_id": into.id}
    event = repository.add_event(
        session, dataset_id=dataset_id, kind=repository.MERGE, details=details, user_id=user_id
    )
    moved = repository.move_images_to_label(
        session,
        dataset_id=dataset_id,
        from_label_id=merged.id,
        to_label_id=into.id,
        event_id=event.id,
        user_id=user_id,
        reason=f"label {merged.name!r} merged into {into.name!r}",
        now=utcnow(),
    )
    event.details = {**details, "images": moved}
    merged.merged_into_id = into.id
    session.flush()
    return into, moved


def _merge_event(session: Session, *, dataset_id: int, event_id: int) -> Any:
    event = repository.get_event(session, event_id)
    if event is None or event.dataset_id != dataset_id:
        raise NotFound(f"label event {event_id} is not an event of dataset {dataset_id}")
    if event.kind != repository.MERGE:
        raise Invalid(f"label event {event_id} is a {event.kind}, not a merge: only merges can be undone here")
    if event.details.get("undone_by"):
        raise Conflict(f"the merge of {event.details.get('from')!r} was already undone")
    return event


def _refuse_changed(session: Session, *, event_id: int, name: str, into: str, total: int) -> None:
    changed = repository.changed_since(session, event_id=event_id, limit=total)
    if changed:
        listed = changed[:LISTED_IMAGES]
        raise Conflict(
            f"{len(changed)} of the {total} images moved from {name!r} to {into!r} were relabelled since "
            f"(images {', '.join(map(str, listed))}{' …' if len(changed) > len(listed) else ''}); "
            "revert those changes first, then undo the merge",
            extra={"images": listed, "relabelled_since": len(changed)},
        )


def undo_merge(session: Session, *, dataset_id: int, event_id: int, user_id: int | None) -> MergeUndone:
    """Move back exactly the images a merge moved and offer the merged label again; refused (409, with the
    images) when any of them was relabelled since, so nobody's later decision is overwritten."""
    event = _merge_event(session, dataset_id=dataset_id, event_id=event_id)
    name, into = str(event.details.get("from")), str(event.details.get("into"))
    total = repository.merged_count(session, event_id=event.id)
    if total != int(event.details.get("images", 0)):
        raise Conflict(f"the merge of {name!r} was recorded before merges could be undone; relabel its images instead")
    from_id = event.details.get("from_id")
    label = (
        repository.get_label(session, int(from_id)) if from_id else repository.label_by_name(session, dataset_id, name)
    )
    if label is None:
        raise NotFound(f"label {name!r} no longer exists")
    _refuse_changed(session, event_id=event.id, name=name, into=into, total=total)
    details: dict[str, Any] = {"undoes": event.id, "from": name, "into": into}
    undo = repository.add_event(session, dataset_id=dataset_id, kind="unmerge", details=details, user_id=user_id)
    moved = repository.move_back(
        session,
        event_id=event.id,
        undo_event_id=undo.id,
        user_id=user_id,
        reason=f"undo of the merge of {name!r} into {into!r}",
        now=utcnow(),
    )
    if moved != total:  # someone relabelled one in between: the caller's rollback takes the whole undo back
        _refuse_changed(session, event_id=event.id, name=name, into=into, total=total)
        raise Conflict(f"the images of {name!r} changed while the merge was being undone; try again")
    undo.details = {**details, "images": moved}
    event.details = {**event.details, "undone_by": undo.id}
    label.merged_into_id = None
    session.flush()
    return MergeUndone(label=label, moved=moved, event_id=undo.id)


def label_events(session: Session, *, dataset_id: int, limit: int = 50) -> list[LabelEventView]:
    return [
        LabelEventView(event.id, event.kind, dict(event.details), user, event.created_at)
        for event, user in repository.events_of(session, dataset_id, limit=limit)
    ]


def alias_of(session: Session, *, dataset_id: int, name: str | None) -> str | None:
    """The label that files given `name` are stored under when `name` was merged away, else None."""
    if not name:
        return None
    label = repository.label_by_name(session, dataset_id, name)
    seen: set[int] = set()
    while label is not None and label.merged_into_id is not None and label.id not in seen:
        seen.add(label.id)
        label = repository.get_label(session, label.merged_into_id)
    return label.name if label is not None and label.name != name else None
