"""Queries for datasets, labels, images and uploads (typed SQLAlchemy 2.0; nothing else lives here)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

from sqlalchemy import Select, delete, func, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from app.models import (
    Dataset,
    Image,
    Job,
    Label,
    LabelChange,
    LabelEvent,
    Split,
    SplitAssignment,
    Upload,
    UploadEntry,
)

UNFINISHED_UPLOADS = ("open", "queued", "ingesting")
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
    return query


def count_images(session: Session, where: ImageFilter) -> int:
    # count(*), not count(id): (dataset_id, label_id) and (dataset_id, source) then answer from the index alone.
    return int(session.scalar(_filtered(select(func.count()).select_from(Image), where)) or 0)


def image_page(session: Session, where: ImageFilter, *, limit: int, offset: int) -> list[ImageRow]:
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
        ).outerjoin(Label, Label.id == Image.label_id),
        where,
    )
    rows = session.execute(query.order_by(Image.id.desc()).limit(limit).offset(offset)).all()
    return [ImageRow(*row) for row in rows]


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


def entry_rows(session: Session, upload_id: int) -> Iterator[tuple[Any, ...]]:
    """(name, outcome, reason, label, image id) of every entry of an upload, streamed in id order."""
    query = (
        select(UploadEntry.name, UploadEntry.outcome, UploadEntry.reason, UploadEntry.label, UploadEntry.image_id)
        .where(UploadEntry.upload_id == upload_id)
        .order_by(UploadEntry.id)
        .execution_options(yield_per=2000)
    )
    for row in session.execute(query):
        yield tuple(row)


def get_image(session: Session, image_id: int) -> Image | None:
    return session.get(Image, image_id)


def subsets_of_image(session: Session, image_id: int) -> list[tuple[int, int, str]]:
    """(split id, split version, subset) for every split that placed the image."""
    rows = session.execute(
        select(Split.id, Split.version, SplitAssignment.subset)
        .join(SplitAssignment, SplitAssignment.split_id == Split.id)
        .where(SplitAssignment.image_id == image_id)
        .order_by(Split.version.desc())
    ).all()
    return [(int(split_id), int(version), str(subset)) for split_id, version, subset in rows]


def existing_by_sha(
    session: Session, dataset_id: int, shas: Iterable[str]
) -> dict[str, tuple[int, int | None, str]]:
    """sha256 -> (image id, label id, filename) for the given contents already in the dataset."""
    wanted = sorted(set(shas))
    if not wanted:
        return {}
    rows = session.execute(
        select(Image.sha256, Image.id, Image.label_id, Image.filename).where(
            Image.dataset_id == dataset_id, Image.sha256.in_(wanted)
        )
    ).all()
    return {sha: (int(image_id), label_id, filename) for sha, image_id, label_id, filename in rows}


def insert_images(session: Session, rows: Sequence[dict[str, Any]]) -> dict[str, int]:
    """Insert image rows in one statement; sha256 -> new id."""
    if not rows:
        return {}
    inserted = session.execute(
        insert(Image).returning(Image.id, Image.sha256, sort_by_parameter_order=True), list(rows)
    ).all()
    return {sha: int(image_id) for image_id, sha in inserted}


def insert_import_changes(
    session: Session, images: Sequence[tuple[int, int | None]], *, user_id: int | None, now: datetime
) -> None:
    """The first history record of each new (image id, label id; None: uploaded unlabeled)."""
    if images:
        session.execute(
            insert(LabelChange),
            [
                {
                    "image_id": image_id,
                    "kind": "import",
                    "old_label_id": None,
                    "new_label_id": label_id,
                    "version": 1,
                    "reason": "",
                    "user_id": user_id,
                    "created_at": now,
                }
                for image_id, label_id in images
            ],
        )


def add_to_upload_counts(
    session: Session, upload_id: int, *, accepted: int, duplicates: int, conflicts: int, rejected: int
) -> None:
    session.execute(
        update(Upload)
        .where(Upload.id == upload_id)
        .values(
            accepted=Upload.accepted + accepted,
            duplicates=Upload.duplicates + duplicates,
            conflicts=Upload.conflicts + conflicts,
            rejected=Upload.rejected + rejected,
        )
        .execution_options(synchronize_session=False)
    )


def blob_in_use(session: Session, sha256: str, *, except_upload_id: int) -> bool:
    """Whether an image, a thumbnail, another upload's labels CSV or another unfinished upload still needs
    this blob."""
    image = select(Image.id).where((Image.sha256 == sha256) | (Image.thumb_sha256 == sha256)).limit(1)
    if session.scalar(image) is not None:
        return True
    csv = select(Upload.id).where(Upload.labels_csv_sha256 == sha256, Upload.id != except_upload_id).limit(1)
    if session.scalar(csv) is not None:
        return True
    entry = (
        select(UploadEntry.id)
        .join(Upload, Upload.id == UploadEntry.upload_id)
        .where(
            UploadEntry.sha256 == sha256,
            Upload.status.in_(UNFINISHED_UPLOADS),
            Upload.id != except_upload_id,
        )
        .limit(1)
    )
    return session.scalar(entry) is not None


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


# ---- uploads --------------------------------------------------------------------------------------------


def get_upload(session: Session, upload_id: int, *, lock: bool = False) -> Upload | None:
    if lock:
        return session.scalar(select(Upload).where(Upload.id == upload_id).with_for_update())
    return session.get(Upload, upload_id)


def open_upload_of(session: Session, *, dataset_id: int, user_id: int | None) -> Upload | None:
    return session.scalar(
        select(Upload)
        .where(Upload.dataset_id == dataset_id, Upload.created_by_id == user_id, Upload.status == "open")
        .order_by(Upload.id.desc())
        .limit(1)
    )


def uploads_of(session: Session, dataset_id: int, *, limit: int) -> list[Upload]:
    query = select(Upload).where(Upload.dataset_id == dataset_id, Upload.status != "discarded")
    query = query.order_by(Upload.id.desc()).limit(limit)
    return list(session.scalars(query))


def add_upload(session: Session, upload: Upload) -> Upload:
    session.add(upload)
    session.flush()
    return upload


def get_job(session: Session, job_id: int) -> Job | None:
    return session.get(Job, job_id)


def entries_by_name(session: Session, upload_id: int, names: Iterable[str]) -> dict[str, UploadEntry]:
    wanted = sorted(set(names))
    if not wanted:
        return {}
    found = session.scalars(select(UploadEntry).where(UploadEntry.upload_id == upload_id, UploadEntry.name.in_(wanted)))
    return {entry.name: entry for entry in found}


def get_entry(session: Session, entry_id: int) -> UploadEntry | None:
    return session.get(UploadEntry, entry_id)


def insert_entries(session: Session, rows: Sequence[dict[str, Any]]) -> None:
    """Insert upload entries, skipping names the upload already has (a resent batch, a retried job)."""
    if not rows:
        return
    dialect = session.get_bind().dialect.name
    statement = (postgresql.insert if dialect == "postgresql" else sqlite.insert)(UploadEntry)
    session.execute(statement.on_conflict_do_nothing(index_elements=["upload_id", "name"]), list(rows))


def update_entries(session: Session, rows: Sequence[dict[str, Any]]) -> None:
    """Bulk update by primary key (each row has "id")."""
    if rows:
        session.execute(update(UploadEntry), list(rows))


def count_entries(session: Session, upload_id: int) -> dict[str, int]:
    rows = session.execute(
        select(UploadEntry.outcome, func.count())
        .where(UploadEntry.upload_id == upload_id)
        .group_by(UploadEntry.outcome)
    ).all()
    return {str(outcome): int(n) for outcome, n in rows}


def archives_to_expand(session: Session, upload_id: int) -> list[UploadEntry]:
    return list(
        session.scalars(
            select(UploadEntry)
            .where(UploadEntry.upload_id == upload_id, UploadEntry.is_archive, UploadEntry.outcome == "staged")
            .order_by(UploadEntry.id)
        )
    )


def member_blobs(session: Session, archive_entry_id: int) -> list[str]:
    query = select(UploadEntry.sha256).where(UploadEntry.archive_entry_id == archive_entry_id).distinct()
    return [sha for sha in session.scalars(query) if sha]


def member_bytes(session: Session, upload_id: int) -> int:
    """The members' bytes of the upload's fully expanded zips (one cut short is expanded again, from the start)."""
    expanded = select(UploadEntry.id).where(UploadEntry.upload_id == upload_id, UploadEntry.outcome == "expanded")
    query = select(func.coalesce(func.sum(UploadEntry.size), 0)).where(
        UploadEntry.upload_id == upload_id, UploadEntry.archive_entry_id.in_(expanded)
    )
    return int(session.scalar(query) or 0)


def delete_archive_members(session: Session, archive_entry_id: int) -> None:
    session.execute(delete(UploadEntry).where(UploadEntry.archive_entry_id == archive_entry_id))


@dataclass(frozen=True)
class FileEntry:
    id: int
    name: str
    sha256: str
    outcome: str
    archive_entry_id: int | None


def file_entries(session: Session, upload_id: int) -> list[FileEntry]:
    """Every image-candidate entry of an upload (not archives, not refused by name), in id order."""
    rows = session.execute(
        select(UploadEntry.id, UploadEntry.name, UploadEntry.sha256, UploadEntry.outcome, UploadEntry.archive_entry_id)
        .where(UploadEntry.upload_id == upload_id, UploadEntry.sha256.is_not(None), ~UploadEntry.is_archive)
        .order_by(UploadEntry.id)
    ).all()
    return [FileEntry(int(i), name, str(sha), outcome, archive) for i, name, sha, outcome, archive in rows]


def archive_names(session: Session, upload_id: int) -> dict[int, str]:
    rows = session.execute(
        select(UploadEntry.id, UploadEntry.name).where(UploadEntry.upload_id == upload_id, UploadEntry.is_archive)
    ).all()
    return {int(entry_id): name for entry_id, name in rows}


def still_staged(session: Session, entry_ids: Iterable[int]) -> set[int]:
    ids = list(entry_ids)
    if not ids:
        return set()
    query = select(UploadEntry.id).where(UploadEntry.id.in_(ids), UploadEntry.outcome == "staged")
    return set(session.scalars(query))


def entries_with_outcome(session: Session, upload_id: int, outcomes: Sequence[str], *, limit: int) -> list[UploadEntry]:
    query = (
        select(UploadEntry)
        .where(UploadEntry.upload_id == upload_id, UploadEntry.outcome.in_(list(outcomes)))
        .order_by(UploadEntry.id)
        .limit(limit)
    )
    return list(session.scalars(query))


def noted_entries(session: Session, upload_id: int, *, limit: int) -> list[UploadEntry]:
    query = (
        select(UploadEntry)
        .where(UploadEntry.upload_id == upload_id, UploadEntry.outcome == "accepted", UploadEntry.reason.is_not(None))
        .order_by(UploadEntry.id)
        .limit(limit)
    )
    return list(session.scalars(query))


def cleanup_candidates(session: Session, upload_id: int) -> list[str]:
    """Blobs this upload staged that no image of it became: rejected files and expanded archives."""
    query = (
        select(UploadEntry.sha256)
        .where(
            UploadEntry.upload_id == upload_id,
            UploadEntry.sha256.is_not(None),
            UploadEntry.outcome.in_(["rejected", "expanded"]),
        )
        .distinct()
    )
    return [sha for sha in session.scalars(query) if sha]
