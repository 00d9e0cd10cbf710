"""Staging an upload's files: opening (or resuming) an upload, naming and recording the files it receives,
storing their bytes in the blob store."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from sqlalchemy.orm import Session

from app.core.errors import Conflict, InsufficientStorage, Invalid, NotFound
from app.core.lookup import get_or_404
from app.core.storage import BlobStore, blob_writer, is_disk_full, store_file
from app.datasets.logic import InvalidNameError, normalise_name, parse_label_csv
from app.ml.archives import UnsafePathError, is_ignored_path, normalise_relative_path
from app.models import Dataset, Upload, User
from app.uploads import repository
from app.uploads.logic import archive_member_name
from app.uploads.ownership import check_owner
from app.uploads.states import EntryOutcome, UploadStatus

MAX_ENTRY_NAME = 1000  # upload_entries.name


@dataclass(frozen=True)
class StagedBlob:
    """A file as it arrived: its name as given and, once stored, its content address."""

    name: str
    sha256: str | None
    size: int
    refusal: str | None = None  # refused before ingest (the name, the size)


def printable(name: str) -> str:
    return name if name.isprintable() else repr(name)[1:-1]


def entry_name(raw: str) -> tuple[str, str | None]:
    """The name to record for an uploaded file and, if its name is refused, why."""
    try:
        name = normalise_relative_path(raw)
    except UnsafePathError as error:
        return printable(raw)[:MAX_ENTRY_NAME] or "(no name)", error.reason
    if len(name) > MAX_ENTRY_NAME:
        return name[: MAX_ENTRY_NAME - 1] + "…", f"name is longer than {MAX_ENTRY_NAME} characters"
    return name, None


def is_skipped(raw: str) -> bool:
    """OS metadata (`__MACOSX/`, `.DS_Store`, dotfiles, `Thumbs.db`) is dropped silently; an unsafe name is
    not skipped but refused with its reason."""
    try:
        return is_ignored_path(normalise_relative_path(raw))
    except UnsafePathError:
        return False


def _is_archive(name: str) -> bool:
    return name.lower().endswith(".zip")


def checked_name(raw: str, *, what: str) -> str:
    try:
        return normalise_name(raw, what=what)
    except InvalidNameError as error:
        raise Invalid(error.reason) from error


def source_name(raw: str | None) -> str:
    return checked_name(raw, what="source") if raw is not None and raw.strip() else "default"


def _optional_label(raw: str | None) -> str | None:
    return checked_name(raw, what="label") if raw is not None and raw.strip() else None


def start_upload(
    session: Session,
    *,
    dataset_id: int,
    user_id: int | None,
    source: str | None = None,
    label: str | None = None,
    resume: bool = True,
    unlabeled: bool = False,
) -> tuple[Upload, bool]:
    """The user's open upload into this dataset (resumed), or a new one; returns (upload, resumed).
    `unlabeled`: its images are stored without a label (the pool) instead of being rejected as "no label"."""
    get_or_404(session, Dataset, dataset_id)
    source, label = source_name(source), _optional_label(label)
    check_upload_fields(label=label, labels_csv=None, unlabeled=unlabeled)
    upload = repository.open_upload_of(session, dataset_id=dataset_id, user_id=user_id) if resume else None
    if upload is not None:
        upload.source, upload.label, upload.unlabeled = source, label, unlabeled
        session.flush()
        return upload, True
    upload = Upload(dataset_id=dataset_id, source=source, label=label, unlabeled=unlabeled, created_by_id=user_id)
    return repository.add_upload(session, upload), False


def get_upload(session: Session, *, upload_id: int) -> Upload:
    upload = get_or_404(session, Upload, upload_id)
    if upload.status == UploadStatus.DISCARDED:  # as gone as one never made
        raise NotFound(f"upload {upload_id} does not exist")
    return upload


def open_upload(session: Session, upload_id: int, user: User | None) -> Upload:
    upload = get_upload(session, upload_id=upload_id)
    check_owner(upload, user)
    if upload.status != UploadStatus.OPEN:
        raise Conflict(f"upload {upload_id} is already {upload.status}; start a new upload to add files")
    return upload


def check_can_add_files(session: Session, *, upload_id: int, user: User | None) -> None:
    """Before any file of a request is stored: the upload exists, is open and is the user's."""
    open_upload(session, upload_id, user)


def check_upload_fields(*, label: str | None, labels_csv: bytes | None, unlabeled: bool = False) -> None:
    """What a one-request upload's fields can be refused for, checked before its files are stored."""
    if unlabeled and ((label is not None and label.strip()) or labels_csv is not None):
        raise Invalid("an unlabeled upload takes no label and no labels CSV: its images are labelled later")
    if labels_csv is not None:
        if label is not None and label.strip():
            raise Invalid("give either one label for every file or a labels CSV, not both")
        check_labels_csv(labels_csv)


def open_upload_of(session: Session, *, dataset_id: int, user_id: int | None) -> Upload | None:
    return repository.open_upload_of(session, dataset_id=dataset_id, user_id=user_id)


def file_count(session: Session, *, upload_id: int) -> int:
    """Files recorded so far (a resumed upload's progress)."""
    counts = repository.count_entries(session, upload_id)
    return sum(n for outcome, n in counts.items() if outcome != EntryOutcome.EXPANDED)


@dataclass
class StageCounts:
    staged: int = 0
    already: int = 0
    rejected: int = 0
    skipped: int = 0


def stage_files(
    session: Session, *, upload_id: int, files: Sequence[StagedBlob], user: User | None = None
) -> StageCounts:
    """Record files whose content is already in the blob store; a name sent twice is recorded once."""
    upload = open_upload(session, upload_id, user)
    return record_entries(session, upload_id=upload.id, files=files, archive=None)


def record_entries(
    session: Session, *, upload_id: int, files: Sequence[StagedBlob], archive: tuple[int, str] | None
) -> StageCounts:
    counts = StageCounts()
    rows: dict[str, dict[str, Any]] = {}
    for staged in files:
        if is_skipped(staged.name):
            counts.skipped += 1
            continue
        name, refusal = entry_name(staged.name)
        # A refusal given with the file comes first: its name may be a printable escape of an unsafe one
        # (a control character shown as "\x01" would otherwise read as "contains a backslash").
        refusal = staged.refusal or refusal
        if archive is not None:
            name = archive_member_name(archive[1], name)[:MAX_ENTRY_NAME]
        rows.setdefault(
            name,
            {
                "upload_id": upload_id,
                "name": name,
                "sha256": None if refusal else staged.sha256,
                "size": staged.size,
                "is_archive": archive is None and refusal is None and _is_archive(name),
                "outcome": EntryOutcome.REJECTED if refusal else EntryOutcome.STAGED,
                "reason": refusal,
                "archive_entry_id": archive[0] if archive else None,
            },
        )
    existing = repository.entries_by_name(session, upload_id, rows)
    changed = []
    for name, entry in existing.items():
        row = rows.pop(name)
        staged = entry.outcome == row["outcome"] == EntryOutcome.STAGED
        if staged and entry.sha256 != row["sha256"]:
            changed.append({"id": entry.id, "sha256": row["sha256"], "size": row["size"]})  # the file changed
        counts.already += 1
    repository.update_entries(session, changed)
    repository.insert_entries(session, list(rows.values()))
    counts.rejected = sum(1 for row in rows.values() if row["outcome"] == EntryOutcome.REJECTED)
    counts.staged = len(rows) - counts.rejected
    session.flush()
    return counts


@contextlib.contextmanager
def disk_space() -> Iterator[None]:
    """A full disk is for the operator to fix, not a server bug: answer 507 with the reason, not a 500. (The
    blob store never leaves a half-written file: it writes to a temporary file and renames.)"""
    try:
        yield
    except OSError as error:
        if is_disk_full(error):
            raise InsufficientStorage(
                "no space left on device to store the upload; free some disk space on the server and send it again"
            ) from error
        raise


def store_files(blobs: BlobStore, sources: Sequence[tuple[str, Callable[[], BinaryIO]]]) -> list[StagedBlob]:
    """Stream several files into the blob store at once (their fsyncs overlap); names kept in order."""

    def one(opener: Callable[[], BinaryIO]) -> tuple[str, int]:
        with opener() as source:
            return store_file(blobs, source)

    futures = [(name, blob_writer().submit(one, opener)) for name, opener in sources]
    with disk_space():
        return [StagedBlob(name, *future.result()) for name, future in futures]


def stage_local_path(
    session: Session, *, upload_id: int, path: Path, blobs: BlobStore, progress: Callable[[int], None] | None = None
) -> StageCounts:
    """Stage a folder (every file below it, by relative path) or one file (a zip, an image) from this disk."""
    if path.is_file():
        return stage_files(session, upload_id=upload_id, files=store_files(blobs, [(path.name, _opener(path))]))
    if not path.is_dir():
        raise NotFound(f"{path} is neither a file nor a folder")
    found = sorted(
        (file.relative_to(path).as_posix(), file)
        for file in path.rglob("*")
        if file.is_file() and not file.is_symlink() and not is_skipped(file.relative_to(path).as_posix())
    )
    total = StageCounts()
    for batch in iter_chunks(found, 256):
        stored = store_files(blobs, [(name, _opener(file)) for name, file in batch])
        counts = stage_files(session, upload_id=upload_id, files=stored)
        total.staged += counts.staged
        total.already += counts.already
        total.rejected += counts.rejected
        if progress is not None:
            progress(len(batch))
    return total


def _opener(path: Path) -> Callable[[], BinaryIO]:
    def open_file() -> BinaryIO:
        return path.open("rb")

    return open_file


def check_labels_csv(data: bytes) -> None:
    """Refuse a labels CSV that cannot be read at all (encoding, header) before anything is ingested."""
    problems = parse_label_csv(data, upload_paths=()).problems
    whole_file = [problem for problem in problems if problem.row in (None, 1)]
    if whole_file:
        raise Invalid(f"labels CSV: {whole_file[0].message}")


def iter_chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
