"""Queries for labels and label history: versioned writes of one image's label or exclusion (``UPDATE ... WHERE
label_version = :expected``, then look at the row count), the history of an image, and label merges and their undo
(set-wise, every image update conditional on its label_version)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import (
    ColumnElement,
    CursorResult,
    DateTime,
    Integer,
    String,
    Text,
    func,
    insert,
    literal,
    select,
    update,
)
from sqlalchemy.orm import Session, aliased

from app.models import Image, Label, LabelChange, LabelEvent, User

MERGE = "merge"
REVERT = "revert"
# The label_changes columns both set-wise inserts fill, in this order (the undo adds reverts_change_id).
HISTORY_COLUMNS = [
    "image_id",
    "kind",
    "old_label_id",
    "new_label_id",
    "version",
    "reason",
    "user_id",
    "created_at",
    "label_event_id",
]


@dataclass(frozen=True)
class HistoryRow:
    """A row of an image's label history, with names: every page that shows a history shows these."""

    id: int
    kind: str
    old_label: str | None
    new_label: str | None
    version: int
    reason: str
    review_id: int | None
    reverts_change_id: int | None
    user: str | None
    created_at: datetime
    confirmed_by: str | None = None  # the second reviewer, for a change applied by agreement


def names_of(session: Session, *, dataset_id: int) -> dict[int, str]:
    """Label id -> name for every label of the dataset, merged ones included."""
    query = select(Label.id, Label.name).where(Label.dataset_id == dataset_id).order_by(Label.id)
    return {label_id: name for label_id, name in session.execute(query)}


def merges_of(session: Session, *, dataset_id: int) -> list[tuple[int, str, int | None]]:
    """(id, name, merged into) of every label of the dataset, merged ones included."""
    query = select(Label.id, Label.name, Label.merged_into_id).where(Label.dataset_id == dataset_id)
    return [(label_id, name, merged_into) for label_id, name, merged_into in session.execute(query)]


# --- one image at a time: versioned writes and the history ------------------------------------------------------


def _updated_one(result: Any) -> bool:
    return cast(CursorResult[Any], result).rowcount == 1


def _update_if_version(
    session: Session, image_id: int, expected_version: int, *, bump: bool = True, **values: Any
) -> bool:
    """Atomic on SQLite and Postgres: a concurrent writer that got there first changed the version, so this
    matches no row (Postgres re-checks the WHERE clause after waiting for the other writer's row lock)."""
    statement = (
        update(Image)
        .where(Image.id == image_id, Image.label_version == expected_version)
        .values(**values, label_version=Image.label_version + 1 if bump else Image.label_version)
        .execution_options(synchronize_session=False)
    )
    return _updated_one(session.execute(statement))


def set_label_if_version(session: Session, *, image_id: int, expected_version: int, label_id: int) -> bool:
    return _update_if_version(session, image_id, expected_version, label_id=label_id)


def set_exclusion_if_version(
    session: Session, *, image_id: int, expected_version: int, excluded_reason: str | None
) -> bool:
    return _update_if_version(session, image_id, expected_version, excluded_reason=excluded_reason)


def lock_if_version(session: Session, *, image_id: int, expected_version: int) -> bool:
    """Lock the image row if it is still at ``expected_version`` (a no-op UPDATE), for decisions that confirm a
    label without changing it."""
    return _update_if_version(session, image_id, expected_version, bump=False)


def add_change(session: Session, change: LabelChange) -> LabelChange:
    session.add(change)
    session.flush()
    return change


def _change_and_author(
    session: Session, *where: ColumnElement[bool], order_by: Sequence[Any]
) -> tuple[LabelChange, str | None] | None:
    query = select(LabelChange, User.name).outerjoin(User, User.id == LabelChange.user_id).where(*where)
    row = session.execute(query.order_by(*order_by).limit(1)).first()
    return None if row is None else (row[0], row[1])


def latest_change(session: Session, *, image_id: int) -> tuple[LabelChange, str | None] | None:
    return _change_and_author(session, LabelChange.image_id == image_id, order_by=[LabelChange.id.desc()])


def first_change_after(session: Session, *, image_id: int, version: int) -> tuple[LabelChange, str | None] | None:
    """The change that moved an image past ``version``, and who made it."""
    return _change_and_author(
        session,
        LabelChange.image_id == image_id,
        LabelChange.version > version,
        order_by=[LabelChange.version, LabelChange.id],
    )


def get_change(session: Session, change_id: int) -> LabelChange | None:
    return session.get(LabelChange, change_id)


def images_of(session: Session, *, dataset_id: int, image_ids: list[int]) -> list[Image]:
    query = select(Image).where(Image.dataset_id == dataset_id, Image.id.in_(image_ids))
    return list(session.scalars(query))


def changes_of_image(session: Session, *, image_id: int) -> list[LabelChange]:
    query = select(LabelChange).where(LabelChange.image_id == image_id).order_by(LabelChange.id)
    return list(session.scalars(query))


def history(session: Session, *, image_id: int) -> list[HistoryRow]:
    old, new, confirmer = aliased(Label), aliased(Label), aliased(User)
    query = (
        select(
            LabelChange.id,
            LabelChange.kind,
            old.name,
            new.name,
            LabelChange.version,
            LabelChange.reason,
            LabelChange.review_id,
            LabelChange.reverts_change_id,
            User.name,
            LabelChange.created_at,
            confirmer.name,
        )
        .outerjoin(old, old.id == LabelChange.old_label_id)
        .outerjoin(new, new.id == LabelChange.new_label_id)
        .outerjoin(User, User.id == LabelChange.user_id)
        .outerjoin(confirmer, confirmer.id == LabelChange.confirmed_by_id)
        .where(LabelChange.image_id == image_id)
        .order_by(LabelChange.id)
    )
    rows: Sequence[Any] = session.execute(query).all()
    return [HistoryRow(*row) for row in rows]


# --- label events and merges: many images at once ------------------------------------------------------------------


def add_event(
    session: Session, *, dataset_id: int, kind: str, details: dict[str, Any], user_id: int | None
) -> LabelEvent:
    event = LabelEvent(dataset_id=dataset_id, kind=kind, details=details, user_id=user_id)
    session.add(event)
    session.flush()
    return event


def get_event(session: Session, event_id: int) -> LabelEvent | None:
    return session.get(LabelEvent, event_id)


def get_label(session: Session, label_id: int) -> Label | None:
    return session.get(Label, label_id)


def label_by_name(session: Session, dataset_id: int, name: str) -> Label | None:
    return session.scalar(select(Label).where(Label.dataset_id == dataset_id, Label.name == name))


def events_of(session: Session, dataset_id: int, *, limit: int) -> list[tuple[LabelEvent, str | None]]:
    rows = session.execute(
        select(LabelEvent, User.name)
        .outerjoin(User, User.id == LabelEvent.user_id)
        .where(LabelEvent.dataset_id == dataset_id)
        .order_by(LabelEvent.id.desc())
        .limit(limit)
    ).all()
    return [(event, user) for event, user in rows]


def move_images_to_label(
    session: Session,
    *,
    dataset_id: int,
    from_label_id: int,
    to_label_id: int,
    event_id: int,
    user_id: int | None,
    reason: str,
    now: datetime,
) -> int:
    """Relabel every image of one label set-wise (a million rows stay two statements), history first; each
    history row names the merge event, which is what its undo moves back."""
    moved = (Image.dataset_id == dataset_id, Image.label_id == from_label_id)
    session.execute(
        insert(LabelChange).from_select(
            HISTORY_COLUMNS,
            select(
                Image.id,
                literal(MERGE, String()),
                Image.label_id,
                literal(to_label_id, Integer()),
                Image.label_version + 1,
                literal(reason, Text()),
                literal(user_id, Integer()),
                literal(now, DateTime()),
                literal(event_id, Integer()),
            ).where(*moved),
        )
    )
    result = session.execute(
        update(Image)
        .where(*moved)
        .values(label_id=to_label_id, label_version=Image.label_version + 1)
        .execution_options(synchronize_session=False)
    )
    return int(getattr(result, "rowcount", 0) or 0)


def _merge_changes(event_id: int) -> Any:
    return (LabelChange.label_event_id == event_id, LabelChange.kind == MERGE)


def merged_count(session: Session, *, event_id: int) -> int:
    return int(session.scalar(select(func.count()).select_from(LabelChange).where(*_merge_changes(event_id))) or 0)


def changed_since(session: Session, *, event_id: int, limit: int) -> list[int]:
    """Images the merge moved whose label changed again since (their label_version moved on), by id."""
    query = (
        select(Image.id)
        .join(LabelChange, LabelChange.image_id == Image.id)
        .where(*_merge_changes(event_id), Image.label_version != LabelChange.version)
        .order_by(Image.id)
        .limit(limit)
    )
    return list(session.scalars(query))


def move_back(
    session: Session,
    *,
    event_id: int,
    undo_event_id: int,
    user_id: int | None,
    reason: str,
    now: datetime,
) -> int:
    """Give every image the merge moved its old label back, only where the image is still at the version the
    merge left (history rows first, each reverting its merge row); returns how many images moved."""
    still = (*_merge_changes(event_id), Image.label_version == LabelChange.version)
    session.execute(
        insert(LabelChange).from_select(
            [*HISTORY_COLUMNS, "reverts_change_id"],
            select(
                LabelChange.image_id,
                literal(REVERT, String()),
                LabelChange.new_label_id,
                LabelChange.old_label_id,
                LabelChange.version + 1,
                literal(reason, Text()),
                literal(user_id, Integer()),
                literal(now, DateTime()),
                literal(undo_event_id, Integer()),
                LabelChange.id,
            )
            .join(Image, Image.id == LabelChange.image_id)
            .where(*still),
        )
    )
    merged = select(LabelChange.old_label_id).where(*_merge_changes(event_id), LabelChange.image_id == Image.id)
    version = select(LabelChange.version).where(*_merge_changes(event_id), LabelChange.image_id == Image.id)
    result = session.execute(
        update(Image)
        .where(
            Image.id.in_(select(LabelChange.image_id).where(*_merge_changes(event_id))),
            Image.label_version == version.scalar_subquery(),
        )
        .values(label_id=merged.scalar_subquery(), label_version=Image.label_version + 1)
        .execution_options(synchronize_session=False)
    )
    return int(getattr(result, "rowcount", 0) or 0)
