"""`errorbook storage migrate --to s3`: copy a local install's blobs into the object store, verifying each digest,
then its run artefacts and embedding sets (verified by ETag).

Resumable: an object already in the store under its digest is skipped, so a second run after an interruption
copies only what is left. A local file whose bytes no longer match its name is reported and not copied.
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from app.core.artefacts import ArtefactStore, LocalArtefacts, is_temporary
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


# boto3's transfer defaults: files from 8 MiB up go in 8 MiB parts, and the store's ETag is then the MD5 of the
# parts' MD5s and their count; below, the MD5 of the bytes. Either way the local file says what the ETag must be.
PART = 8 * 1024 * 1024


def expected_etag(path: Path) -> str:
    digests = []
    with path.open("rb") as fh:
        while chunk := fh.read(PART):
            digests.append(hashlib.md5(chunk, usedforsecurity=False).digest())
    if len(digests) <= 1 and path.stat().st_size < PART:
        return (digests[0] if digests else hashlib.md5(b"", usedforsecurity=False).digest()).hex()
    return f"{hashlib.md5(b''.join(digests), usedforsecurity=False).hexdigest()}-{len(digests)}"


@dataclass
class ArtefactMigration:
    copied: int = 0
    copied_bytes: int = 0
    already_there: int = 0
    mismatched: list[str] = field(default_factory=list)


def artefact_sources(source: LocalArtefacts, legacy_runs: Iterable[tuple[int, str]]) -> dict[str, Path]:
    """Key -> local file of everything to copy: the data dir's runs/, jobs/ and embeddings/, and the model folders
    that runs recorded before their files had keys (an absolute model_path) under runs/<id>/."""
    found = {item.key: source.root / item.key for item in source.iter("")}
    for run_id, model_path in legacy_runs:
        folder = Path(model_path)
        if folder.is_absolute() and folder.is_dir():
            for path in folder.iterdir():
                if path.is_file() and not is_temporary(path.name):
                    found.setdefault(f"runs/{run_id}/{path.name}", path)
    return found


def migrate_artefacts(*, sources: dict[str, Path], target: ArtefactStore) -> ArtefactMigration:
    """Copy each file the store lacks (or holds other bytes for), then check each copy's ETag against the local
    file; a copy that does not match is deleted and reported. Resumable: matching copies are skipped."""
    result = ArtefactMigration()
    stored = {item.key: item.etag for item in target.iter("")}
    copied: list[str] = []
    for key, path in sorted(sources.items()):
        if stored.get(key) == expected_etag(path):
            result.already_there += 1
            continue
        with tempfile.TemporaryDirectory() as scratch:  # put_file moves its source: hand it a copy
            copy = Path(scratch) / path.name
            shutil.copyfile(path, copy)
            target.put_file(key, copy)
        copied.append(key)
    stored = {item.key: item.etag for item in target.iter("")}
    for key in copied:
        if stored.get(key) != expected_etag(sources[key]):
            target.delete(key)
            result.mismatched.append(key)
        else:
            result.copied += 1
            result.copied_bytes += sources[key].stat().st_size
    return result
