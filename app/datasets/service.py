"""Datasets, their labels and images (uploads and ingest: app/uploads).

Services take keyword-only arguments, only flush (the caller's unit of work commits) and raise the domain
errors of ``app.core.errors`` with a message a person can act on.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from sqlalchemy.orm import Session

from app.core.errors import Conflict, Invalid, NotFound
from app.core.lookup import get_or_404
from app.core.storage import BlobStore
from app.datasets import repository
from app.datasets.logic import InvalidNameError, csv_chunks, normalise_name
from app.health import service as health
from app.labels import service as label_service
from app.labels.repository import HistoryRow
from app.models import Dataset, Image, Label, Split

MAX_DATASET_NAME = 200
MAX_DESCRIPTION = 10_000
IMAGE_MEDIA_TYPES = {
    "JPEG": "image/jpeg",
    "MPO": "image/jpeg",
    "PNG": "image/png",
    "WEBP": "image/webp",
    "BMP": "image/bmp",
    "GIF": "image/gif",
    "TIFF": "image/tiff",
}

# ---- datasets -------------------------------------------------------------------------------------------


def _has_control_characters(text: str) -> bool:
    return any(unicodedata.category(character) == "Cc" for character in text)


def _dataset_name(raw: str) -> str:
    name = " ".join(raw.split())
    if not name or len(name) > MAX_DATASET_NAME:
        raise Invalid(f"a dataset name needs 1 to {MAX_DATASET_NAME} characters")
    if _has_control_characters(name):  # NUL and the like (Postgres refuses NUL in text outright)
        raise Invalid("a dataset name cannot contain control characters")
    return name


def _description(raw: str) -> str:
    if "\x00" in raw:
        raise Invalid("a description cannot contain NUL characters")
    if len(raw.strip()) > MAX_DESCRIPTION:
        raise Invalid(f"a description may have at most {MAX_DESCRIPTION:,} characters")
    return raw.strip()


def create_dataset(session: Session, *, name: str, description: str = "", user_id: int | None) -> Dataset:
    name = _dataset_name(name)
    if repository.dataset_by_name(session, name) is not None:
        raise Conflict(f"a dataset named {name!r} already exists")
    dataset = Dataset(name=name, description=_description(description), created_by_id=user_id)
    session.add(dataset)
    session.flush()
    return dataset


def get_dataset(session: Session, *, dataset_id: int) -> Dataset:
    return get_or_404(session, Dataset, dataset_id)


def dataset_by_name(session: Session, *, name: str) -> Dataset | None:
    return repository.dataset_by_name(session, " ".join(name.split()))


def list_datasets(session: Session) -> list[tuple[Dataset, int]]:
    """Every dataset with its image count, by name."""
    return repository.datasets_with_counts(session)


@dataclass(frozen=True)
class LabelCount:
    id: int
    name: str
    images: int


@dataclass(frozen=True)
class DatasetSummary:
    dataset: Dataset
    image_count: int
    labels: list[LabelCount]  # every label still offered, with zero-image ones, by name
    sources: dict[str, int]
    # images per (label, source): the dataset page's table
    table: dict[str, dict[str, int]]
    unlabeled: int = 0  # uploaded without a label, not counted in image_count until labelled

    @property
    def source_names(self) -> list[str]:
        return sorted(self.sources)

    @property
    def balance(self) -> list[tuple[str, float]]:
        """(label, images) for the class-balance chart."""
        return [(label.name, float(label.images)) for label in self.labels]


def dataset_summary(session: Session, *, dataset_id: int) -> DatasetSummary:
    dataset = get_dataset(session, dataset_id=dataset_id)
    names = {label.id: label.name for label in repository.labels_of(session, dataset_id, include_merged=True)}
    per_label: dict[str, int] = {
        label.name: 0 for label in repository.labels_of(session, dataset_id, include_merged=False)
    }
    sources: dict[str, int] = {}
    table: dict[str, dict[str, int]] = {}
    for label_id, source, count in repository.label_source_counts(session, dataset_id):
        name = names[label_id]
        per_label[name] = per_label.get(name, 0) + count
        sources[source] = sources.get(source, 0) + count
        table.setdefault(name, {})[source] = count
    ids = {name: label_id for label_id, name in names.items()}
    return DatasetSummary(
        dataset=dataset,
        image_count=sum(sources.values()),
        labels=[LabelCount(ids[name], name, count) for name, count in sorted(per_label.items())],
        sources=dict(sorted(sources.items())),
        table=table,
        unlabeled=repository.unlabeled_count(session, dataset_id),
    )


def update_dataset(
    session: Session,
    *,
    dataset_id: int,
    changes: dict[str, Any],
) -> Dataset:
    """Apply the given fields (name, description, target_source); a target must be a source with images."""
    dataset = get_dataset(session, dataset_id=dataset_id)
    if "name" in changes and changes["name"] is not None:
        name = _dataset_name(changes["name"])
        other = repository.dataset_by_name(session, name)
        if other is not None and other.id != dataset.id:
            raise Conflict(f"a dataset named {name!r} already exists")
        dataset.name = name
    if "description" in changes and changes["description"] is not None:
        dataset.description = _description(str(changes["description"]))
    if "target_source" in changes:
        target = changes["target_source"] or None
        if target is not None and not repository.source_exists(session, dataset.id, target):
            known = ", ".join(repository.sources_of(session, dataset.id)) or "none yet"
            raise Invalid(f"no image comes from source {target!r} (sources: {known})")
        dataset.target_source = target
    session.flush()
    return dataset


# ---- labels ---------------------------------------------------------------------------------------------


def _label_name(raw: str) -> str:
    try:
        return normalise_name(raw)
    except InvalidNameError as error:
        raise Invalid(error.reason) from error


def dataset_label(session: Session, *, dataset_id: int, label_id: int) -> Label:
    label = repository.get_label(session, label_id)
    if label is None or label.dataset_id != dataset_id:
        raise NotFound(f"label {label_id} is not a label of dataset {dataset_id}")
    if label.merged_into_id is not None:
        raise Conflict(f"label {label.name!r} was merged into another label")
    return label


def add_label(session: Session, *, dataset_id: int, name: str, user_id: int | None) -> Label:
    get_dataset(session, dataset_id=dataset_id)
    name = _label_name(name)
    existing = repository.label_by_name(session, dataset_id, name)
    if existing is not None and existing.merged_into_id is None:
        raise Conflict(f"the dataset already has a label {name!r}")
    if existing is not None:  # a merged label's name comes back as a label of its own
        existing.merged_into_id = None
        label = existing
    else:
        label = repository.add_label(session, dataset_id=dataset_id, name=name)
    repository.add_label_event(session, dataset_id=dataset_id, kind="add", details={"name": name}, user_id=user_id)
    session.flush()
    return label


def rename_label(session: Session, *, dataset_id: int, label_id: int, name: str, user_id: int | None) -> Label:
    label = dataset_label(session, dataset_id=dataset_id, label_id=label_id)
    name = _label_name(name)
    if name == label.name:
        return label
    if repository.label_by_name(session, dataset_id, name) is not None:
        raise Conflict(f"the dataset already has a label {name!r}; merge the two labels instead")
    details = {"from": label.name, "to": name}
    label.name = name
    repository.add_label_event(session, dataset_id=dataset_id, kind="rename", details=details, user_id=user_id)
    session.flush()
    return label


# ---- images ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ImageQuery:
    label: str | None = None
    source: str | None = None
    subset: str | None = None
    split_id: int | None = None
    q: str | None = None
    unlabeled: bool = False
    issue: str | None = None  # a data-health issue type
    sort: str | None = None  # with an issue: "-score" (worst first, the default) or "score"
    image_ids: tuple[int, ...] | None = None  # only these, in this order (find more like this)


@dataclass(frozen=True)
class ImagePage:
    total: int
    items: list[repository.ImageRow]
    limit: int
    offset: int
    split: Split | None  # the split the subset filter reads (given, or the newest ready one)


def list_images(
    session: Session,
    *,
    dataset_id: int,
    query: ImageQuery,
    limit: int = 60,
    offset: int = 0,
    ranked: Sequence[int] | None = None,
) -> ImagePage:
    """A page of the filtered images, newest first; or, given `ranked` image ids, those of them the filter keeps
    in that order (a run's ranking: app/review/ranking.py)."""
    get_dataset(session, dataset_id=dataset_id)
    limit = max(1, min(limit, 500))
    offset = max(0, offset)
    split = _subset_split(session, dataset_id=dataset_id, split_id=query.split_id)
    label_id: int | None = None
    matches_nothing = False
    if query.label:
        label = repository.label_by_name(session, dataset_id, query.label)
        matches_nothing = label is None
        label_id = label.id if label is not None else None
    if query.subset and split is None:
        matches_nothing = True
    where = repository.ImageFilter(
        dataset_id=dataset_id,
        label_id=label_id,
        source=query.source or None,
        split_id=split.id if split is not None and query.subset else None,
        subset=query.subset or None,
        filename_contains=(query.q or "").strip() or None,
        unlabeled=query.unlabeled,
        matches_nothing=matches_nothing,
        issue=health.issue_filter(session, dataset_id=dataset_id, issue=query.issue, sort=query.sort),
        mildest_first=query.sort == "score",
        image_ids=query.image_ids,
    )
    if ranked is not None:
        kept = repository.filtered_ids(session, where)
        ordered = [image_id for image_id in ranked if image_id in kept]
        page_ids = ordered[offset : offset + limit]
        items = repository.image_page(session, where, limit=limit, offset=offset, ids=page_ids)
        return ImagePage(total=len(ordered), items=items, limit=limit, offset=offset, split=split)
    return ImagePage(
        total=repository.count_images(session, where),
        items=repository.image_page(session, where, limit=limit, offset=offset),
        limit=limit,
        offset=offset,
        split=split,
    )


def _subset_split(session: Session, *, dataset_id: int, split_id: int | None) -> Split | None:
    if split_id is None:
        return repository.newest_ready_split(session, dataset_id)
    split = repository.get_split(session, split_id)
    if split is None or split.dataset_id != dataset_id:
        raise NotFound(f"split {split_id} is not a split of dataset {dataset_id}")
    return split


def splits_of(session: Session, *, dataset_id: int) -> list[Split]:
    return repository.splits_of(session, dataset_id)


def get_image(session: Session, *, image_id: int) -> Image:
    return get_or_404(session, Image, image_id)


@dataclass(frozen=True)
class ImageDetail:
    image: Image
    dataset: Dataset
    label: str | None  # None: unlabeled
    history: list[HistoryRow]
    subsets: list[tuple[int, int, str]]  # (split id, version, subset)


def image_detail(session: Session, *, image_id: int) -> ImageDetail:
    image = get_image(session, image_id=image_id)
    label = repository.get_label(session, image.label_id) if image.label_id is not None else None
    return ImageDetail(
        image=image,
        dataset=get_dataset(session, dataset_id=image.dataset_id),
        label=label.name if label is not None else (None if image.label_id is None else ""),
        history=label_service.history(session, image_id=image.id),
        subsets=repository.subsets_of_image(session, image.id),
    )


@dataclass(frozen=True)
class ImageFile:
    sha256: str
    media_type: str
    filename: str


def image_file(session: Session, *, image_id: int, kind: Literal["thumb", "full"], blobs: BlobStore) -> ImageFile:
    """The stored blob behind an image URL; found by id, never by a path someone supplied."""
    image = get_image(session, image_id=image_id)
    if kind == "thumb" and image.thumb_sha256 and blobs.exists(image.thumb_sha256):
        return ImageFile(image.thumb_sha256, "image/jpeg", f"{image.id}-thumb.jpg")
    if not blobs.exists(image.sha256):
        raise NotFound(f"the file of image {image_id} is missing from the blob store")
    base = image.filename.rsplit("/", 1)[-1]
    return ImageFile(image.sha256, IMAGE_MEDIA_TYPES.get(image.format, "application/octet-stream"), base)


IMAGES_CSV_HEADER = ("filename", "label", "source", "imported_subset", "width", "height", "sha256")


def images_csv(session: Session, *, dataset_id: int) -> Iterator[str]:
    """Every image of the dataset as CSV pieces; cells a spreadsheet would evaluate are neutralised."""
    return csv_chunks(IMAGES_CSV_HEADER, repository.export_rows(session, dataset_id))
