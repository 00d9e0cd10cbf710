"""Artefacts by key in the object store: ``<prefix>/<key>`` beside the blobs (``<prefix>/ab/cd/<sha256>``, which no
key can look like: keys start with runs/, jobs/ or embeddings/).

Reads go through a per-host copy under ``cache_dir``, like the blobs: a run's model files never change once the
run records them, so a copy is fetched once; folders that do change (an embedding set) are mirrored by comparing
each object's ETag with the one the copy was fetched at (one LIST per mirror). Every copy is scratch.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from app.core.artefacts import MANIFEST, ObjectStoreUnavailable, StoredArtefact, check_key, is_temporary

if TYPE_CHECKING:
    from app.storage.s3 import S3Location

_MISSING = {"404", "NoSuchKey", "NotFound"}
_MIRROR_LOCK = threading.Lock()  # one mirror at a time per process: two requests never fetch the same file twice


@contextmanager
def store_errors(location: S3Location, key: str) -> Iterator[None]:
    """SDK failures as our errors: a missing object is FileNotFoundError, anything else (down, refused, wrong
    credentials) ObjectStoreUnavailable with the reason in words (never the secret)."""
    from boto3.exceptions import Boto3Error
    from botocore.exceptions import BotoCoreError, ClientError

    from app.storage.s3 import describe_failure

    try:
        yield
    except ClientError as error:
        if error.response.get("Error", {}).get("Code") in _MISSING:
            raise FileNotFoundError(f"{key} is not in the object store") from error
        raise ObjectStoreUnavailable(f"object store {location.describe()}: {describe_failure(error)}") from error
    except (BotoCoreError, Boto3Error) as error:
        cause = error.__context__ if isinstance(error, Boto3Error) and error.__context__ else error
        reason = describe_failure(cause) if isinstance(cause, Exception) else type(error).__name__
        raise ObjectStoreUnavailable(f"object store {location.describe()}: {reason}") from error


class S3Artefacts:
    def __init__(self, client: Any, location: S3Location, *, cache_dir: Path) -> None:
        self.client = client
        self.location = location
        self.cache_dir = cache_dir
        self._tmp = cache_dir / "tmp"
        self._tmp.mkdir(parents=True, exist_ok=True)

    def object_key(self, key: str) -> str:
        """The object's key; ``key`` may also be a bare area (runs, jobs, embeddings), to list it."""
        from app.core.artefacts import AREAS

        prefix = self.location.prefix.strip("/")
        return f"{prefix + '/' if prefix else ''}{key if key in AREAS else check_key(key)}"

    def _relative(self, object_key: str) -> str:
        prefix = self.location.prefix.strip("/")
        return object_key[len(prefix) + 1 :] if prefix else object_key

    def put_file(self, key: str, source: Path) -> None:
        with store_errors(self.location, key):
            self.client.upload_file(str(source), self.location.bucket, self.object_key(key))
        source.unlink(missing_ok=True)

    def put_bytes(self, key: str, data: bytes) -> None:
        with store_errors(self.location, key):
            self.client.put_object(Bucket=self.location.bucket, Key=self.object_key(key), Body=data)

    def get_bytes(self, key: str) -> bytes:
        with store_errors(self.location, key):
            answer = self.client.get_object(Bucket=self.location.bucket, Key=self.object_key(key))
            data: bytes = answer["Body"].read()
        return data

    def open(self, key: str) -> BinaryIO:
        return io.BytesIO(self.get_bytes(key))

    def _download(self, key: str, final: Path) -> None:
        final.parent.mkdir(parents=True, exist_ok=True)
        self._tmp.mkdir(parents=True, exist_ok=True)  # the cache may have been wiped since (it is scratch)
        fd, tmp_name = tempfile.mkstemp(dir=self._tmp)
        os.close(fd)
        try:
            with store_errors(self.location, key):
                self.client.download_file(self.location.bucket, self.object_key(key), tmp_name)
            os.replace(tmp_name, final)  # whole or not at all
        finally:
            Path(tmp_name).unlink(missing_ok=True)

    def local_path(self, key: str) -> Path:
        cached = self.cache_dir / check_key(key)
        if not cached.exists():
            self._download(key, cached)
        return cached

    def exists(self, key: str) -> bool:
        try:
            with store_errors(self.location, key):
                self.client.head_object(Bucket=self.location.bucket, Key=self.object_key(key))
        except FileNotFoundError:
            return False
        return True

    def delete(self, key: str) -> None:
        with store_errors(self.location, key):
            self.client.delete_object(Bucket=self.location.bucket, Key=self.object_key(key))
        (self.cache_dir / key).unlink(missing_ok=True)

    def delete_prefix(self, prefix: str) -> int:
        keys = [item.key for item in self.iter(prefix)]
        for start in range(0, len(keys), 1000):
            objects = [{"Key": self.object_key(key)} for key in keys[start : start + 1000]]
            with store_errors(self.location, prefix):
                self.client.delete_objects(Bucket=self.location.bucket, Delete={"Objects": objects, "Quiet": True})
        for key in keys:
            (self.cache_dir / key).unlink(missing_ok=True)
        return len(keys)

    def _listing(self, prefix: str) -> Iterator[tuple[str, int, float, str]]:
        """(key, size, modified, ETag) of every artefact under ``prefix`` (all areas when it is empty)."""
        from app.core.artefacts import AREAS

        areas = [prefix.strip("/")] if prefix.strip("/") else list(AREAS)
        paginator = self.client.get_paginator("list_objects_v2")
        for area in areas:
            with store_errors(self.location, area):
                for page in paginator.paginate(Bucket=self.location.bucket, Prefix=self.object_key(area) + "/"):
                    for item in page.get("Contents", ()):
                        key = self._relative(item["Key"])
                        yield key, int(item["Size"]), item["LastModified"].timestamp(), str(item.get("ETag", ""))

    def iter(self, prefix: str) -> Iterator[StoredArtefact]:
        for key, size, modified, etag in self._listing(prefix):
            yield StoredArtefact(key, size, modified, etag.strip('"'))

    # -- folders that change --------------------------------------------------------------------------------------

    def mirror(self, prefix: str, folder: Path | None = None) -> Path:
        folder = folder or self.cache_dir / check_key(prefix)
        folder.mkdir(parents=True, exist_ok=True)
        with _MIRROR_LOCK:
            manifest = _read_manifest(folder)
            listed = {key[len(prefix) + 1 :]: etag for key, _, _, etag in self._listing(prefix)}
            for name, etag in listed.items():
                local = folder / name
                if manifest.get(name, {}).get("etag") == etag and local.exists():
                    continue  # this copy is the stored one (or this host changed it since: kept for publish)
                self._download(f"{prefix}/{name}", local)
                manifest[name] = {"etag": etag, "stamp": _stamp(local)}
            for name in [name for name in manifest if name not in listed]:
                (folder / name).unlink(missing_ok=True)  # deleted from the store since
                del manifest[name]
            _write_manifest(folder, manifest)
        return folder

    def publish(self, prefix: str, folder: Path, *, order: Sequence[str] = ()) -> None:
        manifest = _read_manifest(folder)
        names = [p.name for p in sorted(folder.iterdir()) if p.is_file() and not is_temporary(p.name)]
        ranked = sorted(names, key=lambda name: (order.index(name) if name in order else len(order), name))
        for name in ranked:
            path = folder / name
            stamp = _stamp(path)
            if manifest.get(name, {}).get("stamp") == stamp:
                continue  # unchanged since it was fetched or last published
            key = f"{prefix}/{name}"
            with store_errors(self.location, key):
                self.client.upload_file(str(path), self.location.bucket, self.object_key(key))
                head = self.client.head_object(Bucket=self.location.bucket, Key=self.object_key(key))
            manifest[name] = {"etag": str(head.get("ETag", "")), "stamp": stamp}
            _write_manifest(folder, manifest)


def _stamp(path: Path) -> list[int]:
    info = path.stat()
    return [info.st_size, info.st_mtime_ns]


def _read_manifest(folder: Path) -> dict[str, dict[str, Any]]:
    try:
        found = json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError):
        return {}
    return found if isinstance(found, dict) else {}


def _write_manifest(folder: Path, manifest: dict[str, dict[str, Any]]) -> None:
    from app.core.storage import atomic_write_bytes

    atomic_write_bytes(folder / MANIFEST, json.dumps(manifest).encode())
