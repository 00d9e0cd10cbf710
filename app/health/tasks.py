"""The data-health scan job: read and compute, then replace the findings in one transaction (whole or not at all)."""

from __future__ import annotations

from typing import Any

from app.health import service
from app.jobs.context import JobContext
from app.jobs.registry import task
from app.storage.backends import blob_store


@task(service.HEALTH_JOB)
def scan_health(ctx: JobContext) -> dict[str, Any]:
    dataset_id = int(ctx.payload["dataset_id"])
    try:
        ctx.progress(0.05, "reading image statistics, grouping duplicates, measuring embedding-space density")
        # Progress is reported between the units of work: on SQLite a report inside a write would wait on it.
        blobs = blob_store(ctx.settings)
        with ctx.reading() as session:
            findings = service.find_issues(session, dataset_id=dataset_id, blobs=blobs, embeddings_root=blobs.artefacts)
        ctx.progress(0.85, "storing the findings")
        with ctx.transaction() as session:
            scan = service.store_findings(session, findings=findings)
            counts = {entry["type"]: entry["count"] for entry in scan.summary}
            images = scan.image_count
    except Exception:
        with ctx.transaction() as session:
            service.fail_scan(session, dataset_id=dataset_id)
        raise
    ctx.progress(1.0, f"{images:,} images scanned")
    return {"dataset_id": dataset_id, "images": images, "issues": counts}
