"""Receiving an upload's bytes resumably: which files the browser still has to send, and big files (zips) in
chunks appended in order, so a dropped connection resumes where it stopped."""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.orm import Session

from app.core.errors import Conflict, Invalid, TooLarge
from app.core.settings import Settings
from app.core.storage import BlobStore, is_sha256, store_file
from app.models import User
from app.uploads.service import staging

# The browser sends files at least this big in chunks (resumable); smaller ones go in multipart batches.
CHUNKED_FILE_BYTES = 8 * 2**20
MAX_CHUNK_BYTES = 16 * 2**20


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
    upload = staging.open_upload(session, upload_id, user)
    missing, partial, refused = [], {}, {}
    known: list[staging.StagedBlob] = []
    for raw_name, sha256, size in files:
        if staging.is_skipped(raw_name):
            continue
        name, refusal = staging.entry_name(raw_name)
        if refusal is not None:
            refused[raw_name] = refusal
            known.append(staging.StagedBlob(raw_name, None, size, refusal))
        elif is_sha256(sha256) and blobs.exists(sha256):
            known.append(staging.StagedBlob(raw_name, sha256, size))
        else:
            missing.append(raw_name)
            part = _part_path(settings, upload.id, sha256) if is_sha256(sha256) else None
            if part is not None and part.exists():
                partial[raw_name] = part.stat().st_size
    counts = staging.record_entries(session, upload_id=upload.id, files=known, archive=None)
    return HaveAnswer(missing=missing, partial=partial, registered=counts.staged, refused=refused)


def _part_path(settings: Settings, upload_id: int, sha256: str) -> Path:
    return settings.staging_dir / str(upload_id) / f"{sha256}.part"


@dataclass(frozen=True)
class ChunkTarget:
    """A checked chunk request: which file of which upload, where its bytes go, and how many it may have."""

    upload_id: int
    name: str
    sha256: str
    size: int
    offset: int
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
    upload = staging.open_upload(session, upload_id, user)
    if not is_sha256(sha256):
        raise Invalid("sha256 must be 64 lowercase hex digits")
    if size <= 0 or size > settings.max_request_bytes:
        raise TooLarge(f"a file may have 1 to {settings.max_request_bytes:,} bytes")
    _, refusal = staging.entry_name(name)
    if refusal is not None:
        raise Invalid(f"{staging.printable(name)}: {refusal}")
    part = _part_path(settings, upload.id, sha256)
    part.parent.mkdir(parents=True, exist_ok=True)
    received = part.stat().st_size if part.exists() else 0
    if offset != received:
        raise Conflict(f"expected the chunk at byte {received:,}", extra={"received": received})
    chunk = part.with_name(f"{sha256}.{offset}.chunk")
    max_bytes = min(MAX_CHUNK_BYTES, size - offset)
    return ChunkTarget(upload.id, name, sha256, size, offset, part=part, chunk=chunk, max_bytes=max_bytes)


async def receive_chunk(target: ChunkTarget, body: AsyncIterator[bytes]) -> None:
    """Write a request body to the chunk file, refusing more than the chunk may hold (the file is removed)."""
    written = 0
    try:
        with staging.disk_space(), target.chunk.open("wb") as out:
            async for piece in body:
                written += len(piece)
                if written > target.max_bytes:
                    raise TooLarge(f"a chunk may have at most {target.max_bytes:,} bytes here")
                out.write(piece)
    except BaseException:
        target.chunk.unlink(missing_ok=True)
        raise


def append_chunk(session: Session, *, target: ChunkTarget, blobs: BlobStore, user: User | None = None) -> int:
    """Append a received chunk if the part still ends at the target's offset; when complete, verify the whole
    file's sha256, store it and record it. Returns the bytes received so far."""
    name, sha256, size, offset = target.name, target.sha256, target.size, target.offset
    try:
        with staging.disk_space(), target.part.open("ab") as part:
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
            raise Invalid(f"{staging.printable(name)} changed while it was sent (its sha256 differs); send it again")
        part.seek(0)
        with staging.disk_space():
            stored, stored_size = store_file(blobs, part)
    target.part.unlink(missing_ok=True)
    staged = [staging.StagedBlob(name, stored, stored_size)]
    staging.stage_files(session, upload_id=target.upload_id, files=staged, user=user)
    return received


def discard_parts(settings: Settings, *, upload_id: int) -> None:
    shutil.rmtree(settings.staging_dir / str(upload_id), ignore_errors=True)
