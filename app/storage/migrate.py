"""`errorbook storage migrate --to s3`: copy a local install's blobs into the object store, verifying each digest.

Resumable: an object already in the store under its digest is skipped, so a second run after an interruption
copies only what is left. A local file whose bytes no longer match its name is reported and not copied.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

from app.core.storage import BlobStore, LocalBlobStore


@dataclass
class MigrateResult:
    copied: int = 0
    copied_bytes: int = 0
    already_there: int = 0
    corrupt: list[str] = field(default_factory=list)


def migrate_blobs(*, source: LocalBlobStore, target: BlobStore) -> Iterator[tuple[int, MigrateResult]]:
    """Copy every blob of `source` missing from `target`; yields (blobs looked at, totals so far) as it goes."""
    result = MigrateResult()
    for seen, blob in enumerate(source.iter_blobs(), start=1):
        if target.exists(blob.sha256):
            result.already_there += 1
        else:
            with source.open(blob.sha256) as fh:
                stored = target.put_file(fh)  # hashes what it uploads
            if stored != blob.sha256:
                target.delete(stored)  # the bytes under a wrong name: never leave them in the store
                result.corrupt.append(blob.sha256)
            else:
                result.copied += 1
                result.copied_bytes += blob.size
        yield seen, result
