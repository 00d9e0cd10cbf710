"""Queries for embeddings: embedding-set rows, and the image facts a similar-images answer shows."""

from __future__ import annotations

from sqlalchemy import Select, select
from sqlalchemy.orm import Session

from app.models import Dataset, EmbeddingSet, Image, Label, Prediction, Run, Split, SplitAssignment
from app.splits.states import SplitStatus
from app.training.states import RunStatus


def get_dataset(session: Session, dataset_id: int) -> Dataset | None:
    return session.get(Dataset, dataset_id)


def get_image(session: Session, image_id: int) -> Image | None:
    return session.get(Image, image_id)


def get_set(session: Session, set_id: int) -> EmbeddingSet | None:
    return session.get(EmbeddingSet, set_id, populate_existing=True)


def find_set(session: Session, dataset_id: int, backbone: str) -> EmbeddingSet | None:
    return session.scalar(
        select(EmbeddingSet).where(EmbeddingSet.dataset_id == dataset_id, EmbeddingSet.backbone == backbone)
    )


def sets_of(session: Session, dataset_id: int) -> list[EmbeddingSet]:
    return list(
        session.scalars(select(EmbeddingSet).where(EmbeddingSet.dataset_id == dataset_id).order_by(EmbeddingSet.id))
    )


def add_set(session: Session, *, dataset_id: int, backbone: str) -> EmbeddingSet:
    embedding_set = EmbeddingSet(dataset_id=dataset_id, backbone=backbone)
    session.add(embedding_set)
    session.flush()
    return embedding_set


def image_blobs(session: Session, dataset_id: int) -> list[tuple[int, str]]:
    """(image id, blob sha256) of every image of the dataset, in id order."""
    rows = session.execute(select(Image.id, Image.sha256).where(Image.dataset_id == dataset_id).order_by(Image.id))
    return [(image_id, sha) for image_id, sha in rows]


def facts_of(session: Session, image_ids: list[int]) -> dict[int, tuple[str, list[str]]]:
    """Each image's label name ("" without one) and its subset in every ready split of its dataset, newest split
    first: one query for a similar-images answer's k rows."""
    rows = session.execute(
        select(Image.id, Label.name, SplitAssignment.subset, Split.version)
        .outerjoin(Label, Label.id == Image.label_id)
        # Through the dataset's ready splits, so each assignment is found by its primary key (split, image).
        .outerjoin(Split, (Split.dataset_id == Image.dataset_id) & (Split.status == SplitStatus.READY))
        .outerjoin(SplitAssignment, (SplitAssignment.split_id == Split.id) & (SplitAssignment.image_id == Image.id))
        .where(Image.id.in_(image_ids))
    )
    labels: dict[int, str] = {}
    subsets: dict[int, list[tuple[int, str]]] = {image_id: [] for image_id in image_ids}
    for image_id, label, subset, version in rows:
        labels[image_id] = label or ""
        if subset is not None:  # None: no ready split, or one made before the image came
            subsets[image_id].append((version, subset))
    return {
        image_id: (labels.get(image_id, ""), [subset for _, subset in sorted(subsets[image_id], reverse=True)])
        for image_id in image_ids
    }


def dataset_labels(session: Session, dataset_id: int) -> dict[int, str]:
    """Every labelled image of the dataset and its label's name (one query: the map shows them all)."""
    rows = session.execute(
        select(Image.id, Label.name).join(Label, Label.id == Image.label_id).where(Image.dataset_id == dataset_id)
    )
    return {image_id: name for image_id, name in rows}


def _ready_splits(dataset_id: int) -> Select[Split]:
    # Newest first.
    return (
        select(Split)
        .where(Split.dataset_id == dataset_id, Split.status == SplitStatus.READY)
        .order_by(Split.version.desc())
    )


def _finished_runs(dataset_id: int) -> Select[Run]:
    # Newest first.
    return select(Run).where(Run.dataset_id == dataset_id, Run.status == RunStatus.SUCCEEDED).order_by(Run.id.desc())


def newest_ready_split(session: Session, dataset_id: int) -> Split | None:
    return session.scalar(_ready_splits(dataset_id).limit(1))


def ready_splits(session: Session, dataset_id: int) -> list[Split]:
    return list(session.scalars(_ready_splits(dataset_id)))


def finished_runs(session: Session, dataset_id: int) -> list[Run]:
    return list(session.scalars(_finished_runs(dataset_id)))


def split_subsets(session: Session, split_id: int) -> dict[int, str]:
    rows = session.execute(
        select(SplitAssignment.image_id, SplitAssignment.subset).where(SplitAssignment.split_id == split_id)
    )
    return {image_id: subset for image_id, subset in rows}


def newest_finished_run(session: Session, dataset_id: int) -> Run | None:
    return session.scalar(_finished_runs(dataset_id).limit(1))


def run_predictions(session: Session, run_id: int) -> list[tuple[int, str, bool, bytes, str]]:
    """(image id, subset, is_error, probs, current label name) of every image the run predicted."""
    rows = session.execute(
        select(Prediction.image_id, Prediction.subset, Prediction.is_error, Prediction.probs, Label.name)
        .join(Image, Image.id == Prediction.image_id)
        .join(Label, Label.id == Image.label_id)
        .where(Prediction.run_id == run_id)
    )
    return [(image_id, subset, bool(error), probs, name) for image_id, subset, error, probs, name in rows]
