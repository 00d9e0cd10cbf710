"""Sharded feature extraction (issue 18): a linear run over more than ERRORBOOK_EXTRACT_SHARD_SIZE images extracts
its frozen-backbone features in shard jobs that any worker takes, then trains its head when every shard is in.

Each shard is the features of a contiguous slice of one subset, computed by exactly the code an unsharded run
uses (`extract_features` with the run's backbone, seed and runtime, verified on the same probe images), and
stored as one float32 .npy object ([views, images, features]) in the blob store under its content digest; its
job_shards row names the object. The parent reads the objects in shard order, so the features, and everything
trained on them, are the same whichever worker or host did each shard. The per-host feature cache only saves
work inside a shard; no result depends on it.
"""

from __future__ import annotations

import io
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import select

from app.core.storage import BlobStore, delete_blobs, read_blob
from app.jobs import shards
from app.jobs.context import JobCancelled, JobContext, RetryLater, TaskError
from app.jobs.registry import task
from app.jobs.repository import LeaseLost
from app.models import Job, utcnow
from app.storage.backends import blob_store

FEATURE_SHARD_JOB = "features.shard"
# The part of a run's progress bar extraction fills (the same span an unsharded run's extraction reports in).
RUN_EXTRACTION_SPAN = (0.05, 0.55)


@dataclass(frozen=True)
class FeatureSource:
    """What every shard needs to compute the features the parent would: the backbone and the runtime's probe."""

    backbone: str
    seed: int
    probe_shas: list[str]

    def payload(self) -> dict[str, Any]:
        return {"backbone": self.backbone, "seed": self.seed, "probe_shas": list(self.probe_shas)}


@dataclass
class Gathered:
    """The shards' features per subset, in the parent's image order, and what the run's timings say of them."""

    features: dict[str, np.ndarray] = field(default_factory=dict)
    flipped: dict[str, np.ndarray] = field(default_factory=dict)
    timings: dict[str, Any] = field(default_factory=dict)


def should_shard(*, images: int, shard_size: int, mode: str, backbone: str) -> bool:
    """Linear runs on a registry backbone shard (a run:<id> backbone lives in that run's files on one host)."""
    return shard_size > 0 and images > shard_size and mode == "linear" and not backbone.startswith("run:")


def plan(
    subsets: Mapping[str, Sequence[str]],
    *,
    size: int,
    source: FeatureSource,
    flipped: set[str],
    span: tuple[float, float],
) -> list[shards.ShardSpec]:
    """Contiguous slices of `size` images per subset, in the order given (the parent reads them back in it)."""
    specs = []
    for subset, shas in subsets.items():
        for start in range(0, len(shas), size):
            chunk = list(shas[start : start + size])
            payload = {
                **source.payload(),
                "subset": subset,
                "shas": chunk,
                "include_flipped": subset in flipped,
                "span": list(span),
            }
            specs.append(shards.ShardSpec(payload=payload, items=len(chunk)))
    return specs


def features_in_shards(ctx: JobContext, *, subsets: dict[str, list[str]], config: dict[str, Any]) -> Gathered | None:
    """A run's features: None when it extracts in one piece, else the shards' (see `sharded_features`)."""
    from app.training.inference import PROBE_IMAGES

    size = ctx.settings.extract_shard_size
    total = sum(len(shas) for shas in subsets.values())
    if not should_shard(images=total, shard_size=size, mode=str(config["mode"]), backbone=str(config["backbone"])):
        return None
    # The same probe images the parent verifies its runtime on, so every shard runs the backbone the same way.
    source = FeatureSource(str(config["backbone"]), int(config["seed"]), subsets["train"][:PROBE_IMAGES])
    return sharded_features(ctx, subsets=subsets, source=source, flipped={"train"}, span=RUN_EXTRACTION_SPAN)


def sharded_features(
    ctx: JobContext,
    *,
    subsets: Mapping[str, Sequence[str]],
    source: FeatureSource,
    flipped: set[str],
    span: tuple[float, float],
) -> Gathered:
    """The shards' features once every shard is in. Before that, queue the shards (or, woken early, wait on the
    ones queued) and end this attempt as waiting (raises JobWaiting)."""
    with ctx.reading() as session:
        progress = shards.progress_of(session, ctx.job_id, now=utcnow())
    if progress is not None and progress.done == progress.total:
        return gather(ctx, subsets)
    specs = plan(subsets, size=ctx.settings.extract_shard_size, source=source, flipped=flipped, span=span)
    total = sum(len(shas) for shas in subsets.values())
    ctx.wait_for_shards(
        kind=FEATURE_SHARD_JOB,
        specs=specs,
        queue=ctx.settings.training_queue,
        message=f"extracting features of {total:,} images in {len(specs)} shards",
    )


@dataclass(frozen=True)
class _Done:
    position: int
    result_sha256: str | None
    subset: str
    shas: list[str]
    extracted: int
    created_at: datetime
    finished_at: datetime | None


def _done_shards(ctx: JobContext) -> list[_Done]:
    with ctx.reading() as session:
        rows = shards.shards_of(session, ctx.job_id)
        jobs = {job.id: job for job in session.scalars(select(Job).where(Job.id.in_([r.job_id for r in rows])))}
        return [
            _Done(
                position=row.position,
                result_sha256=row.result_sha256,
                subset=str(jobs[row.job_id].payload["subset"]),
                shas=list(jobs[row.job_id].payload["shas"]),
                extracted=int((jobs[row.job_id].result or {}).get("extracted", 0)),
                created_at=row.created_at,
                finished_at=row.finished_at,
            )
            for row in rows
        ]


def gather(ctx: JobContext, subsets: Mapping[str, Sequence[str]]) -> Gathered:
    """Read every shard's features back and join them per subset (every shard must be done)."""
    blobs = blob_store(ctx.settings)
    rows = _done_shards(ctx)
    parts: dict[str, list[np.ndarray]] = {}
    planned: dict[str, list[str]] = {}
    gathered = Gathered()
    for row in rows:
        planned.setdefault(row.subset, []).extend(row.shas)
        if row.result_sha256 is None:
            raise TaskError(f"shard {row.position + 1} of {len(rows)} has no features recorded")
        parts.setdefault(row.subset, []).append(_read(blobs, row.result_sha256, row.position))
        key = f"extracted_{row.subset}"
        gathered.timings[key] = gathered.timings.get(key, 0) + row.extracted
    for subset, shas in subsets.items():
        if planned.get(subset) != list(shas):
            raise TaskError(f"the images of {subset} changed after its shards were queued; start it again")
        views = np.concatenate(parts[subset], axis=1)
        gathered.features[subset] = views[0]
        if views.shape[0] > 1:
            gathered.flipped[subset] = views[1]
    first, last = min(r.created_at for r in rows), max(r.finished_at or r.created_at for r in rows)
    gathered.timings.update(features_s=(last - first).total_seconds(), shards=len(rows))
    return gathered


def _read(blobs: BlobStore, sha256: str, position: int) -> np.ndarray:
    try:
        with np.load(io.BytesIO(read_blob(blobs, sha256)), allow_pickle=False) as stored:
            return np.asarray(stored["features"])
    except (OSError, ValueError, KeyError) as error:
        message = f"the features of shard {position + 1} could not be read from the blob store: {error}"
        raise TaskError(message) from error


def encode(views: Sequence[np.ndarray], *, parent_job_id: int) -> bytes:
    """The shard's views as one float32 array, stored with its parent's id: two runs over the same images would
    otherwise store the same bytes under one digest, and one run releasing its shards would take the other's."""
    buffer = io.BytesIO()
    features = np.ascontiguousarray(np.stack(views), dtype=np.float32)
    np.savez(buffer, features=features, parent_job_id=np.array([parent_job_id], dtype=np.int64))
    return buffer.getvalue()


def release_results(ctx: JobContext) -> None:
    """Delete this parent's shard objects once what was made from them is recorded: only it reads them (their
    bytes carry its id), and left behind they would be orphans until the garbage collector's grace ran out."""
    with ctx.reading() as session:
        results = {row.result_sha256 for row in shards.shards_of(session, ctx.job_id) if row.result_sha256}
    delete_blobs(blob_store(ctx.settings), results)


# -- the shard job ------------------------------------------------------------------------------------------------


def _load_backbone(payload: dict[str, Any]) -> Any:
    from app.ml import backbones as bb

    torch_home = Path(os.environ["TORCH_HOME"]) if os.environ.get("TORCH_HOME") else None
    return bb.load_backbone(str(payload["backbone"]), torch_home=torch_home, seed=int(payload["seed"]))


# The runner process keeps the last shard's backbone and verified runtime: the next shard of the same run (the
# usual case) skips loading the weights and building and verifying the ONNX session again.
_prepared: dict[tuple[Any, ...], tuple[Any, Any]] = {}


def _backbone_and_runtime(ctx: JobContext, payload: dict[str, Any]) -> tuple[Any, Any]:
    from app.training import inference

    settings = ctx.settings
    key: tuple[Any, ...] = (payload["backbone"], payload["seed"], tuple(payload["probe_shas"]))
    key += (settings.inference_runtime, settings.feature_precision, str(settings.onnx_cache_dir))
    key += (os.environ.get("TORCH_HOME"),)
    if key in _prepared:
        return _prepared[key]
    _prepared.clear()  # one backbone per runner at a time
    ctx.progress(0.02, "loading the backbone")
    backbone = _load_backbone(payload)
    blobs = blob_store(settings)
    probe_paths = [blobs.path(sha) for sha in payload["probe_shas"]]
    probe = inference.probe_images(probe_paths, backbone.input_spec.preprocessing)
    prepared = (backbone, inference.scoring_runtime(settings, "linear", backbone, probe=probe))
    if len(probe_paths) == (0 if probe is None else len(probe)):  # kept only when verified on the whole probe
        _prepared[key] = prepared
    return prepared


def _extract(ctx: JobContext, payload: dict[str, Any]) -> tuple[bytes, int]:
    """The shard's features, encoded, and how many went through the backbone (the rest came from the cache)."""
    import torch

    from app.ml import features as feats

    torch.set_num_threads(ctx.settings.torch_threads)
    backbone, runtime = _backbone_and_runtime(ctx, payload)
    blobs = blob_store(ctx.settings)
    shas = list(payload["shas"])
    result = feats.extract_features(
        backbone=backbone,
        image_paths=[blobs.path(sha) for sha in shas],
        image_sha256s=shas,
        cache_dir=ctx.settings.cache_dir / "features",
        include_flipped=bool(payload["include_flipped"]),
        progress=lambda fraction, message: ctx.progress(0.05 + 0.9 * fraction, message),
        should_stop=ctx.should_stop,
        precision=ctx.settings.feature_precision,
        runtime=runtime,
    )
    views = [result.features] + ([result.flipped_features] if result.flipped_features is not None else [])
    return encode(views, parent_job_id=int(payload["parent_job_id"])), result.extracted


@task(FEATURE_SHARD_JOB)
def extract_shard(ctx: JobContext) -> dict[str, Any]:
    """Extract one shard's features, store them as an object, record it (the last shard queues the parent)."""
    from app.ml.features import TrainingCancelled

    started = time.perf_counter()
    payload = ctx.payload
    try:
        data, extracted = _extract(ctx, payload)
        sha = blob_store(ctx.settings).put_bytes(data)  # stored before the row names it
    except (JobCancelled, LeaseLost):
        raise
    except TrainingCancelled as cancelled:
        raise JobCancelled(str(cancelled)) from cancelled
    except Exception as error:  # noqa: BLE001 - a shard is pure and repeatable: any failure earns another attempt
        raise RetryLater(f"shard {int(payload['shard']) + 1}: {type(error).__name__}: {error}") from error
    low, high = payload["span"]
    with ctx.transaction() as session:
        shards.complete_shard(
            session, job_id=ctx.job_id, result_sha256=sha, noun="images", span=(low, high), now=utcnow()
        )
    seconds = time.perf_counter() - started
    images = len(payload["shas"])
    ctx.progress(1.0, f"{images} images in {seconds:.1f} s ({images / max(seconds, 1e-9):.1f} images/s)")
    return {"images": images, "extracted": extracted, "seconds": round(seconds, 3), "features_sha256": sha}
