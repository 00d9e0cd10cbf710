"""The blob store a process uses, chosen by its settings: the local folder or an S3-compatible object store."""

from __future__ import annotations

from app.core.errors import Invalid
from app.core.settings import Settings
from app.core.storage import BlobStore, LocalBlobStore


def blob_store(settings: Settings) -> BlobStore:
    if settings.storage == "local":
        return LocalBlobStore(settings.blob_dir, artefact_root=settings.resolved_data_dir)
    if not settings.s3_bucket:
        raise Invalid("ERRORBOOK_STORAGE=s3 needs ERRORBOOK_S3_BUCKET")
    from app.storage.s3 import S3BlobStore, S3Location

    location = S3Location(
        bucket=settings.s3_bucket,
        prefix=settings.s3_prefix,
        endpoint_url=settings.s3_endpoint_url,
        region=settings.s3_region,
    )
    # The per-host read-through caches (blobs, and artefacts beside them) are scratch: deleting them costs
    # downloads, never data.
    return S3BlobStore(location, cache_dir=settings.cache_dir / "s3-blobs")


def usable_blob_store(settings: Settings) -> BlobStore:
    """The store, checked to answer (an object store: reachable, bucket there, credentials accepted); raises a
    DomainError with the reason, never the secret."""
    store = blob_store(settings)
    check = getattr(store, "check_reachable", None)
    if check is not None:
        check()
    return store
