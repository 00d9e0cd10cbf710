"""The ingest job: expand zips, read labels, validate and decode every staged file, add images in batches.

Each batch of files becomes images, duplicates, conflicts or rejections in one short transaction after its
blobs (originals and thumbnails) are on disk, so a crash leaves no orphan rows and a retry skips what is done.
Decoding runs in decoder processes (one per core), fresh interpreters that import only the pure decode code.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import queue
import subprocess
import sys
import threading
import time
import zipfile
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future
from dataclasses import replace
from pathlib import Path
from types import TracebackType
from typing import Any

from app.core.settings import PROJECT_ROOT
from app.core.storage import LocalBlobStore
from app.datasets import service
from app.datasets.logic import DecodedImage, LabelPlan, StagedFile, plan_labels
from app.datasets.repository import FileEntry
from app.jobs.context import JobContext, TaskError
from app.jobs.registry import task
from app.ml.archives import DEFAULT_ARCHIVE_LIMITS, ArchiveEntry, ArchiveError, ArchiveLimits, iter_zip
from app.ml.images import ImageLimits, Rejection, content_refusal
from app.splits import service as splits_service
from app.splits.input_store import SplitInputStore

log = logging.getLogger("errorbook.ingest")

BATCH_FILES = 64  # files per transaction
BATCHES_AHEAD = 2  # batches decoding while the previous one is written
FILES_PER_DECODER = 16  # a decoder process takes ~0.5 s to start: small uploads get fewer
MEMBERS_PER_TRANSACTION = 256
PENDING_MEMBER_BYTES = 64 * 2**20  # zip members held in memory while their blobs are written
EXPAND_SHARE = 0.15  # of the progress bar
MAX_REPORTED_CSV_PROBLEMS = 1000
DECODER_CRASHED = Rejection("decoder_crashed", "the image decoder crashed on this file")
MISSING_BLOB = Rejection("missing", "the uploaded file is missing from storage; upload it again")


@task(service.INGEST_KIND)
def ingest_upload(ctx: JobContext) -> dict[str, Any]:
    try:
        return _ingest_upload(ctx)
    except OSError as error:
        if not service.is_disk_full(error):
            raise
        # Rows are committed only after their blobs are written, so nothing points at a missing file, and a
        # retry (once there is room) resumes where this stopped.
        raise TaskError(
            f"no space left on device while storing images under {ctx.settings.blob_dir}; "
            "free some disk space, then retry the upload"
        ) from error


def _ingest_upload(ctx: JobContext) -> dict[str, Any]:
    upload_id = int(ctx.payload["upload_id"])
    blobs = LocalBlobStore(ctx.settings.blob_dir)
    with ctx.transaction() as session:
        spec = service.begin_ingest(session, upload_id=upload_id)
    if spec is None:
        return {"upload_id": upload_id, "skipped": "the upload is gone or already done"}
    ctx.progress(0.0, "reading the upload", force=True)
    started = time.monotonic()
    _expand_archives(ctx, spec, blobs)
    expanded = time.monotonic()

    with ctx.transaction() as session:
        files, archive_names = service.ingest_files(session, upload_id=upload_id)
    labels_csv = service.read_blob(blobs, spec.labels_csv_sha256) if spec.labels_csv_sha256 else None
    labelling = plan_labels(
        [_staged_file(entry, archive_names) for entry in files],
        default_source=spec.source,
        typed_label=spec.label,
        labels_csv=labels_csv,
        source_folders=bool(ctx.payload.get("source_folders")),
        unlabeled=spec.unlabeled,
    )
    todo = [entry for entry in files if entry.outcome == "staged"]
    _ingest(ctx, spec, blobs, todo, labelling.plans, done_before=len(files) - len(todo), total=len(files))
    ingested = time.monotonic()

    with ctx.transaction() as session:
        counts = service.finish_ingest(session, upload_id=upload_id)
        unused = service.unused_blobs(session, upload_id=upload_id)
    service.delete_blobs(blobs, unused)
    if counts.get("accepted"):
        ctx.progress(0.99, "grouping near-duplicates for the split form", force=True)
        with ctx.reading() as session:
            splits_service.warm_split_input(
                session, dataset_id=spec.dataset_id, blobs=blobs, store=SplitInputStore(ctx.settings.split_input_dir)
            )
    ctx.progress(
        1.0,
        f"{counts.get('accepted', 0):,} added, {counts.get('duplicate', 0):,} duplicates, "
        f"{counts.get('conflict', 0):,} conflicts, {counts.get('rejected', 0):,} rejected",
    )
    problems = labelling.csv_problems
    return {
        "upload_id": upload_id,
        "counts": counts,
        "csv_problems": [{"row": p.row, "reason": p.message} for p in problems[:MAX_REPORTED_CSV_PROBLEMS]],
        "csv_problem_count": len(problems),
        "seconds": {
            "expand": round(expanded - started, 3),
            "ingest": round(ingested - expanded, 3),
            "finish": round(time.monotonic() - ingested, 3),
        },
    }


def _staged_file(entry: FileEntry, archive_names: dict[int, str]) -> StagedFile:
    if entry.archive_entry_id is None:
        return StagedFile(key=entry.id, path=entry.name)
    prefix = archive_names[entry.archive_entry_id]
    return StagedFile(key=entry.id, path=entry.name[len(prefix) + 1 :], archive=entry.archive_entry_id)


# ---- zips -----------------------------------------------------------------------------------------------


def _expand_archives(ctx: JobContext, spec: service.IngestSpec, blobs: LocalBlobStore) -> None:
    with ctx.transaction() as session:
        archives = service.archives_to_expand(session, upload_id=spec.upload_id)
        # One budget for all the zips of the upload, less what earlier tries already expanded.
        budget = ctx.settings.max_upload_expanded_bytes - service.expanded_bytes(session, upload_id=spec.upload_id)
    for index, (entry_id, name, sha256) in enumerate(archives):
        refusal, unrecorded = None, []
        try:
            if sha256 is None or not blobs.exists(sha256):
                raise ArchiveError("missing", "the uploaded archive is missing from storage; upload it again")
            path = blobs.path(sha256)
            expected = _entry_count(path)
            done = 0
            limits = replace(DEFAULT_ARCHIVE_LIMITS, max_total_bytes=max(budget, 0))
            for members in _stored_members(blobs, path, limits):
                budget -= sum(member.size for member in members)
                with ctx.transaction() as session:
                    service.record_members(
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
            released = service.close_archive(session, entry_id=entry_id, refusal=refusal, unrecorded=unrecorded)
        service.delete_blobs(blobs, released)  # a refused zip's members: stored, now nobody's


def _entry_count(path: Path) -> int:
    try:
        with zipfile.ZipFile(path) as archive:
            return len(archive.infolist())
    except zipfile.BadZipFile as error:
        raise ArchiveError("not_zip", "not a ZIP archive") from error


def _stored_members(blobs: LocalBlobStore, path: Path, limits: ArchiveLimits) -> Iterator[list[service.StagedBlob]]:
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
    blobs: LocalBlobStore,
    path: Path,
    limits: ArchiveLimits,
    pending: list[tuple[str, int, Future[str] | None, str | None]],
) -> Iterator[list[service.StagedBlob]]:
    pending_bytes = 0
    for member in iter_zip(path, limits=limits):
        refusal = content_refusal(member.data[:4096]) if isinstance(member, ArchiveEntry) else None
        if refusal is not None and isinstance(member, ArchiveEntry):
            pending.append((member.path, len(member.data), None, refusal.reason))
        elif isinstance(member, ArchiveEntry):
            future = service.blob_writer().submit(blobs.put_bytes, member.data)
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


def _written(pending: list[tuple[str, int, Future[str] | None, str | None]]) -> list[service.StagedBlob]:
    return [
        service.StagedBlob(name, future.result() if future else None, size, refusal)
        for name, size, future, refusal in pending
    ]


# ---- decoding and adding images -------------------------------------------------------------------------


class DecodePool:
    """Decoder processes, each fed one file at a time by a thread of its own.

    Plain subprocesses rather than multiprocessing: the job runner is a daemonic process, which multiprocessing
    forbids to have children, and a bare interpreter importing only the pure decode code stays small. A file
    that kills its decoder is rejected as such and a new decoder starts; the other files are not affected.
    """

    COMMAND = (
        "import sys; from app.datasets.logic import serve_decodes; serve_decodes(sys.stdin.buffer, sys.stdout.buffer)"
    )

    def __init__(self, *, processes: int, limits: ImageLimits, thumbnail_side: int) -> None:
        self.limits = limits
        self.thumbnail_side = thumbnail_side
        self._requests: queue.SimpleQueue[tuple[Path, str, Future[DecodedImage | Rejection]] | None] = (
            queue.SimpleQueue()
        )
        self._feeders = [
            threading.Thread(target=self._feed, name=f"decoder-{index}", daemon=True) for index in range(processes)
        ]
        for feeder in self._feeders:
            feeder.start()

    def __enter__(self) -> DecodePool:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        while True:  # a cancelled job leaves queued files behind: drop them
            try:
                request = self._requests.get_nowait()
            except queue.Empty:
                break
            if request is not None:
                request[2].cancel()
        for _ in self._feeders:
            self._requests.put(None)
        for feeder in self._feeders:
            feeder.join()

    def submit(self, path: Path, filename: str) -> Future[DecodedImage | Rejection]:
        future: Future[DecodedImage | Rejection] = Future()
        self._requests.put((path, filename, future))
        return future

    def _start(self) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [sys.executable, "-c", self.COMMAND], stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=PROJECT_ROOT
        )

    def _feed(self) -> None:
        process: subprocess.Popen[bytes] | None = None
        try:
            while (request := self._requests.get()) is not None:
                path, filename, future = request
                if not future.set_running_or_notify_cancel():
                    continue
                if process is None:
                    process = self._start()
                future.set_result(self._decode(process, path, filename))
                if process.poll() is not None:
                    process = None
        finally:
            if process is not None:
                _stop(process)

    def _decode(self, process: subprocess.Popen[bytes], path: Path, filename: str) -> DecodedImage | Rejection:
        assert process.stdin is not None and process.stdout is not None
        try:
            pickle.dump((str(path), filename, self.limits, self.thumbnail_side), process.stdin)
            process.stdin.flush()
            result: DecodedImage | Rejection = pickle.load(process.stdout)
            return result
        except (EOFError, OSError, pickle.UnpicklingError):
            log.warning("the image decoder died on %s (exit code %s)", filename, _stop(process))
            return DECODER_CRASHED


def _stop(process: subprocess.Popen[bytes]) -> int | None:
    """End a decoder: closing its input ends its loop; one that does not stop in time is killed."""
    with contextlib.suppress(OSError):
        if process.stdin is not None:
            process.stdin.close()
    try:
        return process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        return process.wait()


_Submitted = tuple[FileEntry, LabelPlan, "Future[DecodedImage | Rejection] | Rejection | None"]


def _ingest(
    ctx: JobContext,
    spec: service.IngestSpec,
    blobs: LocalBlobStore,
    todo: Sequence[FileEntry],
    plans: dict[int, LabelPlan],
    *,
    done_before: int,
    total: int,
) -> None:
    limits = ImageLimits(max_pixels=ctx.settings.max_image_pixels, min_side=ctx.settings.min_image_side)
    processes = max(1, min(os.cpu_count() or 1, len(todo) // FILES_PER_DECODER))
    done = done_before
    with DecodePool(processes=processes, limits=limits, thumbnail_side=ctx.settings.thumbnail_side) as pool:

        def submit(batch: Sequence[FileEntry]) -> list[_Submitted]:
            submitted: list[_Submitted] = []
            for entry in batch:
                plan = plans[entry.id]
                # A file without a label is decoded too: its report names every reason, content checks first.
                if not blobs.exists(entry.sha256):
                    submitted.append((entry, plan, MISSING_BLOB))
                else:
                    submitted.append((entry, plan, pool.submit(blobs.path(entry.sha256), entry.name)))
            return submitted

        def finish(submitted: list[_Submitted]) -> None:
            nonlocal done
            items = _with_thumbnails(blobs, [_collect(entry, plan, s) for entry, plan, s in submitted])
            with ctx.transaction() as session:
                service.ingest_batch(session, spec=spec, items=items)
            done += len(items)
            fraction = EXPAND_SHARE + (1 - EXPAND_SHARE) * done / max(total, 1)
            ctx.progress(min(fraction, 0.99), f"ingested {done:,} of {total:,} files")

        window: deque[list[_Submitted]] = deque()
        for start in range(0, len(todo), BATCH_FILES):
            window.append(submit(todo[start : start + BATCH_FILES]))
            if len(window) > BATCHES_AHEAD:
                finish(window.popleft())
        while window:
            finish(window.popleft())


def _collect(
    entry: FileEntry, plan: LabelPlan, submitted: Future[DecodedImage | Rejection] | Rejection | None
) -> service.IngestItem:
    result = submitted.result() if isinstance(submitted, Future) else submitted
    return service.IngestItem(entry_id=entry.id, name=entry.name, sha256=entry.sha256, plan=plan, result=result)


def _with_thumbnails(blobs: LocalBlobStore, items: list[service.IngestItem]) -> list[service.IngestItem]:
    """Write the batch's thumbnails (in parallel) before the rows that name them are committed."""
    writes = {
        index: service.blob_writer().submit(blobs.put_bytes, item.result.thumbnail)
        for index, item in enumerate(items)
        if isinstance(item.result, DecodedImage) and item.plan.problem is None  # a rejected file keeps no thumbnail
    }
    return [
        service.IngestItem(
            entry_id=item.entry_id,
            name=item.name,
            sha256=item.sha256,
            plan=item.plan,
            result=item.result,
            thumb_sha256=writes[index].result() if index in writes else None,
        )
        for index, item in enumerate(items)
    ]
