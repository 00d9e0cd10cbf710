"""Run artefacts and shared files by key (issue 18): model files, resume checkpoints, embedding sets.

Blobs are named by their digest; these files are named by what they are: ``runs/<run id>/model.onnx``,
``jobs/<job id>/training_state.pt``, ``embeddings/dataset-<id>/<backbone>/vectors.f16``. Every blob store has one
(``store.artefacts``), so a web host and worker hosts that share only the database and the object store see the
same files. The local one keeps them where they always were, under the data dir (key = path below it).

Writers build a file in their own scratch folder, then `put_file` moves it under its key (a reader sees the whole
file or the old one), and only then commit the row naming it: no row points at a missing file.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol

from app.core.errors import DomainError

# The areas a key may start with: nothing else under the data dir (the database, the signing key) is reachable.
AREAS = ("runs", "jobs", "embeddings")
_PART = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_TEMPORARY = (".tmp", ".partial")
MANIFEST = ".manifest.json"


class ObjectStoreUnavailable(DomainError, status_code=503, code="object_store_unavailable"):
    """The object store did not answer (down, unreachable, or refusing our credentials)."""


@dataclass(frozen=True)
class StoredArtefact:
    key: str
    size: int
    mtime: float
    etag: str = ""  # an object store's ETag (the local store has none)


def check_key(key: str) -> str:
    """A key is ``<area>/<part>/...``: known area, plain names only (no ``..``, no absolute paths)."""
    parts = key.split("/")
    if len(parts) < 2 or parts[0] not in AREAS or not all(_PART.fullmatch(part) for part in parts):
        raise ValueError(f"not an artefact key: {key!r}")
    return key


def run_key(run_id: int, name: str) -> str:
    return check_key(f"runs/{run_id}/{name}")


def is_temporary(name: str) -> bool:
    return name.startswith(".") or name.endswith(_TEMPORARY)


class ArtefactStore(Protocol):
    def put_file(self, key: str, source: Path) -> None:
        """Move the finished file ``source`` under ``key`` (it is gone from ``source`` afterwards)."""

    def put_bytes(self, key: str, data: bytes) -> None: ...
    def get_bytes(self, key: str) -> bytes:
        """FileNotFoundError when there is no such file."""

    def open(self, key: str) -> BinaryIO: ...
    def local_path(self, key: str) -> Path:
        """A local copy of a file that never changes once recorded (a run's model files); FileNotFoundError
        when there is none."""

    def exists(self, key: str) -> bool: ...
    def delete(self, key: str) -> None: ...
    def delete_prefix(self, prefix: str) -> int: ...
    def iter(self, prefix: str) -> Iterator[StoredArtefact]: ...
    def mirror(self, prefix: str, folder: Path | None = None) -> Path:
        """A local folder holding the current files under ``prefix`` (for files that change, as an embedding
        set's); with ``folder``, that one is brought up to date (files changed there since are kept)."""

    def publish(self, prefix: str, folder: Path, *, order: Sequence[str] = ()) -> None:
        """Store the files of a folder made by `mirror` that changed there, those named in ``order`` first."""


class LocalArtefacts:
    """Artefacts as files under ``root`` (the data dir): ``root/<key>``."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, key: str) -> Path:
        return self.root / check_key(key)

    def put_file(self, key: str, source: Path) -> None:
        final = self.path(key)
        if source.resolve() == final.resolve():
            return
        final.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.replace(source, final)  # atomic on one file system
        except OSError as error:
            if error.errno != errno.EXDEV:
                raise
            fd, tmp_name = tempfile.mkstemp(dir=final.parent, prefix=f".{final.name}.")
            os.close(fd)
            try:
                shutil.copyfile(source, tmp_name)
                os.replace(tmp_name, final)
            finally:
                Path(tmp_name).unlink(missing_ok=True)
            source.unlink()

    def put_bytes(self, key: str, data: bytes) -> None:
        from app.core.storage import atomic_write_bytes

        atomic_write_bytes(self.path(key), data)

    def get_bytes(self, key: str) -> bytes:
        return self.path(key).read_bytes()

    def open(self, key: str) -> BinaryIO:
        return self.path(key).open("rb")

    def local_path(self, key: str) -> Path:
        path = self.path(key)
        if not path.is_file():
            raise FileNotFoundError(key)
        return path

    def exists(self, key: str) -> bool:
        return self.path(key).is_file()

    def delete(self, key: str) -> None:
        self.path(key).unlink(missing_ok=True)

    def delete_prefix(self, prefix: str) -> int:
        found = list(self.iter(prefix))
        shutil.rmtree(self.path(prefix), ignore_errors=True)
        return len(found)

    def iter(self, prefix: str) -> Iterator[StoredArtefact]:
        top = self.root / prefix.strip("/") if prefix.strip("/") else self.root
        areas = [top] if prefix.strip("/") else [self.root / area for area in AREAS]
        for folder in areas:
            for path in sorted(folder.rglob("*")) if folder.is_dir() else ():
                with contextlib.suppress(FileNotFoundError):
                    if path.is_file() and not is_temporary(path.name):
                        info = path.stat()
                        yield StoredArtefact(path.relative_to(self.root).as_posix(), info.st_size, info.st_mtime)

    def mirror(self, prefix: str, folder: Path | None = None) -> Path:
        # The files are here already: every reader and writer on this host works on them in place.
        path = self.path(prefix)
        path.mkdir(parents=True, exist_ok=True)
        return path

    def publish(self, prefix: str, folder: Path, *, order: Sequence[str] = ()) -> None:
        if folder.resolve() == self.path(prefix).resolve():
            return
        for path in sorted(folder.iterdir()):
            if path.is_file() and not is_temporary(path.name):
                self.put_file(f"{prefix}/{path.name}", path)
