"""Content-addressed blob storage: sha256-named files in sharded folders, written atomically."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import os
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol

from app.core.artefacts import ArtefactStore, LocalArtefacts

CHUNK = 1024 * 1024


class BlobStore(Protocol):
    """What the app needs from a store; an S3-compatible one can implement the same. Content-addressed blobs
    (images, thumbnails) by digest, and files by key in `artefacts` (run models, checkpoints, embedding sets)."""

    artefacts: ArtefactStore

    def put_bytes(self, data: bytes) -> str: ...
    def put_file(self, src: BinaryIO) -> str: ...
    def exists(self, sha256: str) -> bool: ...
    def path(self, sha256: str) -> Path: ...
    def open(self, sha256: str) -> BinaryIO: ...
    def delete(self, sha256: str) -> None: ...
    def modified_at(self, sha256: str) -> float | None: ...
    def sweep_abandoned(self, *, older_than_seconds: float) -> int: ...
    def iter_blobs(self) -> Iterator[StoredBlob]: ...


def is_sha256(value: str) -> bool:
    return len(value) == 64 and not value.strip("0123456789abcdef")  # nothing left once hex digits go


def _check_digest(sha256: str) -> str:
    if not is_sha256(sha256):
        raise ValueError(f"not a sha256 hex digest: {sha256!r}")
    return sha256


def read_blob(blobs: BlobStore, sha256: str) -> bytes:
    with blobs.open(sha256) as handle:
        return handle.read()


def delete_blobs(blobs: BlobStore, shas: Iterable[str]) -> None:
    """Delete blobs nothing needs any more; one already gone (or not deletable now) is left to the sweep."""
    for sha in shas:
        with contextlib.suppress(OSError):
            blobs.delete(sha)


class _CountingReader:
    """Counts the bytes `BlobStore.put_file` reads, so a caller learns a file's size in the same pass."""

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


# One process-wide pool: a blob write ends in fsync, and several in flight hide its latency.
_blob_writer: ThreadPoolExecutor | None = None
_blob_writer_lock = threading.Lock()


def blob_writer() -> ThreadPoolExecutor:
    global _blob_writer
    with _blob_writer_lock:
        if _blob_writer is None:
            _blob_writer = ThreadPoolExecutor(max_workers=8, thread_name_prefix="blob-writer")
        return _blob_writer


def is_disk_full(error: OSError) -> bool:
    return error.errno in (errno.ENOSPC, errno.EDQUOT)


@dataclass(frozen=True)
class StoredBlob:
    sha256: str
    size: int
    mtime: float


class LocalBlobStore:
    def __init__(self, root: Path, *, artefact_root: Path | None = None) -> None:
        self.root = root
        # Artefacts stay where they always were: beside the blob folder, in the data dir (runs/, jobs/, ...).
        self.artefacts: ArtefactStore = LocalArtefacts(artefact_root or root.parent)
        self._tmp = root / "tmp"
        self._tmp.mkdir(parents=True, exist_ok=True)

    def path(self, sha256: str) -> Path:
        digest = _check_digest(sha256)
        return self.root / digest[:2] / digest[2:4] / digest

    def exists(self, sha256: str) -> bool:
        return self.path(sha256).exists()

    def put_bytes(self, data: bytes) -> str:
        digest = hashlib.sha256(data).hexdigest()
        if self._refresh(digest):
            return digest
        return self.put_file(io.BytesIO(data))

    def _refresh(self, digest: str) -> bool:
        """Mark an existing blob as just stored (the garbage collector spares young blobs: a request that
        stored it may not have committed the row naming it yet); False when there is none."""
        try:
            os.utime(self.path(digest))
        except FileNotFoundError:
            return False
        return True

    def put_file(self, src: BinaryIO) -> str:
        """Stream ``src`` into the store, hashing as it goes; never holds the whole file."""
        with spooled(src, self._tmp) as (tmp, digest):
            self._publish(tmp, digest)
            return digest

    def open(self, sha256: str) -> BinaryIO:
        return self.path(sha256).open("rb")

    def delete(self, sha256: str) -> None:
        self.path(sha256).unlink(missing_ok=True)

    def modified_at(self, sha256: str) -> float | None:
        """When the blob was last stored (a re-store refreshes it); None when there is none."""
        try:
            return self.path(sha256).stat().st_mtime
        except FileNotFoundError:
            return None

    def sweep_abandoned(self, *, older_than_seconds: float) -> int:
        """Delete temp files a killed writer left (a write in progress unlinks its own on any other exit);
        returns how many went. Only old ones: a slow upload may still be streaming into a young one."""
        return sweep_old_files(self._tmp, older_than_seconds=older_than_seconds)

    def _publish(self, tmp: Path, digest: str) -> None:
        # rename is atomic on one file system: a reader sees the whole blob or none.
        final = self.path(digest)
        final.parent.mkdir(parents=True, exist_ok=True)
        if self._refresh(digest):
            return
        os.replace(tmp, final)

    def iter_blobs(self) -> Iterator[StoredBlob]:
        """Every blob file (its temporary folder aside), shard by shard."""
        for shard in sorted(self.root.glob("??/??")):
            for path in shard.iterdir():
                with contextlib.suppress(FileNotFoundError):
                    if len(path.name) == 64 and path.is_file():
                        info = path.stat()
                        yield StoredBlob(path.name, info.st_size, info.st_mtime)


@contextlib.contextmanager
def spooled(src: BinaryIO, folder: Path) -> Iterator[tuple[Path, str]]:
    """``src`` copied to a synced temp file in ``folder``, hashed as it goes (never all in memory); yields the
    file and its sha256, and removes the file afterwards unless the block moved it away."""
    hasher = hashlib.sha256()
    fd, tmp_name = tempfile.mkstemp(dir=folder)
    try:
        with os.fdopen(fd, "wb") as fh:
            while chunk := src.read(CHUNK):
                hasher.update(chunk)
                fh.write(chunk)
            fh.flush()
            os.fsync(fh.fileno())
        yield Path(tmp_name), hasher.hexdigest()
    finally:
        Path(tmp_name).unlink(missing_ok=True)


def sweep_old_files(folder: Path, *, older_than_seconds: float) -> int:
    """Delete the files in ``folder`` older than the cutoff; returns how many went."""
    cutoff = time.time() - older_than_seconds
    swept = 0
    for path in folder.iterdir():
        with contextlib.suppress(FileNotFoundError):
            if path.is_file() and path.stat().st_mtime < cutoff:
                path.unlink()
                swept += 1
    return swept


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write a job output next to its final name, then rename (no half files)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp_name, path)
    finally:
        Path(tmp_name).unlink(missing_ok=True)
