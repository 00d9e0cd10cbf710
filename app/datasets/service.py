"""Datasets, their labels and images, and uploads: staging files, finishing, ingesting, reporting.

Services take keyword-only arguments, only flush (the caller's unit of work commits) and raise the domain
errors of ``app.core.errors`` with a message a person can act on.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import shutil
import threading
import unicodedata
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Literal

from sqlalchemy.orm import Session

from app.core.errors import Conflict, InsufficientStorage, Invalid, NotFound, TooLarge
from app.core.settings import Settings
from app.core.storage import BlobStore
from app.datasets import repository
from app.datasets.logic import (
    DecodedImage,
    InvalidNameError,
    LabelPlan,
    archive_member_name,
    csv_chunks,
    normalise_name,
    parse_label_csv,
)
from app.datasets.ownership import DISCARDED, check_owner
from app.jobs import service as jobs
from app.labels import service as label_service
from app.labels.repository import HistoryRow
from app.ml.archives import UnsafePathError, is_ignored_path, normalise_relative_path
from app.ml.images import Rejection
from app.models import Dataset, Image, Job, Label, Split, Upload, UploadEntry, User, utcnow

INGEST_KIND = "datasets.ingest"
MAX_ENTRY_NAME = 1000  # upload_entries.name
MAX_DATASET_NAME = 200
MAX_DESCRIPTION = 10_000
# The browser sends files at least this big in chunks (resumable); smaller ones go in multipart batches.
CHUNKED_FILE_BYTES = 8 * 2**20
MAX_CHUNK_BYTES = 16 * 2**20
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
    dataset = repository.get_dataset(session, dataset_id)
    if dataset is None:
        raise NotFound(f"dataset {dataset_id} does not exist")
    return dataset


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


@dataclass(frozen=True)
class ImagePage:
    total: int
    items: list[repository.ImageRow]
    limit: int
    offset: int
    split: Split | None  # the split the subset filter reads (given, or the newest ready one)


def list_images(session: Session, *, dataset_id: int, query: ImageQuery, limit: int = 60, offset: int = 0) -> ImagePage:
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
    )
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
    image = repository.get_image(session, image_id)
    if image is None:
        raise NotFound(f"image {image_id} does not exist")
    return image


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
REPORT_CSV_HEADER = ("name", "outcome", "reason", "label", "image_id")


def images_csv(session: Session, *, dataset_id: int) -> Iterator[str]:
    """Every image of the dataset as CSV pieces; cells a spreadsheet would evaluate are neutralised."""
    return csv_chunks(IMAGES_CSV_HEADER, repository.export_rows(session, dataset_id))


def report_csv(session: Session, *, upload_id: int) -> Iterator[str]:
    """Every file of the upload and what became of it, as CSV pieces (formula cells neutralised)."""
    return csv_chunks(REPORT_CSV_HEADER, repository.entry_rows(session, upload_id))


# ---- uploads: names, staging, resuming ------------------------------------------------------------------


@dataclass(frozen=True)
class StagedBlob:
    """A file as it arrived: its name as given and, once stored, its content address."""

    name: str
    sha256: str | None
    size: int
    refusal: str | None = None  # refused before ingest (the name, the size)


def _printable(name: str) -> str:
    return name if name.isprintable() else repr(name)[1:-1]


def entry_name(raw: str) -> tuple[str, str | None]:
    """The name to record for an uploaded file and, if its name is refused, why."""
    try:
        name = normalise_relative_path(raw)
    except UnsafePathError as error:
        return _printable(raw)[:MAX_ENTRY_NAME] or "(no name)", error.reason
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


def _source_name(raw: str | None) -> str:
    if raw is None or not raw.strip():
        return "default"
    try:
        return normalise_name(raw, what="source")
    except InvalidNameError as error:
        raise Invalid(error.reason) from error


def _optional_label(raw: str | None) -> str | None:
    return _label_name(raw) if raw is not None and raw.strip() else None


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
    get_dataset(session, dataset_id=dataset_id)
    source_name, label_name = _source_name(source), _optional_label(label)
    check_upload_fields(label=label_name, labels_csv=None, unlabeled=unlabeled)
    upload = repository.open_upload_of(session, dataset_id=dataset_id, user_id=user_id) if resume else None
    if upload is not None:
        upload.source, upload.label, upload.unlabeled = source_name, label_name, unlabeled
        session.flush()
        return upload, True
    upload = Upload(
        dataset_id=dataset_id, source=source_name, label=label_name, unlabeled=unlabeled, created_by_id=user_id
    )
    return repository.add_upload(session, upload), False


def get_upload(session: Session, *, upload_id: int) -> Upload:
    upload = repository.get_upload(session, upload_id)
    if upload is None or upload.status == DISCARDED:
        raise NotFound(f"upload {upload_id} does not exist")
    return upload


def _open_upload(session: Session, upload_id: int, user: User | None) -> Upload:
    upload = get_upload(session, upload_id=upload_id)
    check_owner(upload, user)
    if upload.status != "open":
        raise Conflict(f"upload {upload_id} is already {upload.status}; start a new upload to add files")
    return upload


def check_can_add_files(session: Session, *, upload_id: int, user: User | None) -> None:
    """Before any file of a request is stored: the upload exists, is open and is the user's."""
    _open_upload(session, upload_id, user)


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
    return sum(n for outcome, n in repository.count_entries(session, upload_id).items() if outcome != "expanded")


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
    upload = _open_upload(session, upload_id, user)
    return _record_entries(session, upload_id=upload.id, files=files, archive=None)


def _record_entries(
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
                "outcome": "rejected" if refusal else "staged",
                "reason": refusal,
                "archive_entry_id": archive[0] if archive else None,
            },
        )
    existing = repository.entries_by_name(session, upload_id, rows)
    changed = []
    for name, entry in existing.items():
        row = rows.pop(name)
        if entry.outcome == "staged" and row["outcome"] == "staged" and entry.sha256 != row["sha256"]:
            changed.append({"id": entry.id, "sha256": row["sha256"], "size": row["size"]})  # the file changed
        counts.already += 1
    repository.update_entries(session, changed)
    repository.insert_entries(session, list(rows.values()))
    counts.rejected = sum(1 for row in rows.values() if row["outcome"] == "rejected")
    counts.staged = len(rows) - counts.rejected
    session.flush()
    return counts


@dataclass(frozen=True)
class HaveAnswer:
    missing: list[str]  # names whose bytes the server still needs
    partial: dict[str, int]  # name -> bytes already received of a chunked upload
    registered: int  # names recorded now without sending bytes (content already stored)
    refused: dict[str, str]  # name -> why it is refused (never sent)


def have(
    session: Session,
    *,
    upload_id: int,
    files: Sequence[tuple[str, str, int]],
    blobs: BlobStore,
    settings: Settings,
    user: User | None = None,
) -> HaveAnswer:
    """Which of (name, sha256, size) the browser must still send: content already stored (this upload or
    any earlier one) is recorded under the new name right away, so a reload or a retry resends nothing."""
    upload = _open_upload(session, upload_id, user)
    missing, partial, refused = [], {}, {}
    known: list[StagedBlob] = []
    for raw_name, sha256, size in files:
        if is_skipped(raw_name):
            continue
        name, refusal = entry_name(raw_name)
        if refusal is not None:
            refused[raw_name] = refusal
            known.append(StagedBlob(raw_name, None, size, refusal))
        elif _is_sha256(sha256) and blobs.exists(sha256):
            known.append(StagedBlob(raw_name, sha256, size))
        else:
            missing.append(raw_name)
            part = _part_path(settings, upload.id, sha256) if _is_sha256(sha256) else None
            if part is not None and part.exists():
                partial[raw_name] = part.stat().st_size
    counts = _record_entries(session, upload_id=upload.id, files=known, archive=None)
    return HaveAnswer(missing=missing, partial=partial, registered=counts.staged, refused=refused)


def _is_sha256(value: str) -> bool:
    return len(value) == 64 and all(c in "0123456789abcdef" for c in value)


# One process-wide pool: a blob write ends in fsync, and several in flight hide its latency.
_blob_writer: ThreadPoolExecutor | None = None
_blob_writer_lock = threading.Lock()


def blob_writer() -> ThreadPoolExecutor:
    global _blob_writer
    with _blob_writer_lock:
        if _blob_writer is None:
            _blob_writer = ThreadPoolExecutor(max_workers=8, thread_name_prefix="blob-writer")
        return _blob_writer


class _CountingReader:
    """Counts the bytes `BlobStore.put_file` reads, so staging learns a file's size in the same pass."""

    def __init__(self, source: BinaryIO) -> None:
        self.source = source
        self.size = 0

    def read(self, size: int = -1) -> bytes:
        chunk = self.source.read(size)
        self.size += len(chunk)
        return chunk


def store_file(blobs: BlobStore, source: BinaryIO) -> tuple[str, int]:
    """Stream a file into the blob store; (sha256, size)."""
    reader = _CountingReader(source)
    return blobs.put_file(reader), reader.size  # type: ignore[arg-type]


def is_disk_full(error: OSError) -> bool:
    return error.errno in (errno.ENOSPC, errno.EDQUOT)


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


# ---- uploads: resumable chunks of big files (zips) ------------------------------------------------------


def _part_path(settings: Settings, upload_id: int, sha256: str) -> Path:
    return settings.staging_dir / str(upload_id) / f"{sha256}.part"


@dataclass(frozen=True)
class ChunkTarget:
    part: Path
    chunk: Path  # where this request's bytes land before they are appended under a lock
    max_bytes: int


def chunk_target(
    session: Session,
    *,
    upload_id: int,
    name: str,
    sha256: str,
    size: int,
    offset: int,
    settings: Settings,
    user: User | None = None,
) -> ChunkTarget:
    """Check a chunk request before reading its body: the upload is open, the offset is where we are."""
    upload = _open_upload(session, upload_id, user)
    if not _is_sha256(sha256):
        raise Invalid("sha256 must be 64 lowercase hex digits")
    if size <= 0 or size > settings.max_request_bytes:
        raise TooLarge(f"a file may have 1 to {settings.max_request_bytes:,} bytes")
    _, refusal = entry_name(name)
    if refusal is not None:
        raise Invalid(f"{_printable(name)}: {refusal}")
    part = _part_path(settings, upload.id, sha256)
    part.parent.mkdir(parents=True, exist_ok=True)
    received = part.stat().st_size if part.exists() else 0
    if offset != received:
        raise Conflict(f"expected the chunk at byte {received:,}", extra={"received": received})
    return ChunkTarget(
        part=part, chunk=part.with_name(f"{sha256}.{offset}.chunk"), max_bytes=min(MAX_CHUNK_BYTES, size - offset)
    )


async def receive_chunk(target: ChunkTarget, body: AsyncIterator[bytes]) -> None:
    """Write a request body to the chunk file, refusing more than the chunk may hold (the file is removed)."""
    written = 0
    try:
        with disk_space(), target.chunk.open("wb") as out:
            async for piece in body:
                written += len(piece)
                if written > target.max_bytes:
                    raise TooLarge(f"a chunk may have at most {target.max_bytes:,} bytes here")
                out.write(piece)
    except BaseException:
        target.chunk.unlink(missing_ok=True)
        raise


def append_chunk(
    session: Session,
    *,
    upload_id: int,
    name: str,
    sha256: str,
    size: int,
    offset: int,
    target: ChunkTarget,
    blobs: BlobStore,
    user: User | None = None,
) -> int:
    """Append a received chunk if the part still ends at `offset`; when complete, verify the whole file's
    sha256, store it and record it. Returns the bytes received so far."""
    try:
        with disk_space(), target.part.open("ab") as part:
            fcntl.flock(part, fcntl.LOCK_EX)  # a retried chunk racing its original must not append twice
            received = part.seek(0, os.SEEK_END)
            if received != offset:
                raise Conflict(f"expected the chunk at byte {received:,}", extra={"received": received})
            with target.chunk.open("rb") as chunk:
                shutil.copyfileobj(chunk, part)
            received = part.tell()
    finally:
        target.chunk.unlink(missing_ok=True)
    if received > size:
        target.part.unlink(missing_ok=True)
        raise Invalid("more bytes arrived than the file has; send it again from the start")
    if received < size:
        return received
    with target.part.open("rb") as part:
        actual = hashlib.file_digest(part, "sha256").hexdigest()
        if actual != sha256:
            target.part.unlink(missing_ok=True)
            raise Invalid(f"{_printable(name)} changed while it was sent (its sha256 differs); send it again")
        part.seek(0)
        with disk_space():
            stored, stored_size = store_file(blobs, part)
    target.part.unlink(missing_ok=True)
    stage_files(session, upload_id=upload_id, files=[StagedBlob(name, stored, stored_size)], user=user)
    return received


def discard_parts(settings: Settings, *, upload_id: int) -> None:
    shutil.rmtree(settings.staging_dir / str(upload_id), ignore_errors=True)


# ---- uploads: finishing, retrying, reporting ------------------------------------------------------------


def check_labels_csv(data: bytes) -> None:
    """Refuse a labels CSV that cannot be read at all (encoding, header) before anything is ingested."""
    problems = parse_label_csv(data, upload_paths=()).problems
    whole_file = [problem for problem in problems if problem.row in (None, 1)]
    if whole_file:
        raise Invalid(f"labels CSV: {whole_file[0].message}")


def finish_upload(
    session: Session,
    *,
    upload_id: int,
    user_id: int | None,
    blobs: BlobStore,
    settings: Settings,
    label: str | None = None,
    source: str | None = None,
    labels_csv: bytes | None = None,
    source_folders: bool = False,
    user: User | None = None,
) -> Job:
    """Close the upload to new files and queue its ingest job (in the caller's transaction).

    `source_folders`: the top folder of each path names the image's source (`source/label/file`, the demo).
    """
    upload = _open_upload(session, upload_id, user)
    check_upload_fields(label=label, labels_csv=labels_csv, unlabeled=upload.unlabeled)
    if label is not None and label.strip():
        upload.label = _label_name(label)
    if source is not None and source.strip():
        upload.source = _source_name(source)
    if labels_csv is not None:
        if upload.label is not None:
            raise Invalid("give either one label for every file or a labels CSV, not both")
        check_labels_csv(labels_csv)
        with disk_space():
            upload.labels_csv_sha256 = blobs.put_bytes(labels_csv)
    if not repository.count_entries(session, upload.id):
        raise Invalid("nothing was uploaded: add image files, folders or .zip archives first")
    payload = {"upload_id": upload.id, "source_folders": source_folders}
    job = jobs.enqueue(session, kind=INGEST_KIND, payload=payload, created_by_id=user_id)
    upload.status, upload.job_id = "queued", job.id
    session.flush()
    discard_parts(settings, upload_id=upload.id)  # chunks of files never completed
    return job


def upload_status(session: Session, upload: Upload) -> str:
    """An upload whose job ended without finishing it reads as that job's end (failed, cancelled)."""
    if upload.status in ("queued", "ingesting") and upload.job_id is not None:
        job = repository.get_job(session, upload.job_id)
        if job is not None and job.status in ("failed", "cancelled"):
            return job.status
        if job is not None and job.status == "running":  # as the job bar beside it says
            return "ingesting"
    return upload.status


def retry_upload(session: Session, *, upload_id: int, user_id: int | None) -> Job:
    """Run a failed or cancelled ingest again; it resumes where the last one stopped."""
    upload = get_upload(session, upload_id=upload_id)
    status = upload_status(session, upload)
    if status not in ("failed", "cancelled"):
        raise Conflict(f"upload {upload_id} is {status}; only a failed or cancelled upload can be retried")
    previous = repository.get_job(session, upload.job_id) if upload.job_id else None
    payload = dict(previous.payload) if previous is not None else {"upload_id": upload.id}
    job = jobs.enqueue(session, kind=INGEST_KIND, payload=payload, created_by_id=user_id)
    upload.status, upload.job_id = "queued", job.id
    session.flush()
    return job


@dataclass(frozen=True)
class ReportItem:
    entry_id: int
    name: str
    reason: str
    image_id: int | None = None
    label: str | None = None


@dataclass(frozen=True)
class UploadReport:
    upload: Upload
    dataset: Dataset
    status: str
    job: Job | None
    files: int
    staged: int
    accepted: int
    duplicates: int
    conflicts: int
    rejected: int
    rejected_items: list[ReportItem]
    duplicate_items: list[ReportItem]
    conflict_items: list[ReportItem]
    resolved_items: list[ReportItem]
    noted_items: list[ReportItem]
    csv_problems: list[dict[str, Any]]
    seconds: dict[str, float]  # how long the ingest job spent per phase (expand, ingest, finish)

    @property
    def finished(self) -> bool:
        return self.status in ("done", "failed", "cancelled")


def upload_report(session: Session, *, upload_id: int, limit: int = 500) -> UploadReport:
    upload = get_upload(session, upload_id=upload_id)
    counts = repository.count_entries(session, upload.id)
    job = repository.get_job(session, upload.job_id) if upload.job_id else None

    def items(outcomes: Sequence[str]) -> list[ReportItem]:
        return [
            ReportItem(entry.id, entry.name, entry.reason or "", entry.image_id, entry.label)
            for entry in repository.entries_with_outcome(session, upload.id, outcomes, limit=limit)
        ]

    result = (job.result or {}) if job is not None else {}
    return UploadReport(
        upload=upload,
        dataset=get_dataset(session, dataset_id=upload.dataset_id),
        status=upload_status(session, upload),
        job=job,
        files=sum(n for outcome, n in counts.items() if outcome != "expanded"),
        staged=counts.get("staged", 0),
        accepted=counts.get("accepted", 0),
        duplicates=counts.get("duplicate", 0),
        conflicts=counts.get("conflict", 0) + counts.get("resolved", 0),
        rejected=counts.get("rejected", 0),
        rejected_items=items(["rejected"]),
        duplicate_items=items(["duplicate"]),
        conflict_items=items(["conflict"]),
        resolved_items=items(["resolved"]),
        noted_items=[
            ReportItem(entry.id, entry.name, entry.reason or "", entry.image_id, entry.label)
            for entry in repository.noted_entries(session, upload.id, limit=limit)
        ],
        csv_problems=list(result.get("csv_problems", [])),
        seconds=dict(result.get("seconds", {})),
    )


def uploads_of(session: Session, *, dataset_id: int, limit: int = 20) -> list[tuple[Upload, str]]:
    return [
        (upload, upload_status(session, upload)) for upload in repository.uploads_of(session, dataset_id, limit=limit)
    ]


def resolve_conflict(
    session: Session, *, upload_id: int, entry_id: int, keep: Literal["existing", "new"], user_id: int | None
) -> UploadEntry:
    """Settle a same-content-different-label conflict: keep the stored label, or relabel the image."""
    entry = repository.get_entry(session, entry_id)
    if entry is None or entry.upload_id != upload_id:
        raise NotFound(f"entry {entry_id} is not part of upload {upload_id}")
    if entry.outcome != "conflict" or entry.image_id is None or entry.label is None:
        raise Conflict(f"{entry.name} is not an open conflict")
    image = get_image(session, image_id=entry.image_id)
    stored = repository.get_label(session, image.label_id) if image.label_id is not None else None
    kept = stored.name if stored is not None else ("?" if image.label_id is not None else "unlabeled")
    if keep == "new":
        label = _label_for(session, dataset_id=image.dataset_id, name=entry.label, upload_id=upload_id, user_id=user_id)
        reason = f"upload {upload_id}: {entry.name} has the same content, labelled {entry.label!r}"
        # Versioned like every label write: a relabel committed since this request read the image refuses it (409).
        version = image.label_version
        label_service.set_label(
            session, image=image, label_id=label.id, expected_version=version, reason=reason, user_id=user_id
        )
        kept = entry.label
    entry.outcome = "resolved"
    entry.reason = f"{entry.reason} Resolved: the image is labelled {kept!r}."
    session.flush()
    return entry


def _label_for(session: Session, *, dataset_id: int, name: str, upload_id: int, user_id: int | None) -> Label:
    """The label called `name` (following merges), created with a history event when new."""
    label = label_service.resolve_name(session, dataset_id=dataset_id, name=name)
    if label is not None:
        return label
    label = repository.add_label(session, dataset_id=dataset_id, name=name)
    details = {"name": name, "upload_id": upload_id}
    repository.add_label_event(session, dataset_id=dataset_id, kind="add", details=details, user_id=user_id)
    return label


# ---- ingest (called by the job, each step in its own short transaction) ---------------------------------


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
    if upload is None or upload.status in ("done", DISCARDED):
        return None
    upload.status = "ingesting"
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
    session: Session, *, upload_id: int, archive_entry_id: int, archive_name: str, members: Sequence[StagedBlob]
) -> None:
    """Stage a batch of a zip's members as entries of their own (idempotent: a retry skips known names)."""
    _record_entries(session, upload_id=upload_id, files=members, archive=(archive_entry_id, archive_name))


def close_archive(session: Session, *, entry_id: int, refusal: str | None, unrecorded: Sequence[str] = ()) -> list[str]:
    """A fully read zip becomes "expanded"; a refused one is rejected as a whole, its members dropped. Returns
    the blobs of dropped members (and of `unrecorded` ones, written but never recorded) that nothing else
    needs, to delete once this commits."""
    entry = repository.get_entry(session, entry_id)
    if entry is None:
        return []
    released: list[str] = []
    if refusal is None:
        entry.outcome = "expanded"
    else:
        members = sorted(set(repository.member_blobs(session, entry_id)) | set(unrecorded))
        repository.delete_archive_members(session, entry_id)
        entry.outcome, entry.reason = "rejected", refusal
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


@dataclass(frozen=True)
class IngestItem:
    entry_id: int
    name: str
    sha256: str
    plan: LabelPlan
    result: DecodedImage | Rejection | None  # None: not decoded (refused before, e.g. no label)
    thumb_sha256: str | None = None


@dataclass
class BatchOutcome:
    accepted: int = 0
    duplicates: int = 0
    conflicts: int = 0
    rejected: int = 0


@dataclass(frozen=True)
class _Stored:
    """An image already in the dataset, or added earlier in this batch (its id is known after the insert)."""

    image_id: int | None
    label_id: int | None  # None: stored unlabeled
    filename: str


def _batch_label(
    session: Session, *, spec: IngestSpec, name: str | None, labels: dict[str, Label], label_names: dict[int, str]
) -> Label | None:
    """The label called `name` (made once per batch when new); None for a file of an unlabeled upload."""
    if name is None:
        return None
    if name not in labels:
        label = _label_for(
            session, dataset_id=spec.dataset_id, name=name, upload_id=spec.upload_id, user_id=spec.user_id
        )
        labels[name], label_names[label.id] = label, label.name
    return labels[name]


def _match_outcome(same: str, match: _Stored, label: Label | None, label_names: dict[int, str]) -> dict[str, str]:
    """A file whose content the dataset has: a duplicate, or a conflict when it names another label. An unlabeled
    copy of any image is a duplicate; a labelled copy of an unlabeled image is a conflict to settle (keep "new"
    labels it)."""
    if label is None or match.label_id == label.id:
        return {"outcome": "duplicate", "reason": same}
    stored = f"labelled {label_names.get(match.label_id, '?')!r}" if match.label_id is not None else "unlabeled"
    return {"outcome": "conflict", "reason": f"{same}, which is {stored}; this file says {label.name!r}"}


def ingest_batch(session: Session, *, spec: IngestSpec, items: Sequence[IngestItem]) -> BatchOutcome:
    """Turn decoded files into images, duplicates, conflicts or rejections, all in the caller's transaction.

    The dataset row is locked first, so two uploads into one dataset cannot both add the same content. Rows go
    in with bulk statements: a batch is a handful of round trips however many files it holds.
    """
    if repository.get_dataset(session, spec.dataset_id, lock=True) is None:
        raise NotFound(f"dataset {spec.dataset_id} was deleted")
    pending = repository.still_staged(session, (item.entry_id for item in items))
    todo = [item for item in items if item.entry_id in pending]
    stored = {
        sha: _Stored(image_id, label_id, filename)
        for sha, (image_id, label_id, filename) in repository.existing_by_sha(
            session, spec.dataset_id, (item.sha256 for item in todo)
        ).items()
    }
    label_names = {
        label.id: label.name for label in repository.labels_of(session, spec.dataset_id, include_merged=True)
    }
    labels: dict[str, Label] = {}
    rejected: list[dict[str, Any]] = []
    matched: list[tuple[IngestItem, Label | None, _Stored]] = []
    added: list[tuple[IngestItem, dict[str, Any]]] = []
    for item in todo:
        decoded = item.result
        no_label = item.plan.label is None and not spec.unlabeled  # an unlabeled upload stores it in the pool
        if item.plan.problem or no_label or not isinstance(decoded, DecodedImage):
            content = decoded.reason if isinstance(decoded, Rejection) else None  # content first, then the label
            reason = "; ".join(r for r in (content, item.plan.problem) if r) or "could not be read"
            rejected.append({"id": item.entry_id, "outcome": "rejected", "reason": reason, "label": item.plan.label})
            continue
        label = _batch_label(session, spec=spec, name=item.plan.label, labels=labels, label_names=label_names)
        if item.sha256 in stored:
            matched.append((item, label, stored[item.sha256]))
            continue
        label_id = label.id if label is not None else None
        row = {
            "dataset_id": spec.dataset_id,
            "sha256": item.sha256,
            "thumb_sha256": item.thumb_sha256,
            "filename": item.name,
            "source": item.plan.source,
            "imported_subset": item.plan.subset,
            "label_id": label_id,
            "from_pool": label_id is None,
            "width": decoded.width,
            "height": decoded.height,
            "format": decoded.format,
            "phash": decoded.dhash,
            "notes": "; ".join(decoded.notes),
            "upload_id": spec.upload_id,
        }
        added.append((item, row))
        stored[item.sha256] = _Stored(None, label_id, item.name)  # a later copy in this batch matches it
    new_ids = repository.insert_images(session, [row for _, row in added])
    repository.insert_import_changes(
        session, [(new_ids[row["sha256"]], row["label_id"]) for _, row in added], user_id=spec.user_id, now=utcnow()
    )

    updates = rejected + [
        {
            "id": item.entry_id,
            "outcome": "accepted",
            "reason": row["notes"] or None,
            "image_id": new_ids[row["sha256"]],
            "label": item.plan.label,
        }
        for item, row in added
    ]
    for item, label, match in matched:
        image_id = match.image_id if match.image_id is not None else new_ids[item.sha256]
        same = f"same content as {match.filename} (image {image_id})"
        update = _match_outcome(same, match, label, label_names)
        name = label.name if label is not None else None
        updates.append({"id": item.entry_id, "image_id": image_id, "label": name, **update})
    repository.update_entries(session, updates)

    outcome = BatchOutcome(
        accepted=len(added),
        duplicates=sum(1 for update in updates if update["outcome"] == "duplicate"),
        conflicts=sum(1 for update in updates if update["outcome"] == "conflict"),
        rejected=len(rejected),
    )
    repository.add_to_upload_counts(
        session,
        spec.upload_id,
        accepted=outcome.accepted,
        duplicates=outcome.duplicates,
        conflicts=outcome.conflicts,
        rejected=outcome.rejected,
    )
    return outcome


def finish_ingest(session: Session, *, upload_id: int) -> dict[str, int]:
    """Count the outcomes once more from the entries (exact after retries) and close the upload."""
    upload = get_upload(session, upload_id=upload_id)
    counts = repository.count_entries(session, upload_id)
    upload.accepted = counts.get("accepted", 0)
    upload.duplicates = counts.get("duplicate", 0)
    upload.conflicts = counts.get("conflict", 0) + counts.get("resolved", 0)
    upload.rejected = counts.get("rejected", 0)
    upload.status = "done"
    session.flush()
    return counts


def unused_blobs(session: Session, *, upload_id: int) -> list[str]:
    """Blobs the finished upload staged that nothing needs any more (rejected files, expanded zips)."""
    return [
        sha
        for sha in repository.cleanup_candidates(session, upload_id)
        if not repository.blob_in_use(session, sha, except_upload_id=upload_id)
    ]


def delete_blobs(blobs: BlobStore, shas: Iterable[str]) -> None:
    for sha in shas:
        with contextlib.suppress(OSError):
            blobs.delete(sha)


def read_blob(blobs: BlobStore, sha256: str) -> bytes:
    with blobs.open(sha256) as handle:
        return handle.read()


def iter_chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
