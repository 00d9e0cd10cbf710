"""Queries for error analysis: the subset's predictions against current labels, samples, annotations, tags."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Select, and_, case, delete, func, insert, literal, or_, select, update
from sqlalchemy.orm import Session

from app.models import (
    ErrorAnnotation,
    ErrorAnnotationTag,
    ErrorSample,
    ErrorSampleItem,
    Image,
    LabelChange,
    Prediction,
    Tag,
    User,
)


@dataclass(frozen=True)
class ItemRow:
    """One example of a run as the grid shows it: current label, prediction and the annotation, if any."""

    image_id: int
    sha256: str
    thumb_sha256: str | None
    label_id: int
    excluded_reason: str | None
    predicted_label_id: int
    confidence: float
    annotation_id: int | None
    note: str | None
    tagged_by: str | None
    tagged_at: datetime | None
    sampled_as_error: bool | None = None  # set for the examples of a stored sample


def label_watermark(session: Session) -> int:
    """The newest label change anywhere: every label or exclusion change leaves a ``label_changes`` row."""
    return session.scalar(select(func.max(LabelChange.id))) or 0


def subset_predictions(session: Session, *, run_id: int, subset: str) -> list[tuple[int, int, int, int]]:
    """(image id, current label id, negated while the image is excluded from scoring, predicted label id, label id
    the run was scored with) of every prediction of the subset.

    The current label is a correlated subquery rather than a join: a join lets Postgres hash the whole images table
    (a sequential scan of a million rows, ~250 ms) where one primary-key lookup per prediction takes ~50 ms.
    """
    current = (
        select(case((Image.excluded_reason.is_(None), Image.label_id), else_=-Image.label_id))
        .where(Image.id == Prediction.image_id)
        .correlate(Prediction)
        .scalar_subquery()
    )
    query = select(Prediction.image_id, current, Prediction.predicted_label_id, Prediction.label_id).where(
        Prediction.run_id == run_id, Prediction.subset == subset
    )
    return [
        (image_id, label, predicted, scored_with) for image_id, label, predicted, scored_with in session.execute(query)
    ]


def label_changes_between(
    session: Session, *, after: int, upto: int, also: Sequence[int] = ()
) -> list[tuple[int, int]]:
    """(change id, image id) of the label changes numbered in (after, upto], and of those in ``also``."""
    in_range = and_(LabelChange.id > after, LabelChange.id <= upto)
    condition = or_(in_range, LabelChange.id.in_(list(also))) if also else in_range
    query = select(LabelChange.id, LabelChange.image_id).where(condition)
    return [(change_id, image_id) for change_id, image_id in session.execute(query)]


def current_labels(session: Session, *, image_ids: Sequence[int]) -> list[tuple[int, int, bool]]:
    """(image id, label id, whether it is excluded from scoring)."""
    query = select(Image.id, Image.label_id, Image.excluded_reason.is_not(None)).where(Image.id.in_(list(image_ids)))
    rows = session.execute(query)  # a run's images all have labels: only the pool has none
    return [(image_id, label_id, bool(excluded)) for image_id, label_id, excluded in rows if label_id is not None]


def current_sample(session: Session, *, run_id: int, subset: str) -> ErrorSample | None:
    # Two reviewers asking at once may both create one; the newest is the one everybody sees.
    query = (
        select(ErrorSample)
        .where(ErrorSample.run_id == run_id, ErrorSample.subset == subset, ErrorSample.is_current)
        .order_by(ErrorSample.id.desc())
        .limit(1)
    )
    return session.scalar(query)


def latest_seed(session: Session, *, run_id: int, subset: str) -> int | None:
    query = select(func.max(ErrorSample.seed)).where(ErrorSample.run_id == run_id, ErrorSample.subset == subset)
    return session.scalar(query)


def add_sample(
    session: Session,
    *,
    sample: ErrorSample,
    image_ids: Sequence[int],
    is_error: Sequence[bool],
) -> ErrorSample:
    session.execute(
        update(ErrorSample)
        .where(ErrorSample.run_id == sample.run_id, ErrorSample.subset == sample.subset, ErrorSample.is_current)
        .values(is_current=False)
    )
    session.add(sample)
    session.flush()
    if image_ids:
        session.execute(
            insert(ErrorSampleItem),
            [
                {"sample_id": sample.id, "image_id": image_id, "position": position, "is_error": error}
                for position, (image_id, error) in enumerate(zip(image_ids, is_error, strict=True))
            ],
        )
    return sample


def _item_columns() -> tuple[Any, ...]:
    return (
        Image.id,
        Image.sha256,
        Image.thumb_sha256,
        Image.label_id,
        Image.excluded_reason,
        Prediction.predicted_label_id,
        Prediction.confidence,
        ErrorAnnotation.id,
        ErrorAnnotation.note,
        User.name,
        ErrorAnnotation.updated_at,
    )


def _with_annotation(query: Select[Any], run_id: int) -> Select[Any]:
    return query.outerjoin(
        ErrorAnnotation, and_(ErrorAnnotation.image_id == Image.id, ErrorAnnotation.run_id == run_id)
    ).outerjoin(User, User.id == ErrorAnnotation.updated_by_id)


def sample_item_rows(session: Session, *, run_id: int, sample_id: int) -> list[ItemRow]:
    """A stored sample's examples in drawn order, each with whether it was an error when drawn."""
    query = (
        select(*_item_columns(), ErrorSampleItem.is_error)
        .select_from(ErrorSampleItem)
        .join(Image, Image.id == ErrorSampleItem.image_id)
        .join(Prediction, and_(Prediction.image_id == Image.id, Prediction.run_id == run_id))
        .where(ErrorSampleItem.sample_id == sample_id)
        .order_by(ErrorSampleItem.position)
    )
    return [ItemRow(*row) for row in session.execute(_with_annotation(query, run_id))]


def item_rows(session: Session, *, run_id: int, image_ids: Sequence[int]) -> dict[int, ItemRow]:
    if not image_ids:
        return {}
    query = (
        select(*_item_columns())
        .select_from(Image)
        .join(Prediction, and_(Prediction.image_id == Image.id, Prediction.run_id == run_id))
        .where(Image.id.in_(list(image_ids)))
    )
    return {row[0]: ItemRow(*row) for row in session.execute(_with_annotation(query, run_id))}


def annotation_tag_ids(session: Session, *, annotation_ids: Sequence[int]) -> dict[int, set[int]]:
    found: dict[int, set[int]] = {}
    if not annotation_ids:
        return found
    query = select(ErrorAnnotationTag.annotation_id, ErrorAnnotationTag.tag_id).where(
        ErrorAnnotationTag.annotation_id.in_(list(annotation_ids))
    )
    for annotation_id, tag_id in session.execute(query):
        found.setdefault(annotation_id, set()).add(tag_id)
    return found


def prediction(session: Session, *, run_id: int, image_id: int) -> Prediction | None:
    return session.get(Prediction, (run_id, image_id))


def annotation(session: Session, *, run_id: int, image_id: int, for_update: bool = False) -> ErrorAnnotation | None:
    """``for_update`` locks the row (Postgres; SQLite writers are serialised already) until the transaction ends."""
    query = select(ErrorAnnotation).where(ErrorAnnotation.run_id == run_id, ErrorAnnotation.image_id == image_id)
    if for_update:
        query = query.with_for_update().execution_options(populate_existing=True)
    return session.scalar(query)


def add_annotation(session: Session, *, run_id: int, image_id: int) -> ErrorAnnotation:
    row = ErrorAnnotation(run_id=run_id, image_id=image_id, note="")
    session.add(row)
    session.flush()
    return row


def set_annotation_tags(session: Session, *, annotation_id: int, tag_ids: set[int]) -> None:
    current = annotation_tag_ids(session, annotation_ids=[annotation_id]).get(annotation_id, set())
    removed = current - tag_ids
    if removed:
        session.execute(
            delete(ErrorAnnotationTag).where(
                ErrorAnnotationTag.annotation_id == annotation_id, ErrorAnnotationTag.tag_id.in_(removed)
            )
        )
    added = tag_ids - current
    if added:
        session.execute(
            insert(ErrorAnnotationTag), [{"annotation_id": annotation_id, "tag_id": t} for t in sorted(added)]
        )


def tags_of(session: Session, *, dataset_id: int) -> list[Tag]:
    query = select(Tag).where(Tag.dataset_id == dataset_id).order_by(Tag.position, Tag.id)
    return list(session.scalars(query))


def add_tag(session: Session, *, dataset_id: int, name: str, color: str, position: int) -> Tag:
    tag = Tag(dataset_id=dataset_id, name=name, color=color, position=position)
    session.add(tag)
    session.flush()
    return tag


def merge_tag(session: Session, *, source: Tag, target: Tag) -> None:
    """Give the target tag to every annotation that had the source one, then drop the source tag."""
    already = select(ErrorAnnotationTag.annotation_id).where(ErrorAnnotationTag.tag_id == target.id)
    moved = select(ErrorAnnotationTag.annotation_id, literal(target.id)).where(
        ErrorAnnotationTag.tag_id == source.id, ErrorAnnotationTag.annotation_id.not_in(already)
    )
    session.execute(insert(ErrorAnnotationTag).from_select(["annotation_id", "tag_id"], moved))
    session.execute(delete(ErrorAnnotationTag).where(ErrorAnnotationTag.tag_id == source.id))
    session.delete(source)
    session.flush()
