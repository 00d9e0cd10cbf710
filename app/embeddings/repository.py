"""Queries for embeddings: embedding-set rows, and the image facts a similar-images answer shows."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.models import Dataset, EmbeddingSet, Image, Label, Split, SplitAssignment
from app.splits.states import SplitStatus


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


def labels_of(session: Session, image_ids: list[int]) -> dict[int, str]:
    rows = session.execute(
        select(Image.id, Label.name).join(Label, Label.id == Image.label_id).where(Image.id.in_(image_ids))
    )
    return {image_id: name for image_id, name in rows}


def subsets_of(session: Session, image_ids: list[int]) -> dict[int, list[str]]:
    """Each image's subset in every ready split of its dataset, newest split first."""
    rows = session.execute(
        select(SplitAssignment.image_id, SplitAssignment.subset)
        .join(Split, Split.id == SplitAssignment.split_id)
        .where(SplitAssignment.image_id.in_(image_ids), Split.status == SplitStatus.READY)
        .order_by(Split.version.desc())
    )
    subsets: dict[int, list[str]] = {image_id: [] for image_id in image_ids}
    for image_id, subset in rows:
        subsets[image_id].append(subset)
    return subsets
