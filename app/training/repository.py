"""Queries for runs and their predictions."""

from __future__ import annotations

import io

from sqlalchemy import func, insert, select
from sqlalchemy.orm import Session

from app.models import Dataset, Image, Label, Prediction, Run, Split, SplitAssignment


def get_run(session: Session, run_id: int) -> Run | None:
    return session.get(Run, run_id, populate_existing=True)


def runs_of(session: Session, dataset_id: int | None) -> list[Run]:
    query = select(Run).order_by(Run.id.desc()).limit(200)
    if dataset_id is not None:
        query = query.where(Run.dataset_id == dataset_id)
    return list(session.scalars(query))


def runs_with_context(session: Session, dataset_id: int | None) -> list[tuple[Run, Dataset, int]]:
    """(run, its dataset, its split's version), newest first, in one query."""
    query = (
        select(Run, Dataset, Split.version)
        .join(Dataset, Dataset.id == Run.dataset_id)
        .join(Split, Split.id == Run.split_id)
        .order_by(Run.id.desc())
        .limit(200)
    )
    if dataset_id is not None:
        query = query.where(Run.dataset_id == dataset_id)
    return [(run, dataset, version) for run, dataset, version in session.execute(query)]


def datasets_with_runs(session: Session) -> list[Dataset]:
    runs = select(Run.dataset_id).distinct()
    return list(session.scalars(select(Dataset).where(Dataset.id.in_(runs)).order_by(Dataset.name)))


def get_split(session: Session, split_id: int) -> Split | None:
    return session.get(Split, split_id)


def get_dataset(session: Session, dataset_id: int) -> Dataset | None:
    return session.get(Dataset, dataset_id)


def split_images(session: Session, split_id: int) -> list[tuple[int, str, str, int]]:
    """(image id, subset, sha256, current label id) of a split, in subset order."""
    rows = session.execute(
        select(SplitAssignment.image_id, SplitAssignment.subset, Image.sha256, Image.label_id)
        .join(Image, Image.id == SplitAssignment.image_id)
        .where(SplitAssignment.split_id == split_id, Image.excluded_reason.is_(None), Image.label_id.is_not(None))
        .order_by(SplitAssignment.subset, SplitAssignment.position)
    ).all()
    return [(r[0], r[1], r[2], r[3]) for r in rows if r[3] is not None]


def label_names(session: Session, dataset_id: int) -> dict[int, str]:
    rows = session.execute(select(Label.id, Label.name).where(Label.dataset_id == dataset_id)).all()
    return {label_id: name for label_id, name in rows}


def clear_predictions(session: Session, run_id: int) -> None:
    session.query(Prediction).filter(Prediction.run_id == run_id).delete()


def insert_predictions(session: Session, rows: list[dict[str, object]]) -> None:
    if not rows:
        return
    connection = session.connection()
    if connection.dialect.name == "postgresql":
        # COPY in binary-free text form: probs as bytea hex.
        buffer = io.StringIO()
        for row in rows:
            probs = row["probs"]
            assert isinstance(probs, bytes)
            buffer.write(
                f"{row['run_id']}\t{row['image_id']}\t{row['subset']}\t{row['label_id']}\t"
                f"{row['predicted_label_id']}\t{row['confidence']!r}\t{'t' if row['is_error'] else 'f'}\t"
                f"\\\\x{probs.hex()}\n"
            )
        raw = connection.connection.dbapi_connection
        assert raw is not None
        sql = (
            "COPY predictions (run_id, image_id, subset, label_id, predicted_label_id, confidence, is_error, probs)"
            " FROM STDIN"
        )
        with raw.cursor() as cursor, cursor.copy(sql) as copy:  # type: ignore[attr-defined]
            copy.write(buffer.getvalue())
        return
    session.execute(insert(Prediction), rows)


def predictions(
    session: Session, *, run_id: int, subset: str | None, limit: int, offset: int
) -> tuple[int, list[tuple[Prediction, int]]]:
    """A page of predictions with each image's current label id."""
    base = (
        select(Prediction, Image.label_id)
        .join(Image, Image.id == Prediction.image_id)
        .where(Prediction.run_id == run_id)
    )
    count = select(func.count()).select_from(Prediction).where(Prediction.run_id == run_id)
    if subset:
        base = base.where(Prediction.subset == subset)
        count = count.where(Prediction.subset == subset)
    total = session.scalar(count) or 0
    rows = session.execute(base.order_by(Prediction.image_id).limit(limit).offset(offset)).all()
    return total, [(r[0], r[1]) for r in rows if r[1] is not None]  # predicted images all have labels
