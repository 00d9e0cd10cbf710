"""Queries for label merges and their undo: set-wise, every image update conditional on its label_version."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import DateTime, Integer, String, Text, func, insert, literal, select, update
from sqlalchemy.orm import Session

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
