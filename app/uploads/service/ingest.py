"""The ingest job's steps on the database, each in its own short transaction: begin, expand zips, list the
files, write each classified batch, finish.

The decisions are `app.uploads.logic.classify_batch`'s; `ingest_batch` only gathers what it needs and writes
what it decided.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from sqlalchemy.orm import Session

from app.core.errors import NotFound
from app.datasets import repository as datasets_repository
from app.models import utcnow
from app.uploads import repository
from app.uploads.logic import (
    BatchFile,
    KnownImage,
    NewImage,
    classify_batch,
    entry_updates,
    labels_needed,
)
from app.uploads.service import staging
from app.uploads.service.conflicts import _label_for
from app.uploads.states import EntryOutcome, UploadStatus


@dataclass(frozen=True)
class IngestSpec:
    upload_id: int
    dataset_id: int
    source: str
    label: str | None
    labels_csv_sha256: str | None
    user_id: int | None
    unlabeled: bool = False


def begin_ingest(session: Session, *, upload_id: int) -> IngestSpec | None:
    """Mark the upload as ingesting; None when there is nothing to do (gone, or already done)."""
    upload = repository.get_upload(session, upload_id, lock=True)
    if upload is None or upload.status in (UploadStatus.DONE, UploadStatus.DISCARDED):
        return None
    upload.status = UploadStatus.INGESTING
    session.flush()
    return IngestSpec(
        upload_id=upload.id,
        dataset_id=upload.dataset_id,
        source=upload.source,
        label=upload.label,
        labels_csv_sha256=upload.labels_csv_sha256,
        user_id=upload.created_by_id,
        unlabeled=upload.unlabeled,
    )


def archives_to_expand(session: Session, *, upload_id: int) -> list[tuple[int, str, str | None]]:
    """(entry id, name, sha256) of the upload's zips not yet expanded."""
    return [(e.id, e.name, e.sha256) for e in repository.archives_to_expand(session, upload_id)]


def record_members(
    session: Session,
    *,
    upload_id: int,
    archive_entry_id: int,
    archive_name: str,
    members: Sequence[staging.StagedBlob],
) -> None:
    """Stage a batch of a zip's members as entries of their own (idempotent: a retry skips known names)."""
    staging.record_entries(session, upload_id=upload_id, files=members, archive=(archive_entry_id, archive_name))


def close_archive(session: Session, *, entry_id: int, refusal: str | None, unrecorded: Sequence[str] = ()) -> list[str]:
    """A fully read zip becomes "expanded"; a refused one is rejected as a whole, its members dropped. Returns
    the blobs of dropped members (and of `unrecorded` ones, written but never recorded) that nothing else
    needs, to delete once this commits."""
    entry = repository.get_entry(session, entry_id)
    if entry is None:
        return []
    released: list[str] = []
    if refusal is None:
        entry.outcome = EntryOutcome.EXPANDED
    else:
        members = sorted(set(repository.member_blobs(session, entry_id)) | set(unrecorded))
        repository.delete_archive_members(session, entry_id)
        entry.outcome, entry.reason = EntryOutcome.REJECTED, refusal
        released = [sha for sha in members if not repository.blob_in_use(session, sha, except_upload_id=-1)]
    session.flush()
    return released


def expanded_bytes(session: Session, *, upload_id: int) -> int:
    """What the upload's zips expanded to so far (their members' sizes)."""
    return repository.member_bytes(session, upload_id)


def ingest_files(session: Session, *, upload_id: int) -> tuple[list[repository.FileEntry], dict[int, str]]:
    """Every image candidate of the upload (done or not, so labels read the same on a retry) and the names
    of its archives by entry id."""
    return repository.file_entries(session, upload_id), repository.archive_names(session, upload_id)


@dataclass
class BatchOutcome:
    accepted: int = 0
    duplicates: int = 0
    conflicts: int = 0
    rejected: int = 0


def ingest_batch(session: Session, *, spec: IngestSpec, items: Sequence[BatchFile]) -> BatchOutcome:
    """Turn decoded files into images, duplicates, conflicts or rejections, all in the caller's transaction.

    The dataset row is locked first, so two uploads into one dataset cannot both add the same content. Rows go
    in with bulk statements: a batch is a handful of round trips however many files it holds.
    """
    if datasets_repository.get_dataset(session, spec.dataset_id, lock=True) is None:
        raise NotFound(f"dataset {spec.dataset_id} was deleted")
    pending = repository.still_staged(session, (item.entry_id for item in items))
    todo = [item for item in items if item.entry_id in pending]  # a retry skips what is done
    labels = {
        name: _label_for(session, dataset_id=spec.dataset_id, name=name, upload_id=spec.upload_id, user_id=spec.user_id)
        for name in labels_needed(todo)
    }
    plan = classify_batch(
        todo,
        labels={name: label.name for name, label in labels.items()},
        stored=_known(session, spec, todo),
        unlabeled=spec.unlabeled,
    )
    new_ids = _add_images(
        session, spec=spec, new=plan.new, label_ids={label.name: label.id for label in labels.values()}
    )
    repository.update_entries(session, entry_updates(plan, new_ids))
    outcome = BatchOutcome(
        accepted=len(plan.new),
        duplicates=plan.count(EntryOutcome.DUPLICATE),
        conflicts=plan.count(EntryOutcome.CONFLICT),
        rejected=len(plan.rejected),
    )
    repository.add_to_upload_counts(session, spec.upload_id, **asdict(outcome))
    return outcome


def _known(session: Session, spec: IngestSpec, files: Sequence[BatchFile]) -> dict[str, KnownImage]:
    """The dataset's images with the content of one of the files, by sha256."""
    found = repository.existing_by_sha(session, spec.dataset_id, (file.sha256 for file in files))
    if not found:
        return {}
    labels = datasets_repository.labels_of(session, spec.dataset_id, include_merged=True)
    names = {label.id: label.name for label in labels}
    return {
        # An image stored unlabeled (the pool) has no name a file could give: a labelled copy is a conflict.
        sha: KnownImage(image_id, names.get(label_id, "?") if label_id is not None else "", filename)
        for sha, (image_id, label_id, filename) in found.items()
    }


def _add_images(
    session: Session, *, spec: IngestSpec, new: Sequence[NewImage], label_ids: dict[str, int]
) -> dict[str, int]:
    """Insert the new images, their first label-history record and their statistics; sha256 -> image id."""
    rows: list[dict[str, Any]] = [
        {
            "dataset_id": spec.dataset_id,
            "sha256": image.file.sha256,
            "thumb_sha256": image.file.thumb_sha256,
            "filename": image.file.name,
            "source": image.file.plan.source,
            "imported_subset": image.file.plan.subset,
            "label_id": label_ids[image.label] if image.label is not None else None,
            "from_pool": image.label is None,
            "width": image.decoded.width,
            "height": image.decoded.height,
            "format": image.decoded.format,
            "phash": image.decoded.dhash,
            "inner_phash": image.decoded.inner_dhash,
            "notes": "; ".join(image.decoded.notes),
            "upload_id": spec.upload_id,
        }
        for image in new
    ]
    new_ids = repository.insert_images(session, rows)
    repository.insert_import_changes(
        session,
        [(new_ids[image.file.sha256], label_ids[image.label] if image.label is not None else None) for image in new],
        user_id=spec.user_id,
        now=utcnow(),
    )
    repository.insert_image_stats(
        session,
        [
            {"image_id": new_ids[image.file.sha256], **asdict(image.decoded.stats)}
            for image in new
            if image.decoded.stats is not None
        ],
    )
    return new_ids


def finish_ingest(session: Session, *, upload_id: int) -> dict[str, int]:
    """Count the outcomes once more from the entries (exact after retries) and close the upload."""
    upload = staging.get_upload(session, upload_id=upload_id)
    counts = repository.count_entries(session, upload_id)
    upload.accepted = counts.get(EntryOutcome.ACCEPTED, 0)
    upload.duplicates = counts.get(EntryOutcome.DUPLICATE, 0)
    upload.conflicts = counts.get(EntryOutcome.CONFLICT, 0) + counts.get(EntryOutcome.RESOLVED, 0)
    upload.rejected = counts.get(EntryOutcome.REJECTED, 0)
    upload.status = UploadStatus.DONE
    session.flush()
    return counts


def unused_blobs(session: Session, *, upload_id: int) -> list[str]:
    """Blobs the finished upload staged that nothing needs any more (rejected files, expanded zips)."""
    return [
        sha
        for sha in repository.cleanup_candidates(session, upload_id)
        if not repository.blob_in_use(session, sha, except_upload_id=upload_id)
    ]
