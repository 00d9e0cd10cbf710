"""The split job: read the dataset as columns, assign by the rules, write the version in chunks."""

from __future__ import annotations

from typing import Any

from app.jobs.context import JobContext, TaskError
from app.jobs.registry import task
from app.ml.splitting import compute_split, extend_split
from app.splits import service
from app.splits.input_store import SplitInputStore
from app.splits.logic import params_from_dict
from app.splits.states import SplitStatus
from app.storage.backends import blob_store


@task(service.SPLIT_JOB)
def build_split(ctx: JobContext) -> dict[str, Any]:
    split_id = int(ctx.payload["split_id"])
    # Progress is reported between transactions, never inside one: on SQLite a second writer would wait.
    with ctx.transaction() as session:
        split = service.begin_build(session, split_id=split_id)
        if split.status == SplitStatus.READY:
            return {"split_id": split_id, "already_built": True}
        params = params_from_dict(split.params)
        dataset_id, parent_id = split.dataset_id, split.parent_id
    ctx.progress(0.05, "reading the dataset")
    with ctx.reading() as session:
        data = service.split_input(
            session,
            dataset_id=dataset_id,
            params=params,
            blobs=blob_store(ctx.settings),
            store=SplitInputStore(ctx.settings.split_input_dir),
        )
        previous = service.previous_assignment(session, split_id=parent_id) if parent_id else None
    if data.image_ids.size == 0:
        with ctx.transaction() as session:
            service.fail_build(session, split_id=split_id)
        raise TaskError("the dataset has no images to split")
    ctx.progress(0.3, f"assigning {data.image_ids.size:,} images")
    result = extend_split(data, previous, params) if previous is not None else compute_split(data, params)
    total = result.image_ids.size
    chunk = max(1, ctx.settings.split_write_rows)
    for start in range(0, total, chunk):
        ctx.progress(0.4 + 0.55 * start / total, f"writing assignments {start:,} of {total:,}")
        stop = start + chunk
        with ctx.transaction() as session:
            service.write_assignments(
                session,
                split_id=split_id,
                image_ids=result.image_ids[start:stop],
                subsets=result.subsets[start:stop],
                positions=result.positions[start:stop],
            )
    with ctx.transaction() as session:
        service.finish_build(session, split_id=split_id, summary=result.summary)
    ctx.progress(1.0, "split ready")
    return {"split_id": split_id, "images": int(total), "new": int(result.newly_assigned.sum())}
