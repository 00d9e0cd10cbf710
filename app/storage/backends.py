"""The blob store a process uses, chosen by its settings: the local folder or an S3-compatible object store."""

from __future__ import annotations

from app.core.errors import Invalid
from app.core.settings import Settings
from app.core.storage import BlobStore, LocalBlobStore


def blob_store(settings: Settings) -> BlobStore:
    if settings.storage == "local":
        return LocalBlobStore(settings.blob_dir)
    if not settings.s3_bucket:
        raise Invalid("ERRORBOOK_STORAGE=s3 needs ERRORBOOK_S3_BUCKET")
    from app.storage.s3 import S3BlobStore, S3Location

    location = S3Location(
        bucket=settings.s3_bucket,
        prefix=settings.s3_prefix,
        endpoint_url=settings.s3_endpoint_url,
        region=settings.s3_region,
    )
    # The per-host read-through cache is scratch: deleting it costs downloads, never data.
    return S3BlobStore(location, cache_dir=settings.cache_dir / "s3-blobs")
