"""Queries for the unlabeled pool: its images, a run's scores on them, bulk writes of those scores."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, func, insert, select
from sqlalchemy.orm import Session

from app.models import Dataset, Image, Label, PoolScore, PoolScoring, Run, Split


def pool_filter(dataset_id: int) -> tuple[Any, ...]:
    """An image of the pool: no label yet, and not marked not usable."""
    return (Image.dataset_id == dataset_id, Image.label_id.is_(None), Image.excluded_reason.is_(None))


def pool_images(session: Session, dataset_id: int) -> list[tuple[int, str]]:
    """(image id, sha256) of the pool, in id order."""
    rows = session.execute(select(Image.id, Image.sha256).where(*pool_filter(dataset_id)).order_by(Image.id))
    return [(image_id, sha) for image_id, sha in rows]


def pool_count(session: Session, dataset_id: int) -> int:
    return int(session.scalar(select(func.count()).select_from(Image).where(*pool_filter(dataset_id))) or 0)


def labelled_from_pool(session: Session, dataset_id: int) -> int:
    query = select(func.count()).where(
        Image.dataset_id == dataset_id, Image.from_pool.is_(True), Image.label_id.is_not(None)
    )
    return int(session.scalar(query) or 0)


def get_scoring(session: Session, run_id: int) -> PoolScoring | None:
    return session.get(PoolScoring, run_id, populate_existing=True)


def add_scoring(session: Session, scoring: PoolScoring) -> PoolScoring:
    session.add(scoring)
    session.flush()
    return scoring


def replace_scores(session: Session, *, run_id: int, rows: Sequence[dict[str, Any]], batch: int = 2000) -> None:
    session.execute(delete(PoolScore).where(PoolScore.run_id == run_id))
    for start in range(0, len(rows), batch):
        session.execute(insert(PoolScore), list(rows[start : start + batch]))


@dataclass(frozen=True)
class ScoreRow:
    image_id: int
    label_version: int
    source: str
    filename: str
    predicted_label_id: int | None
    confidence: float
    probs: bytes
    embedding: bytes


def current_scores(session: Session, *, run_id: int, dataset_id: int) -> list[ScoreRow]:
    """The run's scores on images that are still in the pool, in image id order."""
    query = (
        select(
            PoolScore.image_id,
            Image.label_version,
            Image.source,
            Image.filename,
            PoolScore.predicted_label_id,
            PoolScore.confidence,
            PoolScore.probs,
            PoolScore.embedding,
        )
        .join(Image, Image.id == PoolScore.image_id)
        .where(PoolScore.run_id == run_id, *pool_filter(dataset_id))
        .order_by(PoolScore.image_id)
    )
    return [ScoreRow(*row) for row in session.execute(query)]


def first_pool_images(session: Session, dataset_id: int, *, limit: int) -> list[tuple[int, int, str, str]]:
    """(image id, label version, source, filename) of the pool's first `limit` images in upload order."""
    query = (
        select(Image.id, Image.label_version, Image.source, Image.filename)
        .where(*pool_filter(dataset_id))
        .order_by(Image.id)
        .limit(limit)
    )
    return [(image_id, version, source, filename) for image_id, version, source, filename in session.execute(query)]


def label_names(session: Session, dataset_id: int) -> list[tuple[int, str]]:
    """The dataset's labels that can still be chosen (not merged away), by name."""
    query = (
        select(Label.id, Label.name)
        .where(Label.dataset_id == dataset_id, Label.merged_into_id.is_(None))
        .order_by(Label.name)
    )
    return [(label_id, name) for label_id, name in session.execute(query)]


def label_ids_by_name(session: Session, dataset_id: int) -> dict[str, int]:
    query = select(Label.name, Label.id).where(Label.dataset_id == dataset_id)
    return {name: label_id for name, label_id in session.execute(query)}


def get_run(session: Session, run_id: int) -> Run | None:
    return session.get(Run, run_id)


def get_dataset(session: Session, dataset_id: int) -> Dataset | None:
    return session.get(Dataset, dataset_id)


def finished_runs(session: Session, dataset_id: int) -> list[Run]:
    query = select(Run).where(Run.dataset_id == dataset_id, Run.status == "succeeded").order_by(Run.id.desc())
    return list(session.scalars(query))


def newest_ready_split(session: Session, dataset_id: int) -> Split | None:
    query = select(Split).where(Split.dataset_id == dataset_id, Split.status == "ready")
    return session.scalar(query.order_by(Split.version.desc()))
