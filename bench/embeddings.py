"""Embedding index figures: build time, peak memory, query latency and recall@10 against exact search.

    python bench/embeddings.py [--vectors 1000000] [--dims 1280] [--queries 200] [--clients 20] [--extract 64]

Generated vectors (clustered, unit length, the backbone's 1280 dimensions) go through the app's own store
(app/embeddings/store.py): float16 rows on disk, PCA to 128 dimensions, a usearch HNSW index, exact re-ranking of
its candidates. Queries run from `--clients` threads at once (the store's search, no HTTP). Recall@10 compares with
exact search over all dimensions. `--extract N` also times real extraction with the pretrained backbone on N demo
pictures. Issue 16 goals: peak RSS < 2 GB, query p95 < 50 ms, recall@10 >= 0.95.
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from app.embeddings.store import EmbeddingStore  # noqa: E402
from app.ml.similarity import exact_top_k, recall_at_k, unit_rows  # noqa: E402

CHUNK = 8_192  # small, so generating does not dominate the peak RSS


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def generate(store: EmbeddingStore, count: int, dims: int, seed: int = 0) -> None:
    """Clustered unit vectors written chunk by chunk (never all in memory)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((2_000, dims)).astype(np.float32)
    for start in range(0, count, CHUNK):
        size = min(CHUNK, count - start)
        rows = centres[rng.integers(0, centres.shape[0], size=size)]
        rows += 0.6 * rng.standard_normal((size, dims), dtype=np.float32)
        store.append(np.arange(start, start + size), unit_rows(rows))


def extraction_rate(count: int) -> float:
    """Images per second through the pretrained backbone (cold feature cache)."""
    import io

    from app.ml.backbones import load_backbone
    from app.ml.demo import generate_demo_dataset
    from app.ml.features import extract_features

    with tempfile.TemporaryDirectory() as folder:
        paths = []
        for index, item in enumerate(generate_demo_dataset(n_images=count)):
            path = Path(folder) / f"{index}.jpg"
            path.write_bytes(io.BytesIO(item.jpeg).getvalue())
            paths.append(path)
        backbone = load_backbone("efficientnet_lite0")
        started = time.perf_counter()
        extract_features(backbone=backbone, image_paths=paths, cache_dir=Path(folder) / "cache")
        return count / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--vectors", type=int, default=1_000_000)
    parser.add_argument("--dims", type=int, default=1280)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--extract", type=int, default=0)
    parser.add_argument("--dir", type=Path, default=None, help="where the store goes (default: a temp dir)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(dir=args.dir) as folder:
        store = EmbeddingStore(Path(folder), dataset_id=1, backbone="bench", exact_limit=min(50_000, args.vectors - 1))
        started = time.perf_counter()
        generate(store, args.vectors, args.dims)
        print(f"generated {args.vectors:,} x {args.dims} float16 vectors in {time.perf_counter() - started:.1f} s")
        print(
            f"  on disk: {(store.root / 'vectors.f16').stat().st_size / 2**20:,.0f} MiB, peak RSS {peak_rss_mb():,.0f} MB"
        )

        started = time.perf_counter()
        added = store.refresh_index()
        build_s = time.perf_counter() - started
        index_mb = (store.root / "index.usearch").stat().st_size / 2**20
        print(f"index ({store.index_kind}) of {added:,} vectors built in {build_s:.1f} s, {index_mb:,.0f} MiB on disk")
        print(f"  peak RSS so far {peak_rss_mb():,.0f} MB (file-backed vector pages count too)")

        vectors = store.vectors()
        queries = np.random.default_rng(1).choice(args.vectors, size=args.queries, replace=False)

        def one(query: int) -> tuple[float, np.ndarray]:
            began = time.perf_counter()
            ids, _ = store.search(np.asarray(vectors[query], dtype=np.float32), 10, exclude_id=int(query))
            return time.perf_counter() - began, ids

        with ThreadPoolExecutor(max_workers=args.clients) as pool:
            list(pool.map(one, queries[:10]))  # warm the page cache and the index view
            answers = list(pool.map(one, queries))
        latencies = np.asarray([seconds for seconds, _ in answers]) * 1000
        print(
            f"queries from {args.clients} threads: p50 {np.percentile(latencies, 50):.1f} ms, "
            f"p95 {np.percentile(latencies, 95):.1f} ms"
        )

        started = time.perf_counter()
        exact = [exact_top_k(vectors, vectors[q], 10, exclude=int(q)).positions for q in queries[:50]]
        exact_ms = (time.perf_counter() - started) / len(exact) * 1000
        recall = recall_at_k([ids for _, ids in answers[:50]], exact)
        print(f"recall@10 against exact search: {recall:.3f} (exact search: {exact_ms:.0f} ms a query)")
        print(f"peak RSS {peak_rss_mb():,.0f} MB")
    if args.extract:
        print(f"real extraction (efficientnet_lite0, cold cache): {extraction_rate(args.extract):.1f} images/s")


if __name__ == "__main__":
    main()
