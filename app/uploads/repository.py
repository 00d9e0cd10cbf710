"""Queries of uploads: their entries, the images an ingest batch adds, and releasing their bytes (typed
SQLAlchemy 2.0; nothing else lives here)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from app.models import Image, ImageStat, Job, LabelChange, Upload, UploadEntry
from app.uploads.states import UNFINISHED, EntryOutcome, UploadStatus

# ---- uploads and their entries --------------------------------------------------------------------------


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


def existing_by_sha(session: Session, dataset_id: int, shas: Iterable[str]) -> dict[str, tuple[int, int | None, str]]:
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


def insert_image_stats(session: Session, rows: Sequence[dict[str, Any]]) -> None:
    """One statistics row per new image (image_id and the measured columns)."""
    if rows:
        session.execute(insert(ImageStat), list(rows))


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
            Upload.status.in_(UNFINISHED),
            Upload.id != except_upload_id,
        )
        .limit(1)
    )
    return session.scalar(entry) is not None


def get_upload(session: Session, upload_id: int, *, lock: bool = False) -> Upload | None:
    if lock:
        return session.scalar(select(Upload).where(Upload.id == upload_id).with_for_update())
    return session.get(Upload, upload_id)


def open_upload_of(session: Session, *, dataset_id: int, user_id: int | None) -> Upload | None:
    return session.scalar(
        select(Upload)
        .where(Upload.dataset_id == dataset_id, Upload.created_by_id == user_id, Upload.status == UploadStatus.OPEN)
        .order_by(Upload.id.desc())
        .limit(1)
    )


def uploads_of(session: Session, dataset_id: int, *, limit: int) -> list[Upload]:
    query = select(Upload).where(Upload.dataset_id == dataset_id, Upload.status != UploadStatus.DISCARDED)
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
            .where(
                UploadEntry.upload_id == upload_id, UploadEntry.is_archive, UploadEntry.outcome == EntryOutcome.STAGED
            )
            .order_by(UploadEntry.id)
        )
    )


def member_blobs(session: Session, archive_entry_id: int) -> list[str]:
    query = select(UploadEntry.sha256).where(UploadEntry.archive_entry_id == archive_entry_id).distinct()
    return [sha for sha in session.scalars(query) if sha]


def member_bytes(session: Session, upload_id: int) -> int:
    """The members' bytes of the upload's fully expanded zips (one cut short is expanded again, from the start)."""
    expanded = select(UploadEntry.id).where(
        UploadEntry.upload_id == upload_id, UploadEntry.outcome == EntryOutcome.EXPANDED
    )
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
    query = select(UploadEntry.id).where(UploadEntry.id.in_(ids), UploadEntry.outcome == EntryOutcome.STAGED)
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
        .where(
            UploadEntry.upload_id == upload_id,
            UploadEntry.outcome == EntryOutcome.ACCEPTED,
            UploadEntry.reason.is_not(None),
        )
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
            UploadEntry.outcome.in_([EntryOutcome.REJECTED, EntryOutcome.EXPANDED]),
        )
        .distinct()
    )
    return [sha for sha in session.scalars(query) if sha]


# ---- releasing bytes (discarding an upload, the sweep of abandoned ones) --------------------------------


def staged_blobs_of(session: Session, upload_id: int) -> list[str]:
    """Every blob an upload's entries and its labels CSV name."""
    entries = select(UploadEntry.sha256).where(UploadEntry.upload_id == upload_id, UploadEntry.sha256.is_not(None))
    csv = session.scalar(select(Upload.labels_csv_sha256).where(Upload.id == upload_id))
    return sorted({sha for sha in session.scalars(entries.distinct()) if sha} | ({csv} if csv else set()))


def abandoned_uploads(session: Session, *, ended_before: datetime) -> list[int]:
    """Uploads waiting for a retry whose ingest job failed or was cancelled before `ended_before`."""
    query = (
        select(Upload.id)
        .join(Job, Job.id == Upload.job_id)
        .where(
            Upload.status.in_((UploadStatus.QUEUED, UploadStatus.INGESTING)),
            Job.status.in_(("failed", "cancelled")),
            Job.finished_at < ended_before,
        )
        .order_by(Upload.id)
    )
    return list(session.scalars(query))


def delete_entries_of(session: Session, upload_id: int) -> None:
    session.execute(delete(UploadEntry).where(UploadEntry.upload_id == upload_id))
