"""Content-addressed blobs in an S3-compatible object store (issue 18), behind the same interface as the local store.

Keys are ``<prefix>/ab/cd/<sha256>``, as the local store's folders. A write hashes into a local temp file, then PUTs
the object under its digest: S3 makes an object visible whole or not at all, and the row naming it is committed only
after the PUT returned, so no row ever points at a missing object. Readers that need a file (Pillow, the decoders)
get one from a per-host read-through cache under ``cache_dir``: scratch, disposable, safe to delete at any time.

boto3 rather than obstore: the SDK's usual credential chain (environment, shared files, instance roles) and
presigned URLs come with it, and every S3-compatible store tests against it.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from app.core.artefacts import ArtefactStore, ObjectStoreUnavailable
from app.core.storage import CHUNK, StoredBlob, _check_digest, is_sha256, spooled, sweep_old_files
from app.storage.s3_artefacts import S3Artefacts, store_errors

__all__ = ["ObjectStoreUnavailable", "S3BlobStore", "S3Location"]


@dataclass(frozen=True)
class S3Location:
    bucket: str
    prefix: str = ""
    endpoint_url: str | None = None
    region: str | None = None

    def describe(self) -> str:
        where = self.endpoint_url or "AWS"
        return f"s3://{self.bucket}/{self.prefix} at {where}"


def make_client(location: S3Location) -> Any:
    import boto3
    from botocore.config import Config

    # Bounded retries with backoff: a store that is down mid-job fails the call with its reason, not a hang.
    config = Config(
        retries={"max_attempts": 4, "mode": "standard"}, connect_timeout=5, read_timeout=60, signature_version="s3v4"
    )
    return boto3.client("s3", endpoint_url=location.endpoint_url, region_name=location.region, config=config)


def describe_failure(error: Exception) -> str:
    """The store's reason in words, never the credentials (botocore's messages name the key id at most)."""
    from botocore.exceptions import ClientError, EndpointConnectionError, NoCredentialsError

    if isinstance(error, NoCredentialsError):
        return "no credentials found (set AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or a profile)"
    if isinstance(error, EndpointConnectionError):
        return f"cannot connect to {error.kwargs.get('endpoint_url', 'the endpoint')}"
    if isinstance(error, ClientError):
        code = error.response.get("Error", {}).get("Code", "?")
        if code in {"InvalidAccessKeyId", "SignatureDoesNotMatch", "403", "AccessDenied"}:
            return f"the store refused the credentials ({code})"
        if code in {"NoSuchBucket", "404"}:
            return "the bucket does not exist"
        return f"the store answered {code}"
    return f"{type(error).__name__}"


class S3BlobStore:
    def __init__(self, location: S3Location, *, cache_dir: Path, client: Any | None = None) -> None:
        self.location = location
        self.client = client if client is not None else make_client(location)
        self.cache_dir = cache_dir
        self._tmp = cache_dir / "tmp"
        self._tmp.mkdir(parents=True, exist_ok=True)
        self.artefacts: ArtefactStore = S3Artefacts(self.client, location, cache_dir=cache_dir.parent / "s3-artefacts")

    # -- reachability ---------------------------------------------------------------------------------------------

    def check_reachable(self) -> None:
        """Refuse to start against a store that cannot be used, with the reason (and never the secret)."""
        try:
            self.client.head_bucket(Bucket=self.location.bucket)
        except Exception as error:  # noqa: BLE001 - every SDK failure becomes one clear message
            raise ObjectStoreUnavailable(
                f"object store {self.location.describe()} is not usable: {describe_failure(error)}"
            ) from error

    def ensure_bucket(self) -> bool:
        """Create the bucket when it does not exist yet (a new deployment); True when it was created."""
        from botocore.exceptions import ClientError

        try:
            self.client.head_bucket(Bucket=self.location.bucket)
            return False
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") not in {"404", "NoSuchBucket", "NotFound"}:
                raise ObjectStoreUnavailable(
                    f"object store {self.location.describe()} is not usable: {describe_failure(error)}"
                ) from error
        self.client.create_bucket(Bucket=self.location.bucket)
        return True

    # -- the BlobStore interface ----------------------------------------------------------------------------------

    def key(self, sha256: str) -> str:
        digest = _check_digest(sha256)
        prefix = self.location.prefix.strip("/")
        return f"{prefix + '/' if prefix else ''}{digest[:2]}/{digest[2:4]}/{digest}"

    def _head(self, sha256: str) -> dict[str, Any] | None:
        try:
            with store_errors(self.location, sha256):
                head: dict[str, Any] = self.client.head_object(Bucket=self.location.bucket, Key=self.key(sha256))
        except FileNotFoundError:
            return None
        return head

    def exists(self, sha256: str) -> bool:
        return self._head(sha256) is not None

    def modified_at(self, sha256: str) -> float | None:
        head = self._head(sha256)
        return None if head is None else float(head["LastModified"].timestamp())

    def _refresh(self, digest: str) -> bool:
        """Mark an existing object as just stored, as the local store touches its file: the garbage collector
        spares young objects (the row naming this one may not be committed yet). False when there is none."""
        if not self.exists(digest):
            return False
        key = self.key(digest)
        self.client.copy_object(
            Bucket=self.location.bucket,
            Key=key,
            CopySource={"Bucket": self.location.bucket, "Key": key},
            MetadataDirective="REPLACE",
        )
        return True

    def put_bytes(self, data: bytes) -> str:
        digest = hashlib.sha256(data).hexdigest()
        with store_errors(self.location, digest):
            if not self._refresh(digest):
                self.client.put_object(Bucket=self.location.bucket, Key=self.key(digest), Body=data)
        return digest

    def put_file(self, src: BinaryIO) -> str:
        """Stream ``src`` to a local temp file, hashing as it goes, then upload it under its digest; the file then
        becomes this host's cached copy (what is stored is usually read next, e.g. decoded by ingest)."""
        self._tmp.mkdir(parents=True, exist_ok=True)  # the cache may have been wiped since (it is scratch)
        with spooled(src, self._tmp) as (tmp, digest), store_errors(self.location, digest):
            if not self._refresh(digest):
                self.client.upload_file(str(tmp), self.location.bucket, self.key(digest))
            cached = self._cached(digest)
            cached.parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp, cached)
            return digest

    def _cached(self, digest: str) -> Path:
        return self.cache_dir / digest[:2] / digest[2:4] / digest

    def path(self, sha256: str) -> Path:
        """A local copy (the read-through cache), fetched on first use and renamed into place whole."""
        digest = _check_digest(sha256)
        cached = self._cached(digest)
        if cached.exists():
            return cached
        cached.parent.mkdir(parents=True, exist_ok=True)
        self._tmp.mkdir(parents=True, exist_ok=True)  # the cache may have been wiped since (it is scratch)
        fd, tmp_name = tempfile.mkstemp(dir=self._tmp)
        try:
            with store_errors(self.location, digest):
                # One GET streamed to disk (the transfer manager's download_file asks HEAD first).
                body = self.client.get_object(Bucket=self.location.bucket, Key=self.key(digest))["Body"]
                with os.fdopen(fd, "wb") as out:
                    fd = -1
                    for chunk in body.iter_chunks(CHUNK):
                        out.write(chunk)
            os.replace(tmp_name, cached)
        finally:
            if fd != -1:
                os.close(fd)
            Path(tmp_name).unlink(missing_ok=True)
        return cached

    def open(self, sha256: str) -> BinaryIO:
        return self.path(sha256).open("rb")

    def delete(self, sha256: str) -> None:
        self.client.delete_object(Bucket=self.location.bucket, Key=self.key(sha256))
        digest = _check_digest(sha256)
        self._cached(digest).unlink(missing_ok=True)

    def presigned_url(
        self, sha256: str, *, seconds: int = 300, content_type: str | None = None, disposition: str | None = None
    ) -> str:
        """A short-lived GET URL; the caller checks the user's access before asking for one. The store answers
        with the given content type and disposition (objects are stored without either)."""
        params = {"Bucket": self.location.bucket, "Key": self.key(sha256)}
        if content_type:
            params["ResponseContentType"] = content_type
        if disposition:
            params["ResponseContentDisposition"] = disposition
        url: str = self.client.generate_presigned_url("get_object", Params=params, ExpiresIn=seconds)
        return url

    def sweep_abandoned(self, *, older_than_seconds: float) -> int:
        return sweep_old_files(self._tmp, older_than_seconds=older_than_seconds)

    def iter_blobs(self) -> Iterator[StoredBlob]:
        paginator = self.client.get_paginator("list_objects_v2")
        prefix = self.location.prefix.strip("/")
        for page in paginator.paginate(Bucket=self.location.bucket, Prefix=f"{prefix}/" if prefix else ""):
            for item in page.get("Contents", ()):
                # Only <prefix>/ab/cd/<sha256>: artefacts (runs/..., embeddings/...) are never blobs to collect.
                parts = str(item["Key"]).split("/")
                name = parts[-1]
                if is_sha256(name) and parts[-3:-1] == [name[:2], name[2:4]]:
                    yield StoredBlob(name, int(item["Size"]), item["LastModified"].timestamp())
