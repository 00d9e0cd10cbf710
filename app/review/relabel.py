"""Relabeling in and outside campaigns: change an image's label, leave it out of scoring as ambiguous, keep it,
or revert any change, each naming the label_version the reviewer saw. The label writes themselves are
``app.labels``'s (versioned, with history); this module adds what they mean for a campaign item."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session

from app.core.errors import Conflict, Invalid, check_between
from app.core.limits import MAX_SELECTION
from app.core.lookup import get_or_404
from app.labels import service as label_service
from app.labels.repository import HistoryRow
from app.models import Dataset, Image, ReviewItem, User, utcnow
from app.review import logic, repository
from app.review.campaigns import open_review

DECISIONS = (logic.KEPT, logic.PENDING)


@dataclass(frozen=True)
class LabelState:
    """An image's label as a client must name it for its next change, and what the last request did."""

    image_id: int
    label: str | None  # None: unlabeled (the pool)
    label_version: int
    excluded_reason: str | None
    change_id: int | None = None  # the history row this request wrote, if it changed anything
    review_status: str | None = None  # the campaign item's status after this request, when a campaign was named


@dataclass(frozen=True)
class RelabelRequest:
    """A relabel as a reviewer asks for it: the label, the version of the image they saw, why, and the campaign it
    is a decision of (if any)."""

    image_id: int
    label: str
    expected_version: int
    review_id: int | None = None
    reason: str = ""


def state(session: Session, image: Image, **extra: Any) -> LabelState:
    return LabelState(
        image_id=image.id,
        label=label_service.label_name(session, image.label_id) if image.label_id is not None else None,
        label_version=image.label_version,
        excluded_reason=image.excluded_reason,
        **extra,
    )


def label_state(session: Session, *, image_id: int) -> LabelState:
    return state(session, label_service.get_image(session, image_id))


def campaign_item(session: Session, *, review_id: int | None, image: Image) -> ReviewItem | None:
    """The image's item in an open campaign (None without a campaign); refused when the image is not in it."""
    if review_id is None:
        return None
    review = open_review(session, review_id)
    item = repository.review_item(session, review_id=review.id, image_id=image.id)
    if review.dataset_id != image.dataset_id or item is None:
        raise Invalid(f"image {image.id} is not part of review {review.id}")
    return item


def decide(item: ReviewItem | None, *, status: str, actor: User | None) -> str | None:
    """Give a campaign item a status; with no actor the item waits for a decision again."""
    if item is None:
        return None
    item.status = status
    item.decided_by_id = actor.id if actor is not None else None
    item.decided_at = utcnow() if actor is not None else None
    return status


def _reopen(item: ReviewItem) -> str:
    """The item needs a decision again (its decision was undone)."""
    decide(item, status=logic.PENDING, actor=None)
    return item.status


def change_label(session: Session, *, request: RelabelRequest, actor: User) -> LabelState:
    """Relabel an image, naming the version the reviewer saw. Choosing the label it already has changes nothing
    (within a campaign it keeps the item)."""
    label, expected_version = request.label, request.expected_version
    image = label_service.get_image(session, request.image_id)
    by_name = {name: label_id for label_id, name in label_service.names(session, dataset_id=image.dataset_id).items()}
    if label not in by_name and image.label_id is None:
        # The first label of an image uploaded unlabeled may be new (a dataset can start with no labels at all).
        from app.datasets.service import add_label

        created = add_label(session, dataset_id=image.dataset_id, name=label, user_id=actor.id)
        label, by_name[created.name] = created.name, created.id
    if label not in by_name:
        raise Invalid(
            f"dataset has no label {label!r}; known labels: {', '.join(sorted(by_name))}",
            extra={"labels": sorted(by_name)},
        )
    cleaned = label_service.clean_reason(request.reason)
    item = campaign_item(session, review_id=request.review_id, image=image)
    label_service.check_version(session, image, expected_version=expected_version)
    if by_name[label] == image.label_id:
        status = None
        if item is not None:
            status = decide_item(
                session,
                review_id=item.review_id,
                image_id=image.id,
                decision=logic.KEPT,
                expected_version=expected_version,
                actor=actor,
            ).review_status
        return state(session, image, review_status=status)
    change = label_service.set_label(
        session,
        image=image,
        label_id=by_name[label],
        expected_version=expected_version,
        reason=cleaned,
        user_id=actor.id,
        review_id=item.review_id if item is not None else None,
        # The first label of an image uploaded unlabeled is a change like any other, named for what it is.
        kind=label_service.RELABEL if image.label_id is not None else "label",
    )
    # An item already excluded as ambiguous stays counted as such: its new label is not scored either.
    status = decide(item, status=logic.AMBIGUOUS if image.excluded_reason else logic.RELABELED, actor=actor)
    return state(session, image, change_id=change.id, review_status=status)


def mark_ambiguous(
    session: Session,
    *,
    image_id: int,
    reason: str,
    expected_version: int,
    review_id: int | None = None,
    actor: User,
) -> LabelState:
    """Leave an image out of scoring (its label cannot be told), with a recorded reason; revertible."""
    image = label_service.get_image(session, image_id)
    cleaned = label_service.clean_reason(reason, required=True)
    item = campaign_item(session, review_id=review_id, image=image)
    label_service.check_version(session, image, expected_version=expected_version)
    if image.excluded_reason is not None:
        raise Conflict(f"image {image.id} is already excluded from scoring ({image.excluded_reason!r})")
    change = label_service.set_exclusion(
        session,
        image=image,
        excluded_reason=cleaned,
        expected_version=expected_version,
        reason=cleaned,
        user_id=actor.id,
        review_id=item.review_id if item is not None else None,
    )
    status = decide(item, status=logic.AMBIGUOUS, actor=actor)
    return state(session, image, change_id=change.id, review_status=status)


def decide_item(
    session: Session, *, review_id: int, image_id: int, decision: str, expected_version: int, actor: User
) -> LabelState:
    """Keep an item's label as it is (``kept``), or undo that (``pending``). Keeping names the version seen, so
    a label someone changed meanwhile is not confirmed blindly."""
    if decision not in DECISIONS:
        raise Invalid(f"decision must be one of {', '.join(DECISIONS)}; got {decision!r}")
    image = label_service.get_image(session, image_id)
    item = campaign_item(session, review_id=review_id, image=image)
    assert item is not None
    label_service.lock_version(session, image=image, expected_version=expected_version)
    if item.status not in (logic.PENDING, logic.KEPT):
        raise Conflict(
            f"image {image.id} was already decided in this review ({item.status}); undo that change first",
            extra={"review_status": item.status},
        )
    if decision == logic.KEPT:
        decide(item, status=logic.KEPT, actor=actor)
    else:
        _reopen(item)
    session.flush()
    return state(session, image, review_status=item.status)


def revert_change(
    session: Session, *, change_id: int, expected_version: int | None = None, reason: str = "", actor: User
) -> LabelState:
    """Take a change back (``labels.revert``); a change made in a campaign puts its item back to what the revert
    means: to be decided again, or (a revert of a revert) the decision it had."""
    reverted = label_service.revert(
        session, change_id=change_id, expected_version=expected_version, reason=reason, user_id=actor.id
    )
    change, image = reverted.change, reverted.image
    status = None
    if change.review_id is not None:
        item = repository.review_item(session, review_id=change.review_id, image_id=image.id)
        new_status = logic.item_status_for(reverted.effect.inverse())
        if item is not None and new_status == logic.PENDING:
            status = _reopen(item)
        elif item is not None:
            status = decide(item, status=new_status, actor=actor)
    session.flush()
    return state(session, image, change_id=reverted.revert.id, review_status=status)


def image_history(session: Session, *, image_id: int) -> list[HistoryRow]:
    return label_service.history(session, image_id=image_id)


@dataclass(frozen=True)
class ExclusionsSet:
    changed: int
    unchanged: int  # already as asked


def set_exclusions(
    session: Session, *, dataset_id: int, image_ids: list[int], excluded: bool, reason: str, actor: User
) -> ExclusionsSet:
    """Leave a selection out of scoring (as ambiguous, with the reason) or score it again, all or nothing: each
    image through the versioned write at the version it has now, with its own history row. Scoring again reverts
    the change that excluded the image, so a campaign item it was decided in waits for a decision again."""
    wanted = list(dict.fromkeys(image_ids))
    check_between(len(wanted), 1, MAX_SELECTION, f"select between 1 and {MAX_SELECTION} images; got {len(wanted)}")
    get_or_404(session, Dataset, dataset_id)
    cleaned = label_service.clean_reason(reason, required=excluded)
    changed = 0
    for image in label_service.images_of(session, dataset_id=dataset_id, image_ids=wanted):
        if (image.excluded_reason is not None) == excluded:
            continue
        if excluded:
            mark_ambiguous(
                session, image_id=image.id, reason=cleaned, expected_version=image.label_version, actor=actor
            )
        else:
            change = label_service.exclusion_in_effect(session, image=image)
            if change is None:
                raise Conflict(f"image {image.id} was left out of scoring without a change that can be taken back")
            revert_change(
                session,
                change_id=change.id,
                expected_version=image.label_version,
                reason=cleaned or "scored again",
                actor=actor,
            )
        changed += 1
    return ExclusionsSet(changed=changed, unchanged=len(wanted) - changed)
