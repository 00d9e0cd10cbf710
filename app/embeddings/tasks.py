"""The embeddings job: embed the images the store lacks (reusing the feature cache), then refresh the index."""

from __future__ import annotations

from typing import Any

from app.embeddings import service
from app.embeddings.store import PUBLISH_ORDER, EmbeddingStore, MapStore, NeighbourStore, set_prefix
from app.jobs.context import JobContext, TaskError
from app.jobs.registry import task
from app.ml.similarity import unit_rows
from app.storage.backends import blob_store

# Vectors are appended after each chunk, so a killed job loses at most one chunk of work.
CHUNK_IMAGES = 512


@task(service.EMBEDDINGS_JOB)
def build_embeddings(ctx: JobContext) -> dict[str, Any]:
    set_id = int(ctx.payload["set_id"])
    with ctx.transaction() as session:
        embedding_set = service.begin_build(session, set_id=set_id)
        dataset_id, backbone_name = embedding_set.dataset_id, embedding_set.backbone
    # Built in a working copy (locally: the set's own folder; on an object store: this job's scratch, brought up to
    # date with the stored set), then published, then recorded: readers on every host see the set after that.
    artefacts = blob_store(ctx.settings).artefacts
    prefix = set_prefix(dataset_id, backbone_name)
    folder = artefacts.mirror(prefix, ctx.work_dir / "embeddings")
    store = EmbeddingStore.in_folder(folder)
    with ctx.reading() as session:
        todo = service.images_to_embed(session, dataset_id=dataset_id, stored_ids=store.ids())
    from app.ml.backbones import BackboneUnavailable  # torch: in job runners only
    from app.ml.features import TrainingCancelled
    from app.training.shards import release_results

    cache_hits = 0
    try:
        if todo:
            cache_hits = _embed(ctx, store, backbone_name, todo)
        ctx.progress(0.95, "updating the nearest-neighbour index")
        added_to_index = store.refresh_index()
        mapped = _refresh_map(ctx, store)
        ctx.progress(0.99, "finding each image's nearest neighbours")
        NeighbourStore(store).refresh()
        artefacts.publish(prefix, folder, order=PUBLISH_ORDER)
    except (BackboneUnavailable, TrainingCancelled, OSError) as error:
        with ctx.transaction() as session:
            service.fail_build(session, set_id=set_id)
        raise TaskError(str(error) or "embedding stopped") from error
    with ctx.transaction() as session:
        service.finish_build(
            session, set_id=set_id, count=store.count(), dims=store.dims(), index_kind=store.index_kind
        )
    release_results(ctx)  # shard features, when it sharded: the set now holds them
    ctx.progress(1.0, f"{store.count():,} images embedded")
    return {
        "set_id": set_id,
        "embedded": len(todo),
        "feature_cache_hits": cache_hits,
        "count": store.count(),
        "indexed": added_to_index,
        "mapped": mapped,
    }


def _refresh_map(ctx: JobContext, store: EmbeddingStore) -> int:
    """Lay the 2-D map out again when rows were added since the last one; returns the rows laid out (0: current)."""
    maps = MapStore(store)
    count = store.count()
    if count == 0 or maps.count() == count:
        return 0
    from app.ml.embedding_map import layout  # umap/numba: in job runners only

    ctx.progress(0.96, f"laying out the map of {count:,} images")
    # No seed: UMAP then uses every core the runner has (a seed pins it to one).
    xy = layout(store.vectors(), seed=None, progress=lambda done: ctx.progress(0.96 + 0.03 * done, "placing images"))
    maps.write(store.ids()[:count], xy)
    return count


def _embed(ctx: JobContext, store: EmbeddingStore, backbone_name: str, todo: list[tuple[int, str]]) -> int:
    """Embed `todo` chunk by chunk, appending each chunk as it is done; returns how many came from the cache."""
    if 0 < ctx.settings.extract_shard_size < len(todo):
        return _embed_in_shards(ctx, store, backbone_name, todo)
    import torch

    from app.ml.backbones import load_backbone
    from app.ml.features import extract_features
    from app.training.inference import worker_runtime

    ctx.progress(0.02, "loading the backbone")
    torch.set_num_threads(ctx.settings.torch_threads)
    backbone = load_backbone(backbone_name, torch_home=service.torch_home())
    # The same frozen-backbone path as a run's extraction (ONNX Runtime where verified), so the cache is shared.
    runtime = worker_runtime(ctx.settings, backbone)
    blobs = blob_store(ctx.settings)
    cache_dir = ctx.settings.cache_dir / "features"  # the same cache a run's extraction fills
    cache_hits = 0
    for start in range(0, len(todo), CHUNK_IMAGES):
        chunk = todo[start : start + CHUNK_IMAGES]
        ctx.progress(0.05 + 0.9 * start / len(todo), f"embedding images {start:,} of {len(todo):,}")
        result = extract_features(
            backbone=backbone,
            image_paths=[blobs.path(sha) for _, sha in chunk],
            image_sha256s=[sha for _, sha in chunk],
            cache_dir=cache_dir,
            should_stop=ctx.should_stop,
            precision=ctx.settings.feature_precision,
            runtime=runtime,
        )
        store.append([image_id for image_id, _ in chunk], unit_rows(result.features))
        cache_hits += result.cache_hits
    return cache_hits


def _embed_in_shards(ctx: JobContext, store: EmbeddingStore, backbone_name: str, todo: list[tuple[int, str]]) -> int:
    """More images than a shard: shard jobs extract them, any worker each (this attempt waits for them, see
    app/training/shards.py); once every shard is in, append them all in order. Returns the cache hits."""
    from app.training.shards import FeatureSource, sharded_features

    # seed 0 and no probe: what `_embed` loads and verifies, so sharded and unsharded vectors are the same.
    gathered = sharded_features(
        ctx,
        subsets={"images": [sha for _, sha in todo]},
        source=FeatureSource(backbone_name, 0, []),
        flipped=set(),
        span=(0.05, 0.9),
    )
    store.append([image_id for image_id, _ in todo], unit_rows(gathered.features["images"]))
    return len(todo) - int(gathered.timings.get("extracted_images", 0))
