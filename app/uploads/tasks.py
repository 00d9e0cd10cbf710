"""The ingest job: expand zips, read labels, validate and decode every staged file, add images in batches.

Each batch of files becomes images, duplicates, conflicts or rejections in one short transaction after its
blobs (originals and thumbnails) are on disk, so a crash leaves no orphan rows and a retry skips what is done.
Decoding runs in decoder processes (one per core), fresh interpreters that import only the pure decode code.
"""

from __future__ import annotations

import os
import time
import zipfile
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

from app.core.storage import BlobStore, blob_writer, delete_blobs, is_disk_full, read_blob
from app.jobs.context import JobContext, TaskError
from app.jobs.registry import task
from app.ml.archives import DEFAULT_ARCHIVE_LIMITS, ArchiveEntry, ArchiveError, ArchiveLimits, iter_zip
from app.ml.images import ImageLimits, Rejection, content_refusal
from app.splits import service as splits_service
from app.splits.input_store import SplitInputStore
from app.storage.backends import blob_store
from app.uploads.decode_pool import Decoders
from app.uploads.logic import BatchFile, DecodedImage, LabelPlan, StagedFile, UploadLabels, plan_labels
from app.uploads.repository import FileEntry
from app.uploads.service import ingest
from app.uploads.service.lifecycle import INGEST_KIND
from app.uploads.service.staging import StagedBlob
from app.uploads.states import EntryOutcome

BATCH_FILES = 64  # files per transaction
BATCHES_AHEAD = 4  # batches decoding while the previous one is written
# Files decoded while zips are still being expanded, their results held until ingest asks (memory: their
# thumbnails, some 20 KB each); past this the rest waits, so memory stays flat with the upload's size.
EARLY_DECODES = 512
MEMBERS_PER_TRANSACTION = 256
PENDING_MEMBER_BYTES = 64 * 2**20  # zip members held in memory while their blobs are written
EXPAND_SHARE = 0.15  # of the progress bar
MAX_REPORTED_CSV_PROBLEMS = 1000
MISSING_BLOB = Rejection("missing", "the uploaded file is missing from storage; upload it again")


@task(INGEST_KIND)
def ingest_upload(ctx: JobContext) -> dict[str, Any]:
    try:
        return _ingest_upload(ctx)
    except OSError as error:
        if not is_disk_full(error):
            raise
        # Rows are committed only after their blobs are written, so nothing points at a missing file, and a
        # retry (once there is room) resumes where this stopped.
        raise TaskError(
            f"no space left on device while storing images under {ctx.settings.blob_dir}; "
            "free some disk space, then retry the upload"
        ) from error


class _Phases:
    """Seconds spent per phase of the job, for its result (the upload report shows them)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        started = time.monotonic()
        yield
        self.seconds[name] = round(time.monotonic() - started, 3)


def _ingest_upload(ctx: JobContext) -> dict[str, Any]:
    upload_id = int(ctx.payload["upload_id"])
    blobs = blob_store(ctx.settings)
    with ctx.transaction() as session:
        spec = ingest.begin_ingest(session, upload_id=upload_id)
    if spec is None:
        return {"upload_id": upload_id, "skipped": "the upload is gone or already done"}
    ctx.progress(0.0, "reading the upload", force=True)
    phase = _Phases()
    with _decoders(ctx) as decoders:
        with phase("expand"):
            _expand_archives(ctx, spec, blobs, decoders)
        with phase("ingest"):
            labelling = _ingest_files(ctx, spec, blobs, decoders)
    with phase("finish"):
        counts = _finish(ctx, spec, blobs)
    problems = labelling.csv_problems
    return {
        "upload_id": upload_id,
        "counts": counts,
        "csv_problems": [{"row": p.row, "reason": p.message} for p in problems[:MAX_REPORTED_CSV_PROBLEMS]],
        "csv_problem_count": len(problems),
        "seconds": phase.seconds,
    }


def _decoders(ctx: JobContext) -> Decoders:
    limits = ImageLimits(max_pixels=ctx.settings.max_image_pixels, min_side=ctx.settings.min_image_side)
    return Decoders(
        limits=limits,
        thumbnail_side=ctx.settings.thumbnail_side,
        cores=len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1,
        early_limit=EARLY_DECODES,
    )


def _ingest_files(ctx: JobContext, spec: ingest.IngestSpec, blobs: BlobStore, decoders: Decoders) -> UploadLabels:
    """Plan every file's label (all of them, done or not, so labels read the same on a retry), then decode and
    add the files not done yet, batch by batch."""
    with ctx.transaction() as session:
        files, archive_names = ingest.ingest_files(session, upload_id=spec.upload_id)
    labelling = plan_labels(
        [_staged_file(entry, archive_names) for entry in files],
        default_source=spec.source,
        typed_label=spec.label,
        labels_csv=read_blob(blobs, spec.labels_csv_sha256) if spec.labels_csv_sha256 else None,
        source_folders=bool(ctx.payload.get("source_folders")),
        unlabeled=spec.unlabeled,
    )
    todo = [entry for entry in files if entry.outcome == EntryOutcome.STAGED]
    _ingest(ctx, spec, blobs, decoders, todo, labelling.plans, done_before=len(files) - len(todo), total=len(files))
    return labelling


def _finish(ctx: JobContext, spec: ingest.IngestSpec, blobs: BlobStore) -> dict[str, int]:
    """Close the upload, release the blobs nothing needs, and prepare the split form's input."""
    with ctx.transaction() as session:
        counts = ingest.finish_ingest(session, upload_id=spec.upload_id)
        unused = ingest.unused_blobs(session, upload_id=spec.upload_id)
    delete_blobs(blobs, unused)
    if counts.get(EntryOutcome.ACCEPTED):
        ctx.progress(0.99, "grouping near-duplicates for the split form", force=True)
        with ctx.reading() as session:
            splits_service.warm_split_input(
                session, dataset_id=spec.dataset_id, blobs=blobs, store=SplitInputStore(ctx.settings.split_input_dir)
            )
    ctx.progress(
        1.0,
        f"{counts.get(EntryOutcome.ACCEPTED, 0):,} added, {counts.get(EntryOutcome.DUPLICATE, 0):,} duplicates, "
        f"{counts.get(EntryOutcome.CONFLICT, 0):,} conflicts, {counts.get(EntryOutcome.REJECTED, 0):,} rejected",
    )
    return counts


def _staged_file(entry: FileEntry, archive_names: dict[int, str]) -> StagedFile:
    if entry.archive_entry_id is None:
        return StagedFile(key=entry.id, path=entry.name)
    prefix = archive_names[entry.archive_entry_id]
    return StagedFile(key=entry.id, path=entry.name[len(prefix) + 1 :], archive=entry.archive_entry_id)


# ---- zips -----------------------------------------------------------------------------------------------


def _expand_archives(ctx: JobContext, spec: ingest.IngestSpec, blobs: BlobStore, decoders: Decoders) -> None:
    with ctx.transaction() as session:
        archives = ingest.archives_to_expand(session, upload_id=spec.upload_id)
        # One budget for all the zips of the upload, less what earlier tries already expanded.
        budget = ctx.settings.max_upload_expanded_bytes - ingest.expanded_bytes(session, upload_id=spec.upload_id)
    for index, (entry_id, name, sha256) in enumerate(archives):
        refusal, unrecorded = None, []
        try:
            if sha256 is None or not blobs.exists(sha256):
                raise ArchiveError("missing", "the uploaded archive is missing from storage; upload it again")
            path = blobs.path(sha256)
            expected = _entry_count(path)
            decoders.start(expected)
            done = 0
            limits = replace(DEFAULT_ARCHIVE_LIMITS, max_total_bytes=max(budget, 0))
            for members in _stored_members(blobs, path, limits):
                for member in members:  # decoding starts now, while the rest of the zip is read
                    if member.sha256 is not None and member.refusal is None:
                        decoders.decode_early(blobs.path(member.sha256), member.sha256, member.name)
                budget -= sum(member.size for member in members)
                with ctx.transaction() as session:
                    ingest.record_members(
                        session,
                        upload_id=spec.upload_id,
                        archive_entry_id=entry_id,
                        archive_name=name,
                        members=members,
                    )
                done += len(members)
                share = (index + min(done / max(expected, 1), 1.0)) / len(archives)
                ctx.progress(EXPAND_SHARE * share, f"reading {name}: {done:,} files")
        except ArchiveError as error:
            refusal, unrecorded = error.reason, error.written if isinstance(error, _RefusedPartWay) else []
        with ctx.transaction() as session:
            released = ingest.close_archive(session, entry_id=entry_id, refusal=refusal, unrecorded=unrecorded)
        delete_blobs(blobs, released)  # a refused zip's members: stored, now nobody's


def _entry_count(path: Path) -> int:
    try:
        with zipfile.ZipFile(path) as archive:
            return len(archive.infolist())
    except zipfile.BadZipFile as error:
        raise ArchiveError("not_zip", "not a ZIP archive") from error


def _stored_members(blobs: BlobStore, path: Path, limits: ArchiveLimits) -> Iterator[list[StagedBlob]]:
    """The zip's members, streamed, in batches whose blobs are already written (several fsyncs at once). A
    member whose first bytes show it cannot be an image is refused unstored."""
    pending: list[tuple[str, int, Future[str] | None, str | None]] = []
    try:
        yield from _member_batches(blobs, path, limits, pending)
    except ArchiveError as error:
        # Refused part-way (a bomb, over the upload's budget): the blobs of the batch in hand are written but
        # not recorded; the caller releases them with the recorded ones.
        raise _RefusedPartWay(error, [future.result() for _, _, future, _ in pending if future]) from error


class _RefusedPartWay(ArchiveError):
    def __init__(self, error: ArchiveError, written: list[str]) -> None:
        super().__init__(error.code, error.reason)
        self.written = written


def _member_batches(
    blobs: BlobStore,
    path: Path,
    limits: ArchiveLimits,
    pending: list[tuple[str, int, Future[str] | None, str | None]],
) -> Iterator[list[StagedBlob]]:
    pending_bytes = 0
    for member in iter_zip(path, limits=limits):
        refusal = content_refusal(member.data[:4096]) if isinstance(member, ArchiveEntry) else None
        if refusal is not None and isinstance(member, ArchiveEntry):
            pending.append((member.path, len(member.data), None, refusal.reason))
        elif isinstance(member, ArchiveEntry):
            future = blob_writer().submit(blobs.put_bytes, member.data)
            pending.append((member.path, len(member.data), future, None))
            pending_bytes += len(member.data)
        else:
            pending.append((member.name, 0, None, member.reason))
        if len(pending) >= MEMBERS_PER_TRANSACTION or pending_bytes >= PENDING_MEMBER_BYTES:
            yield _written(pending)
            pending.clear()
            pending_bytes = 0
    if pending:
        yield _written(pending)
        pending.clear()


def _written(pending: list[tuple[str, int, Future[str] | None, str | None]]) -> list[StagedBlob]:
    return [
        StagedBlob(name, future.result() if future else None, size, refusal) for name, size, future, refusal in pending
    ]


# ---- decoding and adding images -------------------------------------------------------------------------


# A file in flight: its entry, its label plan, its decode (or why it has none) and its thumbnail's write.
_Submitted = tuple[FileEntry, LabelPlan, "Future[DecodedImage | Rejection] | Rejection", "Future[str | None] | None"]


def _ingest(
    ctx: JobContext,
    spec: ingest.IngestSpec,
    blobs: BlobStore,
    decoders: Decoders,
    todo: Sequence[FileEntry],
    plans: dict[int, LabelPlan],
    *,
    done_before: int,
    total: int,
) -> None:
    decoders.start(len(todo))
    done = done_before

    def submit(batch: Sequence[FileEntry]) -> list[_Submitted]:
        submitted: list[_Submitted] = []
        for entry in batch:
            plan = plans[entry.id]
            # A file without a label is decoded too: its report names every reason, content checks first.
            if not blobs.exists(entry.sha256):
                submitted.append((entry, plan, MISSING_BLOB, None))
                continue
            decode = decoders.decode(blobs.path(entry.sha256), entry.sha256, entry.name)
            # A file refused for its label keeps no thumbnail.
            submitted.append((entry, plan, decode, _thumbnail(blobs, decode) if plan.problem is None else None))
        return submitted

    def finish(submitted: list[_Submitted]) -> None:
        nonlocal done
        items = [_collect(*file) for file in submitted]
        with ctx.transaction() as session:
            ingest.ingest_batch(session, spec=spec, items=items)
        done += len(items)
        fraction = EXPAND_SHARE + (1 - EXPAND_SHARE) * done / max(total, 1)
        ctx.progress(min(fraction, 0.99), f"ingested {done:,} of {total:,} files")

    # Batches decode ahead while the previous one is written: the decoders never wait for the database.
    window: deque[list[_Submitted]] = deque()
    for start in range(0, len(todo), BATCH_FILES):
        window.append(submit(todo[start : start + BATCH_FILES]))
        if len(window) > BATCHES_AHEAD:
            finish(window.popleft())
    while window:
        finish(window.popleft())


def _thumbnail(blobs: BlobStore, decode: Future[DecodedImage | Rejection]) -> Future[str | None]:
    """The thumbnail's blob, written by the blob writers as soon as its decode ends (so a batch's writes, each
    ending in an fsync, are done by the time the batch is, and never hold up the rows)."""
    written: Future[str | None] = Future()

    def write() -> None:
        try:
            result = decode.result()
            written.set_result(blobs.put_bytes(result.thumbnail) if isinstance(result, DecodedImage) else None)
        except BaseException as error:  # a full disk, a cancelled decode: for whoever waits on it
            written.set_exception(error)

    decode.add_done_callback(lambda _: blob_writer().submit(write))
    return written


def _collect(
    entry: FileEntry,
    plan: LabelPlan,
    decode: Future[DecodedImage | Rejection] | Rejection,
    thumbnail: Future[str | None] | None,
) -> BatchFile:
    """The file, decoded, with its thumbnail written before the row that names it is committed."""
    result = decode.result() if isinstance(decode, Future) else decode
    thumb_sha256 = thumbnail.result() if thumbnail is not None else None
    return BatchFile(entry.id, entry.name, entry.sha256, plan, result, thumb_sha256=thumb_sha256)
