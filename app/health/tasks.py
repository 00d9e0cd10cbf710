"""The data-health scan job: one transaction, so the findings are replaced whole or not at all."""

from __future__ import annotations

from typing import Any

from app.core.storage import LocalBlobStore
from app.health import service
from app.jobs.context import JobContext
from app.jobs.registry import task


@task(service.HEALTH_JOB)
def scan_health(ctx: JobContext) -> dict[str, Any]:
    dataset_id = int(ctx.payload["dataset_id"])
    try:
        with ctx.transaction() as session:
            scan = service.scan_dataset(
                session,
                dataset_id=dataset_id,
                blobs=LocalBlobStore(ctx.settings.blob_dir),
                embeddings_root=ctx.settings.embeddings_dir,
                progress=ctx.progress,
            )
            counts = {entry["type"]: entry["count"] for entry in scan.summary}
            images = scan.image_count
    except Exception:
        with ctx.transaction() as session:
            service.fail_scan(session, dataset_id=dataset_id)
        raise
    ctx.progress(1.0, f"{images:,} images scanned")
    return {"dataset_id": dataset_id, "images": images, "issues": counts}
