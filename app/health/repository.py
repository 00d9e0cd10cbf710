"""Queries for data health: the columns a scan reads, its stored findings, and the issue filter of the image grid."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from sqlalchemy import delete, func, insert, select
from sqlalchemy.orm import Session

from app.models import EmbeddingSet, HealthScan, Image, ImageIssue, ImageStat

_STAT_COLUMNS = (
    ImageStat.brightness,
    ImageStat.contrast,
    ImageStat.sharpness,
    ImageStat.entropy,
    ImageStat.colourfulness,
)
_INSERT_BATCH = 10_000


@dataclass(frozen=True)
class ScanColumns:
    """One entry per image of the dataset, in id order; statistics NaN where the image was not measured."""

    image_ids: np.ndarray
    label_ids: np.ndarray
    width: np.ndarray
    height: np.ndarray
    phashes: np.ndarray
    phash_missing: np.ndarray
    inner_phashes: np.ndarray
    inner_phash_missing: np.ndarray
    stats: np.ndarray  # (images, 5): brightness, contrast, sharpness, entropy, colourfulness


def scan_columns(session: Session, dataset_id: int) -> ScanColumns:
    rows = session.execute(
        select(Image.id, Image.label_id, Image.width, Image.height, Image.phash, Image.inner_phash, *_STAT_COLUMNS)
        .outerjoin(ImageStat, ImageStat.image_id == Image.id)
        .where(Image.dataset_id == dataset_id)
        .order_by(Image.id)
    ).all()
    table = np.array([tuple(row) for row in rows], dtype=object).reshape(len(rows), 11)
    phash, inner = table[:, 4], table[:, 5]
    missing = np.array([value is None for value in phash], dtype=bool)
    inner_missing = np.array([value is None for value in inner], dtype=bool)
    return ScanColumns(
        image_ids=table[:, 0].astype(np.int64),
        label_ids=table[:, 1].astype(np.int64),
        width=table[:, 2].astype(np.float64),
        height=table[:, 3].astype(np.float64),
        phashes=np.where(missing, 0, phash).astype(np.int64),
        phash_missing=missing,
        inner_phashes=np.where(inner_missing, 0, inner).astype(np.int64),
        inner_phash_missing=inner_missing,
        stats=np.where(table[:, 6:] == None, np.nan, table[:, 6:]).astype(np.float64),  # noqa: E711
    )


def copies(session: Session, dataset_id: int) -> list[tuple[int, str]]:
    """(image id, thumbnail digest) of images whose thumbnail another image of the dataset shares."""
    shared = (
        select(Image.thumb_sha256)
        .where(Image.dataset_id == dataset_id, Image.thumb_sha256.is_not(None))
        .group_by(Image.thumb_sha256)
        .having(func.count() > 1)
    )
    rows = session.execute(
        select(Image.id, Image.thumb_sha256)
        .where(Image.dataset_id == dataset_id, Image.thumb_sha256.in_(shared))
        .order_by(Image.id)
    )
    return [(image_id, digest) for image_id, digest in rows if digest is not None]


def thumbnails_of(session: Session, image_ids: Sequence[int], *, batch: int = 5000) -> list[str | None]:
    """Each image's thumbnail digest (None when it has none), in the order of `image_ids`."""
    digest_of: dict[int, str | None] = {}
    ids = list(image_ids)
    for start in range(0, len(ids), batch):
        rows = session.execute(select(Image.id, Image.thumb_sha256).where(Image.id.in_(ids[start : start + batch])))
        digest_of.update({image_id: digest for image_id, digest in rows})
    return [digest_of.get(image_id) for image_id in ids]


def embedding_sets(session: Session, dataset_id: int) -> list[EmbeddingSet]:
    return list(
        session.scalars(
            select(EmbeddingSet)
            .where(EmbeddingSet.dataset_id == dataset_id, EmbeddingSet.count > 0)
            .order_by(EmbeddingSet.id)
        )
    )


def scan_of(session: Session, dataset_id: int) -> HealthScan | None:
    return session.scalar(select(HealthScan).where(HealthScan.dataset_id == dataset_id))


def add_scan(session: Session, dataset_id: int) -> HealthScan:
    scan = HealthScan(dataset_id=dataset_id, summary=[])
    session.add(scan)
    session.flush()
    return scan


def last_image_id(session: Session, dataset_id: int) -> int:
    """The newest image's id (an index lookup, unlike a count): tells whether images arrived since a scan."""
    return int(session.scalar(select(func.max(Image.id)).where(Image.dataset_id == dataset_id)) or 0)


def replace_issues(session: Session, dataset_id: int, rows: list[dict[str, object]]) -> None:
    """The dataset's findings become `rows` (image_id, type, score, group_key)."""
    session.execute(delete(ImageIssue).where(ImageIssue.dataset_id == dataset_id))
    for start in range(0, len(rows), _INSERT_BATCH):
        batch = [{**row, "dataset_id": dataset_id} for row in rows[start : start + _INSERT_BATCH]]
        session.execute(insert(ImageIssue), batch)


def issue_types_of_images(session: Session, dataset_id: int) -> list[tuple[int, str]]:
    """(image id, issue type) of every finding of the dataset's latest scan."""
    rows = session.execute(select(ImageIssue.image_id, ImageIssue.type).where(ImageIssue.dataset_id == dataset_id))
    return [(image_id, kind) for image_id, kind in rows]
