"""Queries for splits: columnar reads of a dataset's images, bulk writes of assignments."""

from __future__ import annotations

import io
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from itertools import chain
from typing import Any

import numpy as np
from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from app.ml.splitting import SUBSETS
from app.models import Dataset, Image, Label, LabelChange, Split, SplitAssignment
from app.splits.states import SplitStatus


@dataclass(frozen=True)
class ImageColumns:
    """A dataset's images as columns (ordered by id), as the pure split logic wants them."""

    image_ids: np.ndarray
    sources: list[str]
    label_ids: np.ndarray
    phashes: np.ndarray
    phash_missing: np.ndarray
    inner_phashes: np.ndarray
    inner_phash_missing: np.ndarray
    imported_subsets: list[str | None]


def _fetch_all(session: Session, sql: str, params: tuple[int, ...]) -> Sequence[Any]:
    """One plain DB-API read (``?`` placeholders): a million ORM objects, or even SQLAlchemy rows, would cost
    seconds and a gigabyte."""
    raw = session.connection().connection.dbapi_connection
    assert raw is not None
    if session.get_bind().dialect.name != "sqlite":
        sql = sql.replace("?", "%s")
    cursor = raw.cursor()
    try:
        cursor.execute(sql, params)
        return cursor.fetchall()
    finally:
        cursor.close()


def image_columns(session: Session, dataset_id: int) -> ImageColumns:
    rows = _fetch_all(
        session,
        "SELECT id, source, label_id, COALESCE(phash, 0), phash IS NULL, COALESCE(inner_phash, 0), "
        "inner_phash IS NULL, imported_subset FROM images "
        # Read over the covering index ix_images_split_columns; the unlabeled pool enters no split.
        "WHERE dataset_id = ? AND label_id IS NOT NULL ORDER BY id",
        (dataset_id,),
    )
    if not rows:
        empty = np.zeros(0, dtype=np.int64)
        return ImageColumns(empty, [], empty, empty, np.zeros(0, dtype=bool), empty, np.zeros(0, dtype=bool), [])
    # Transposed in C (zip) and converted per column: per-row Python generators cost seconds at a million rows.
    ids, sources, label_ids, phashes, phash_missing, inner_phashes, inner_missing, imported = zip(*rows, strict=True)
    return ImageColumns(
        image_ids=np.array(ids, dtype=np.int64),
        sources=list(sources),
        label_ids=np.array(label_ids, dtype=np.int64),
        phashes=np.array(phashes, dtype=np.int64),
        phash_missing=np.array(phash_missing, dtype=bool),
        inner_phashes=np.array(inner_phashes, dtype=np.int64),
        inner_phash_missing=np.array(inner_missing, dtype=bool),
        imported_subsets=list(imported),
    )


def thumbnails_of(session: Session, image_ids: np.ndarray, *, batch: int = 5000) -> list[str | None]:
    """Each image's thumbnail blob digest (None when it has none), in the order of `image_ids`."""
    digest_of: dict[int, str | None] = {}
    ids = [int(image_id) for image_id in image_ids.tolist()]
    for start in range(0, len(ids), batch):
        rows = session.execute(select(Image.id, Image.thumb_sha256).where(Image.id.in_(ids[start : start + batch])))
        digest_of.update({image_id: digest for image_id, digest in rows})
    return [digest_of.get(image_id) for image_id in ids]


def label_ids_up_to(session: Session, dataset_id: int, last_image_id: int) -> np.ndarray:
    """Current label ids of the dataset's images with id <= last_image_id, in id order."""
    rows = _fetch_all(
        session,
        "SELECT label_id FROM images WHERE dataset_id = ? AND id <= ? AND label_id IS NOT NULL ORDER BY id",
        (dataset_id, last_image_id),
    )
    return np.fromiter(chain.from_iterable(rows), dtype=np.int64, count=len(rows))


def images_fingerprint(session: Session, dataset_id: int) -> tuple[int, int, int, int]:
    """Changes whenever an image is added or removed or any label changes (labels renamed count too)."""
    count, last_id = session.execute(
        select(func.count(), func.coalesce(func.max(Image.id), 0)).where(
            Image.dataset_id == dataset_id, Image.label_id.is_not(None)
        )
    ).one()
    last_change = session.scalar(select(func.coalesce(func.max(LabelChange.id), 0))) or 0
    last_label = session.scalar(select(func.coalesce(func.max(Label.id), 0)).where(Label.dataset_id == dataset_id)) or 0
    return int(count), int(last_id), int(last_change), int(last_label)


def pool_labelled_ids(session: Session, dataset_id: int) -> np.ndarray:
    """Ids of the images uploaded unlabeled that have been labelled since, in id order."""
    rows = _fetch_all(
        session,
        "SELECT id FROM images WHERE dataset_id = ? AND from_pool = ? AND label_id IS NOT NULL ORDER BY id",
        (dataset_id, True),
    )
    return np.fromiter(chain.from_iterable(rows), dtype=np.int64, count=len(rows))


def label_names(session: Session, dataset_id: int) -> dict[int, str]:
    rows = session.execute(select(Label.id, Label.name).where(Label.dataset_id == dataset_id)).all()
    return {label_id: name for label_id, name in rows}


def sources_of(session: Session, dataset_id: int) -> list[str]:
    return list(
        session.scalars(select(Image.source).where(Image.dataset_id == dataset_id).distinct().order_by(Image.source))
    )


def get_dataset(session: Session, dataset_id: int) -> Dataset | None:
    return session.get(Dataset, dataset_id)


def get_split(session: Session, split_id: int) -> Split | None:
    return session.get(Split, split_id, populate_existing=True)


def splits_of(session: Session, dataset_id: int) -> list[Split]:
    return list(session.scalars(select(Split).where(Split.dataset_id == dataset_id).order_by(Split.version.desc())))


def next_version(session: Session, dataset_id: int) -> int:
    return (session.scalar(select(func.max(Split.version)).where(Split.dataset_id == dataset_id)) or 0) + 1


def assignments(session: Session, split_id: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(image ids, subset codes, positions) of a split."""
    code = {name: i for i, name in enumerate(SUBSETS)}
    rows = session.execute(
        select(SplitAssignment.image_id, SplitAssignment.subset, SplitAssignment.position).where(
            SplitAssignment.split_id == split_id
        )
    ).all()
    n = len(rows)
    return (
        np.fromiter((r[0] for r in rows), dtype=np.int64, count=n),
        np.fromiter((code[r[1]] for r in rows), dtype=np.int8, count=n),
        np.fromiter((r[2] for r in rows), dtype=np.int64, count=n),
    )


def clear_assignments(session: Session, split_id: int) -> None:
    session.execute(delete(SplitAssignment).where(SplitAssignment.split_id == split_id))


def insert_assignments(
    session: Session, *, split_id: int, image_ids: np.ndarray, subsets: np.ndarray, positions: np.ndarray
) -> None:
    """Bulk insert: COPY on Postgres, executemany on SQLite (both far faster than ORM objects)."""
    names = [SUBSETS[c] for c in subsets.tolist()]
    connection = session.connection()
    if connection.dialect.name == "postgresql":
        buffer = io.StringIO()
        for image_id, subset, position in zip(image_ids.tolist(), names, positions.tolist(), strict=True):
            buffer.write(f"{split_id}\t{image_id}\t{subset}\t{position}\n")
        raw = connection.connection.dbapi_connection
        assert raw is not None
        copy_sql = "COPY split_assignments (split_id, image_id, subset, position) FROM STDIN"
        with raw.cursor() as cursor, cursor.copy(copy_sql) as copy:  # type: ignore[attr-defined]
            copy.write(buffer.getvalue())
        return
    connection.exec_driver_sql(
        "INSERT INTO split_assignments (split_id, image_id, subset, position) VALUES (?, ?, ?, ?)",
        list(zip([split_id] * len(names), image_ids.tolist(), names, positions.tolist(), strict=True)),
    )


def manifest_rows(session: Session, split_id: int, *, batch: int = 5000) -> Iterator[tuple[str, str, str, str, str]]:
    """(filename, current label, source, subset, sha256) in subset order, streamed in batches."""
    order = {name: i for i, name in enumerate(SUBSETS)}
    for subset in sorted(order, key=order.__getitem__):
        query = (
            select(Image.filename, Label.name, Image.source, SplitAssignment.subset, Image.sha256)
            .join(Image, Image.id == SplitAssignment.image_id)
            .join(Label, Label.id == Image.label_id)
            .where(SplitAssignment.split_id == split_id, SplitAssignment.subset == subset)
            .order_by(SplitAssignment.position)
            .execution_options(yield_per=batch)
        )
        for row in session.execute(query):
            yield (row[0], row[1], row[2], row[3], row[4])


def export_rows(session: Session, split_id: int) -> Iterator[tuple[str, str, str, str]]:
    """(subset, current label, filename, blob sha256) for the ImageFolder export."""
    query = (
        select(SplitAssignment.subset, Label.name, Image.filename, Image.sha256)
        .join(Image, Image.id == SplitAssignment.image_id)
        .join(Label, Label.id == Image.label_id)
        .where(SplitAssignment.split_id == split_id)
        .order_by(SplitAssignment.subset, SplitAssignment.position)
        .execution_options(yield_per=2000)
    )
    for row in session.execute(query):
        yield (row[0], row[1], row[2], row[3])


def newest_ready_split(session: Session, dataset_id: int) -> Split | None:
    return session.scalar(
        select(Split)
        .where(Split.dataset_id == dataset_id, Split.status == SplitStatus.READY)
        .order_by(Split.version.desc())
    )
