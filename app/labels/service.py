"""The one owner of labels and label history. Every change to an image's label or exclusion, from any domain (a
review relabel, an agreed proposal, a revert, the resolution of an upload conflict), goes through here as a
conditional ``UPDATE images ... WHERE label_version = :expected`` followed by a ``label_changes`` row, so a writer
that read an older version changes nothing and gets 409 with the current label and who set it. Merging one label
into another (and undoing that) moves images set-wise, each update naming the label_version the merge left.

Services take keyword-only arguments and only flush; the caller's unit of work commits (or rolls back when a
domain error is raised part-way, so a refused change or undo changes nothing)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from typing import Any

from sqlalchemy.orm import Session

from app.core.errors import Conflict, Invalid, NotFound
from app.core.lookup import get_or_404
from app.labels import logic, repository
from app.labels.repository import HistoryRow
from app.models import Image, Label, LabelChange, LabelEvent, utcnow

RELABEL, AMBIGUOUS, REVERT = "relabel", "ambiguous", repository.REVERT
MAX_REASON_CHARS = 1_000
# A refusal lists at most this many of the images relabelled since (the count is always complete).
LISTED_IMAGES = 200


class StaleVersion(Conflict):
    """A change named a label_version the image has moved past (someone else changed it first)."""


# --- reading labels ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LabelMap:
    """A dataset's labels as they stand now. A merged label keeps its row (old predictions point at it) and stands
    for the label it was merged into, so predicting it for an image of that label is not an error."""

    names: dict[int, str]  # any label id -> the name of the label it stands for
    merged: dict[int, int]  # merged label id -> the label it stands for (merges followed to the end)
    offered: list[str]  # names of the labels that still exist, for the filters

    def resolve(self, label_id: int) -> int:
        return self.merged.get(label_id, label_id)

    def id_of(self, name: str | None) -> int | None:
        if not name:
            return None
        for label_id, label_name in self.names.items():
            if label_name == name and label_id not in self.merged:
                return label_id
        raise Invalid(f"this dataset has no label {name!r}")


def label_map(session: Session, *, dataset_id: int) -> LabelMap:
    rows = repository.merges_of(session, dataset_id=dataset_id)
    own_names = {label_id: name for label_id, name, _ in rows}
    merged = logic.follow_merges({label_id: into for label_id, _, into in rows if into is not None})
    return LabelMap(
        names={label_id: own_names[merged.get(label_id, label_id)] for label_id in own_names},
        merged=merged,
        offered=sorted(name for label_id, name in own_names.items() if label_id not in merged),
    )


def names(session: Session, *, dataset_id: int) -> dict[int, str]:
    """Label id -> its own name, merged labels included."""
    return repository.names_of(session, dataset_id=dataset_id)


def resolve_name(session: Session, *, dataset_id: int, name: str) -> Label | None:
    """The label files called ``name`` are stored under: that label, or the one it was merged into (to the end)."""
    label = repository.label_by_name(session, dataset_id, name)
    seen: set[int] = set()
    while label is not None and label.merged_into_id is not None and label.id not in seen:
        seen.add(label.id)
        label = repository.get_label(session, label.merged_into_id)
    return label


def label_name(session: Session, label_id: int) -> str:
    label = repository.get_label(session, label_id)
    return label.name if label is not None else "?"


def get_image(session: Session, image_id: int) -> Image:
    return get_or_404(session, Image, image_id)


def history(session: Session, *, image_id: int) -> list[HistoryRow]:
    """An image's label history, oldest first, with label and user names: the one query every page shows."""
    get_image(session, image_id)
    return repository.history(session, image_id=image_id)


def first_change_after(session: Session, *, image_id: int, version: int) -> tuple[LabelChange, str | None] | None:
    """The change that moved an image past ``version``, and who made it (None if it is still there)."""
    return repository.first_change_after(session, image_id=image_id, version=version)


# --- changing one image: always against the version the writer saw -------------------------------------------------


def clean_reason(reason: str, *, required: bool = False) -> str:
    cleaned = reason.strip()
    if required and not cleaned:
        raise Invalid("say why: a reason is recorded with the change")
    if len(cleaned) > MAX_REASON_CHARS:
        raise Invalid(f"a reason can be at most {MAX_REASON_CHARS} characters; this one has {len(cleaned)}")
    return cleaned


def stale(session: Session, image: Image, *, expected_version: int) -> StaleVersion:
    """The 409 for a change made against an old version: the current label, its version and who set it."""
    session.refresh(image)
    label = label_name(session, image.label_id) if image.label_id is not None else None  # None: still unlabeled
    latest = repository.latest_change(session, image_id=image.id)
    changed_by = latest[1] if latest is not None else None
    changed_at = latest[0].created_at.isoformat() if latest is not None else None
    return StaleVersion(
        f"image {image.id} changed since you looked (you saw version {expected_version}, it is now "
        f"{image.label_version}): its label is {label!r}"
        + (f", set by {changed_by}" if changed_by else "")
        + ". Look again and redo your change if it still applies.",
        extra={
            "image_id": image.id,
            "label": label,
            "label_version": image.label_version,
            "excluded_reason": image.excluded_reason,
            "changed_by": changed_by,
            "changed_at": changed_at,
        },
    )


def check_version(session: Session, image: Image, *, expected_version: int) -> None:
    """Refuse early (before other checks) when the image has visibly moved past the version named."""
    if image.label_version != expected_version:
        raise stale(session, image, expected_version=expected_version)


def lock_version(session: Session, *, image: Image, expected_version: int) -> None:
    """Lock the image row at the version named, for a decision that confirms a label without changing it: a
    concurrent change either finished first (409 here) or waits for this transaction."""
    if not repository.lock_if_version(session, image_id=image.id, expected_version=expected_version):
        raise stale(session, image, expected_version=expected_version)


def set_label(
    session: Session,
    *,
    image: Image,
    label_id: int,
    expected_version: int,
    reason: str,
    user_id: int | None,
    kind: str = RELABEL,
    review_id: int | None = None,
    reverts_change_id: int | None = None,
    confirmed_by_id: int | None = None,
) -> LabelChange:
    """Give the image another label, only if it is still at ``expected_version`` (else StaleVersion, 409), and
    record the change; the image is refreshed to its new state."""
    return _write_versioned(
        session,
        image,
        expected_version=expected_version,
        write=lambda: repository.set_label_if_version(
            session, image_id=image.id, expected_version=expected_version, label_id=label_id
        ),
        kind=kind,
        new_label_id=label_id,
        reason=reason,
        review_id=review_id,
        reverts_change_id=reverts_change_id,
        user_id=user_id,
        confirmed_by_id=confirmed_by_id,
    )


def set_exclusion(
    session: Session,
    *,
    image: Image,
    excluded_reason: str | None,
    expected_version: int,
    reason: str,
    user_id: int | None,
    kind: str = AMBIGUOUS,
    review_id: int | None = None,
    reverts_change_id: int | None = None,
) -> LabelChange:
    """Leave the image out of scoring (``excluded_reason``) or score it again (None), against ``expected_version``
    like ``set_label``."""
    write = partial(
        repository.set_exclusion_if_version,
        session,
        image_id=image.id,
        expected_version=expected_version,
        excluded_reason=excluded_reason,
    )
    change = dict(kind=kind, reason=reason, review_id=review_id, reverts_change_id=reverts_change_id, user_id=user_id)
    return _write_versioned(
        session, image, expected_version=expected_version, write=write, new_label_id=image.label_id, **change
    )


def exclusion_in_effect(session: Session, *, image: Image) -> LabelChange | None:
    """The change that left the image out of scoring as it is now (the one to revert to score it again)."""
    if image.excluded_reason is None:
        return None
    changes = repository.changes_of_image(session, image_id=image.id)
    records = {row.id: _record(row) for row in changes}
    for change in reversed(changes):
        try:
            effect = logic.effect_of(change.id, records)
        except logic.NotRevertible:
            continue
        if effect.field == "exclusion":
            return change if effect.after == image.excluded_reason else None
    return None


def images_of(session: Session, *, dataset_id: int, image_ids: list[int]) -> list[Image]:
    """These images of the dataset, in the order asked; 404 naming those that are not the dataset's."""
    found = {image.id: image for image in repository.images_of(session, dataset_id=dataset_id, image_ids=image_ids)}
    missing = [image_id for image_id in image_ids if image_id not in found]
    if missing:
        raise NotFound(
            f"{len(missing)} of the images are not in dataset {dataset_id} (e.g. {', '.join(map(str, missing[:5]))})",
            extra={"images": missing[:LISTED_IMAGES]},
        )
    return [found[image_id] for image_id in image_ids]


def _write_versioned(
    session: Session, image: Image, *, expected_version: int, write: Callable[[], bool], **change: Any
) -> LabelChange:
    """Run ``write`` (a compare-and-set at ``expected_version``) and record the change it made, from the label the
    image had before; the image is refreshed to its new state."""
    check_version(session, image, expected_version=expected_version)
    old_label_id = image.label_id
    if not write():
        raise stale(session, image, expected_version=expected_version)
    recorded = LabelChange(image_id=image.id, old_label_id=old_label_id, version=expected_version + 1, **change)
    repository.add_change(session, recorded)
    session.refresh(image)
    return recorded


@dataclass(frozen=True)
class Reverted:
    image: Image
    change: LabelChange  # the change taken back
    revert: LabelChange  # the history row that records taking it back
    effect: logic.Effect  # what the change taken back had done


def _record(row: LabelChange) -> logic.ChangeRecord:
    return logic.ChangeRecord(
        id=row.id,
        kind=row.kind,
        old_label_id=row.old_label_id,
        new_label_id=row.new_label_id,
        reason=row.reason,
        reverts_change_id=row.reverts_change_id,
    )


def _effect(session: Session, change: LabelChange) -> logic.Effect:
    records = {row.id: _record(row) for row in repository.changes_of_image(session, image_id=change.image_id)}
    try:
        return logic.effect_of(change.id, records)
    except logic.NotRevertible as exc:
        raise Invalid(str(exc)) from exc


def revert(
    session: Session, *, change_id: int, expected_version: int | None, reason: str, user_id: int | None
) -> Reverted:
    """Take a change back with a new history row (a revert of a revert redoes the change). Only a change still
    in effect can be reverted: if a later change touched the same thing, that one has to be reverted first."""
    change = get_or_404(session, LabelChange, change_id, what="label change")
    image = get_image(session, change.image_id)
    cleaned = clean_reason(reason) or f"revert of change {change.id}"
    effect = _effect(session, change)
    version = image.label_version if expected_version is None else expected_version
    check_version(session, image, expected_version=version)
    current = image.label_id if effect.field == "label" else image.excluded_reason
    if current != effect.after:
        raise Conflict(
            f"change {change.id} is no longer in effect: a later change to image {image.id} replaced it; "
            "revert that one first",
            extra={"label_version": image.label_version, "history": f"/api/images/{image.id}/history"},
        )
    common: dict[str, Any] = {
        "image": image,
        "expected_version": version,
        "reason": cleaned,
        "user_id": user_id,
        "kind": REVERT,
        "review_id": change.review_id,
        "reverts_change_id": change.id,
    }
    if effect.field == "label":
        if not isinstance(effect.before, int):
            raise Invalid(f"change {change.id} has no earlier label to go back to")
        row = set_label(session, label_id=effect.before, **common)
    else:
        before = effect.before if isinstance(effect.before, str) else None
        row = set_exclusion(session, excluded_reason=before, **common)
    return Reverted(image=image, change=change, revert=row, effect=effect)


# --- merging labels: many images at once ----------------------------------------------------------------------------


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
    merged = _live_label(session, dataset_id=dataset_id, label_id=label_id)
    into = _live_label(session, dataset_id=dataset_id, label_id=into_label_id)
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


def _live_label(session: Session, *, dataset_id: int, label_id: int) -> Label:
    label = get_or_404(session, Label, label_id, dataset_id=dataset_id)
    if label.merged_into_id is not None:
        raise Conflict(f"label {label.name!r} was merged into another label")
    return label


def _merge_event(session: Session, *, dataset_id: int, event_id: int) -> LabelEvent:
    event = get_or_404(session, LabelEvent, event_id, what="label event", dataset_id=dataset_id)
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
    label = resolve_name(session, dataset_id=dataset_id, name=name)
    return label.name if label is not None and label.name != name else None
