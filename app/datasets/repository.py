"""Queries for datasets, labels and images (typed SQLAlchemy 2.0; nothing else lives here). Uploads: app/uploads."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

from sqlalchemy import Select, case, func, null, select
from sqlalchemy.orm import Session

from app.models import (
    Dataset,
    Image,
    ImageIssue,
    Label,
    LabelEvent,
    Split,
    SplitAssignment,
)

AnySelect = TypeVar("AnySelect", bound=Select)

# ---- datasets -------------------------------------------------------------------------------------------


def get_dataset(session: Session, dataset_id: int, *, lock: bool = False) -> Dataset | None:
    if lock:  # serialises ingest batches of one dataset on Postgres (SQLite's BEGIN IMMEDIATE already does)
        return session.scalar(select(Dataset).where(Dataset.id == dataset_id).with_for_update())
    return session.get(Dataset, dataset_id)


def dataset_by_name(session: Session, name: str) -> Dataset | None:
    return session.scalar(select(Dataset).where(Dataset.name == name))


def datasets_with_counts(session: Session) -> list[tuple[Dataset, int]]:
    counts = select(Image.dataset_id, func.count().label("n")).group_by(Image.dataset_id).subquery("image_counts")
    rows = session.execute(
        select(Dataset, func.coalesce(counts.c.n, 0))
        .outerjoin(counts, counts.c.dataset_id == Dataset.id)
        .order_by(Dataset.name)
    ).all()
    return [(dataset, int(n)) for dataset, n in rows]


def label_source_counts(session: Session, dataset_id: int) -> list[tuple[int, str, int]]:
    """(label id, source, images) over the covering index, without touching the table."""
    rows = session.execute(
        select(Image.label_id, Image.source, func.count())
        .where(Image.dataset_id == dataset_id, Image.label_id.is_not(None))
        .group_by(Image.label_id, Image.source)
    ).all()
    return [(int(label_id), str(source), int(n)) for label_id, source, n in rows if label_id is not None]


def unlabeled_count(session: Session, dataset_id: int) -> int:
    """Images uploaded without a label and still without one (the pool), marked not usable or not."""
    query = select(func.count()).select_from(Image).where(Image.dataset_id == dataset_id, Image.label_id.is_(None))
    return int(session.scalar(query) or 0)


def sources_of(session: Session, dataset_id: int) -> list[str]:
    return list(
        session.scalars(select(Image.source).where(Image.dataset_id == dataset_id).distinct().order_by(Image.source))
    )


def source_exists(session: Session, dataset_id: int, source: str) -> bool:
    query = select(Image.id).where(Image.dataset_id == dataset_id, Image.source == source).limit(1)
    return session.scalar(query) is not None


# ---- labels ---------------------------------------------------------------------------------------------


def labels_of(session: Session, dataset_id: int, *, include_merged: bool = False) -> list[Label]:
    query = select(Label).where(Label.dataset_id == dataset_id).order_by(Label.name)
    if not include_merged:
        query = query.where(Label.merged_into_id.is_(None))
    return list(session.scalars(query))


def get_label(session: Session, label_id: int) -> Label | None:
    return session.get(Label, label_id)


def label_by_name(session: Session, dataset_id: int, name: str) -> Label | None:
    return session.scalar(select(Label).where(Label.dataset_id == dataset_id, Label.name == name))


def add_label(session: Session, *, dataset_id: int, name: str) -> Label:
    label = Label(dataset_id=dataset_id, name=name)
    session.add(label)
    session.flush()
    return label


def add_label_event(
    session: Session, *, dataset_id: int, kind: str, details: dict[str, Any], user_id: int | None
) -> None:
    session.add(LabelEvent(dataset_id=dataset_id, kind=kind, details=details, user_id=user_id))


# ---- images ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ImageFilter:
    dataset_id: int
    label_id: int | None = None
    source: str | None = None
    split_id: int | None = None
    subset: str | None = None
    filename_contains: str | None = None
    unlabeled: bool = False  # only images without a label (the pool)
    # A filter naming a label that does not exist matches nothing (rather than everything).
    matches_nothing: bool = False
    # Images with this data-health issue (latest scan), worst first unless `mildest_first`.
    issue: str | None = None
    mildest_first: bool = False
    # Only these images, in this order (e.g. an image's nearest neighbours, most similar first).
    image_ids: tuple[int, ...] | None = None


@dataclass(frozen=True)
class ImageRow:
    id: int
    filename: str
    label: str | None  # None: unlabeled
    source: str
    sha256: str
    thumb_sha256: str | None
    width: int
    height: int
    imported_subset: str | None
    score: float | None = None  # the issue's severity when filtered by an issue


def _filtered(query: AnySelect, where: ImageFilter) -> AnySelect:
    query = query.where(Image.dataset_id == where.dataset_id)
    if where.matches_nothing:
        return query.where(Image.id.is_(None))
    if where.label_id is not None:
        query = query.where(Image.label_id == where.label_id)
    if where.unlabeled:
        query = query.where(Image.label_id.is_(None))
    if where.source is not None:
        query = query.where(Image.source == where.source)
    if where.split_id is not None and where.subset is not None:
        query = query.join(
            SplitAssignment,
            (SplitAssignment.image_id == Image.id) & (SplitAssignment.split_id == where.split_id),
        ).where(SplitAssignment.subset == where.subset)
    if where.filename_contains:
        escaped = where.filename_contains.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        query = query.where(Image.filename.ilike(f"%{escaped}%", escape="\\"))
    if where.issue is not None:
        query = query.join(
            ImageIssue,
            (ImageIssue.image_id == Image.id)
            & (ImageIssue.dataset_id == where.dataset_id)
            & (ImageIssue.type == where.issue),
        )
    if where.image_ids is not None:
        query = query.where(Image.id.in_(where.image_ids))
    return query


def _ordering(where: ImageFilter) -> list[Any]:
    if where.image_ids:
        return [case({image_id: place for place, image_id in enumerate(where.image_ids)}, value=Image.id)]
    if where.issue is not None:
        # One direction for every key, so the (dataset, type, score, group, image) index yields the order and a
        # page stops after its rows; members of one duplicate or conflict group stay side by side.
        keys = (ImageIssue.score, ImageIssue.group_key, ImageIssue.image_id)
        return [key.asc() if where.mildest_first else key.desc() for key in keys]
    return [Image.id.desc()]


def count_images(session: Session, where: ImageFilter) -> int:
    alone = ImageFilter(dataset_id=where.dataset_id, issue=where.issue, mildest_first=where.mildest_first)
    if where.issue is not None and where == alone:
        # The issue alone: its findings' index answers (a finding's image always exists: it cascades).
        return int(
            session.scalar(
                select(func.count())
                .select_from(ImageIssue)
                .where(ImageIssue.dataset_id == where.dataset_id, ImageIssue.type == where.issue)
            )
            or 0
        )
    # count(*), not count(id): (dataset_id, label_id) and (dataset_id, source) then answer from the index alone.
    return int(session.scalar(_filtered(select(func.count()).select_from(Image), where)) or 0)


def filtered_ids(session: Session, where: ImageFilter) -> set[int]:
    """Ids of every image the filter keeps (a grid in a run's ranked order pages through these)."""
    return set(session.scalars(_filtered(select(Image.id), where)))


def image_page(
    session: Session, where: ImageFilter, *, limit: int, offset: int, ids: list[int] | None = None
) -> list[ImageRow]:
    """A page in newest-first order, or, given `ids`, exactly those images in that order."""
    query = _filtered(
        select(
            Image.id,
            Image.filename,
            Label.name,
            Image.source,
            Image.sha256,
            Image.thumb_sha256,
            Image.width,
            Image.height,
            Image.imported_subset,
            ImageIssue.score if where.issue is not None else null(),
        ).outerjoin(Label, Label.id == Image.label_id),
        where,
    )
    if ids is not None:
        found = {row[0]: ImageRow(*row[:9], score=row[9]) for row in session.execute(query.where(Image.id.in_(ids)))}
        return [found[image_id] for image_id in ids if image_id in found]
    rows = session.execute(query.order_by(*_ordering(where)).limit(limit).offset(offset)).all()
    return [ImageRow(*row[:9], score=row[9]) for row in rows]


def export_rows(session: Session, dataset_id: int) -> Iterator[tuple[Any, ...]]:
    """(filename, label, source, imported subset, width, height, sha256) of every image, streamed in id order."""
    query = (
        select(
            Image.filename,
            Label.name,
            Image.source,
            Image.imported_subset,
            Image.width,
            Image.height,
            Image.sha256,
        )
        .outerjoin(Label, Label.id == Image.label_id)  # an unlabeled image exports with an empty label
        .where(Image.dataset_id == dataset_id)
        .order_by(Image.id)
        .execution_options(yield_per=2000)
    )
    for row in session.execute(query):
        yield tuple(row)


def subsets_of_image(session: Session, image_id: int) -> list[tuple[int, int, str]]:
    """(split id, split version, subset) for every split that placed the image."""
    rows = session.execute(
        select(Split.id, Split.version, SplitAssignment.subset)
        .join(SplitAssignment, SplitAssignment.split_id == Split.id)
        .where(SplitAssignment.image_id == image_id)
        .order_by(Split.version.desc())
    ).all()
    return [(int(split_id), int(version), str(subset)) for split_id, version, subset in rows]


# ---- splits (read only: the subset filter of the image grid) --------------------------------------------


def splits_of(session: Session, dataset_id: int) -> list[Split]:
    return list(session.scalars(select(Split).where(Split.dataset_id == dataset_id).order_by(Split.version.desc())))


def get_split(session: Session, split_id: int) -> Split | None:
    return session.get(Split, split_id)


def newest_ready_split(session: Session, dataset_id: int) -> Split | None:
    return session.scalar(
        select(Split)
        .where(Split.dataset_id == dataset_id, Split.status == "ready")
        .order_by(Split.version.desc())
        .limit(1)
    )
