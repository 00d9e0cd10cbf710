"""Embedding index at scale: build time and peak RSS, recall@10 against exact search, and similar-images latency
over HTTP from 20 clients on SQLite and Postgres, with a bare endpoint's latency from the same run beside it.

    python bench/embeddings.py                                    # 1,000,000 vectors, both backends
    python bench/embeddings.py --vectors 100000 --backends sqlite --seconds 10
    python bench/embeddings.py --extract 64                       # also real extraction on 64 demo pictures
    python bench/embeddings.py --reuse DIR                        # queries only, on a store an earlier run kept

Generated vectors (2,000 clusters with isotropic noise, unit length, the backbone's 1280 dimensions) go through the
app's own store (app/embeddings/store.py): float16 rows on disk, PCA to 128 dimensions fitted on a sample, a usearch
HNSW index over those, exact re-ranking of its candidates with the stored rows. The index is built in a child
process (the job's `refresh_index`), so its peak RSS is that of the building process alone. Recall@10 compares the
store's answers with a brute-force search over all 1280 dimensions, for `--queries` query rows.

Then, per backend, a fresh database (a new SQLite file; a new schema on Postgres, dropped afterwards) gets as many
image rows as vectors and a ready embedding set pointing at the store, and a real ``errorbook serve --no-worker``
answers `--clients` concurrent clients that alternate `GET /api/images/{random}/similar?k=20` with `GET /api/me`
(auth only: the floor that shows what the machine's load and queueing alone cost), pausing `--think` seconds on
average between requests, like bench/health.py and bench/pages.py.

Issue 16 goals at 1M: peak RSS < 2 GB, similar-images p95 < 50 ms with 20 clients, recall@10 >= 0.95.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from statistics import median, quantiles

import httpx
import numpy as np
from sqlalchemy import create_engine, text
from sqlalchemy.orm import Session

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from health import build as build_images  # noqa: E402
from pages import POSTGRES_URL, load, serving, single_client  # noqa: E402

from app.core.db import make_engine  # noqa: E402
from app.core.migrate import upgrade_to_head  # noqa: E402
from app.core.settings import normalise_database_url  # noqa: E402
from app.embeddings.states import EmbeddingSetStatus  # noqa: E402
from app.embeddings.store import EmbeddingStore  # noqa: E402
from app.ml.backbone_choices import DEFAULT_BACKBONE  # noqa: E402
from app.ml.similarity import exact_top_k, recall_at_k, unit_rows  # noqa: E402
from app.models import EmbeddingSet  # noqa: E402

CHUNK = 8_192  # small, so generating does not dominate the memory
DATASET = 1  # the store's folder; each database's dataset is linked to it


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def store_at(root: Path, vectors: int) -> EmbeddingStore:
    return EmbeddingStore(root, dataset_id=DATASET, backbone=DEFAULT_BACKBONE, exact_limit=min(50_000, vectors - 1))


def generate(store: EmbeddingStore, count: int, dims: int, seed: int = 0) -> None:
    """Clustered unit vectors for image ids 1..count, written chunk by chunk (never all in memory)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((2_000, dims)).astype(np.float32)
    for start in range(0, count, CHUNK):
        size = min(CHUNK, count - start)
        rows = centres[rng.integers(0, centres.shape[0], size=size)]
        rows += 0.6 * rng.standard_normal((size, dims), dtype=np.float32)
        store.append(np.arange(1 + start, 1 + start + size), unit_rows(rows))


def build_index(root: Path, vectors: int) -> None:
    """The child process: the job's index step alone; prints its time and this process's peak RSS as JSON."""
    store = store_at(root, vectors)
    started = time.perf_counter()
    added = store.refresh_index()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    print(
        json.dumps(
            {
                "added": added,
                "seconds": time.perf_counter() - started,
                "cpu_seconds": usage.ru_utime + usage.ru_stime,  # the figure the machine's other load moves least
                "peak_rss_mb": peak_rss_mb(),
            }
        )
    )


def recall(store: EmbeddingStore, queries: np.ndarray) -> tuple[float, float]:
    """(recall@10 of the store's search against brute force over all dimensions, ms per brute-force query)."""
    vectors = store.vectors()
    ids = store.ids()

    def exact(position: int) -> np.ndarray:
        return ids[exact_top_k(vectors, vectors[position], 10, exclude=int(position)).positions]

    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        truth = list(pool.map(exact, queries))
    exact_ms = (time.perf_counter() - started) / len(queries) * 1000 * (os.cpu_count() or 2)
    found = [store.search(np.asarray(vectors[q], dtype=np.float32), 10, exclude_id=int(ids[q]))[0] for q in queries]
    return recall_at_k(found, truth), exact_ms


def measure(backend: str, url: str, args: argparse.Namespace, data_dir: Path, store: EmbeddingStore) -> list[str]:
    engine = make_engine(url)
    upgrade_to_head(engine)
    started = time.perf_counter()
    dataset_id, token = build_images(engine, images=args.vectors, statistics=False)
    with Session(engine) as session:
        session.add(
            EmbeddingSet(
                dataset_id=dataset_id,
                backbone=DEFAULT_BACKBONE,
                status=EmbeddingSetStatus.READY,
                count=store.count(),
                dims=store.dims(),
                index_kind=store.index_kind,
            )
        )
        session.commit()
    engine.dispose()
    (data_dir / "embeddings").mkdir()
    (data_dir / "embeddings" / f"dataset-{dataset_id}").symlink_to(store.root.parent)
    lines = [f"{backend}: {args.vectors:,} image rows inserted in {time.perf_counter() - started:.0f} s"]
    picks = np.random.default_rng(2).integers(1, args.vectors + 1, size=2_000)
    endpoints: dict[str, str | list[str]] = {
        "similar k=20": [f"/api/images/{int(i)}/similar?k=20" for i in picks],
        "/api/me (floor)": "/api/me",
    }
    with serving(url, data_dir) as base:
        headers = {"authorization": f"Bearer {token}"}
        with httpx.Client(base_url=base, headers=headers, timeout=120) as client:
            started = time.perf_counter()
            client.get(f"/api/images/{int(picks[0])}/similar?k=20").raise_for_status()
            lines.append(
                f"  first similar request in the process (opens the store): {time.perf_counter() - started:.2f} s"
            )
            answer = client.get(f"/api/images/{int(picks[1])}/similar?k=20").json()["items"]
            assert len(answer) == 20 and answer[0]["label"], answer[:2]
            one = {"similar k=20": f"/api/images/{int(picks[2])}/similar?k=20", "/api/me (floor)": "/api/me"}
            lines += single_client(client, one, requests=args.single)
        seen = asyncio.run(load(base, token, endpoints, clients=args.clients, seconds=args.seconds, think=args.think))
    floor = quantiles(seen["/api/me (floor)"], n=100, method="inclusive")[94]
    lines.append(
        f"  {args.clients} clients x {args.seconds:.0f} s, think {args.think * 1000:.0f} ms (random query images)"
    )
    lines.append(f"  {'endpoint':<18}{'n':>7}{'p50 ms':>9}{'p95 ms':>9}{'p95 / floor':>13}")
    for name, samples in seen.items():
        p95 = quantiles(samples, n=100, method="inclusive")[94]
        lines.append(
            f"  {name:<18}{len(samples):>7}{1000 * median(samples):>9.1f}{1000 * p95:>9.1f}{p95 / floor:>13.2f}"
        )
    return lines


def extraction_rate(count: int) -> float:
    """Images per second through the pretrained backbone (cold feature cache)."""
    from app.ml.backbones import load_backbone
    from app.ml.demo import generate_demo_dataset
    from app.ml.features import extract_features

    with tempfile.TemporaryDirectory() as folder:
        paths = []
        for index, item in enumerate(generate_demo_dataset(n_images=count)):
            path = Path(folder) / f"{index}.jpg"
            path.write_bytes(item.jpeg)
            paths.append(path)
        backbone = load_backbone("efficientnet_lite0")
        started = time.perf_counter()
        extract_features(backbone=backbone, image_paths=paths, cache_dir=Path(folder) / "cache")
        return count / (time.perf_counter() - started)


def index_part(args: argparse.Namespace, folder: Path) -> tuple[list[str], EmbeddingStore]:
    if args.reuse is not None:  # a store (vectors and index) an earlier run left: measure its queries only
        store = store_at(args.reuse, args.vectors)
        return [f"reusing {store.count():,} vectors and their {store.index_kind} index from {args.reuse}"], store
    store = store_at(folder / "vectors", args.vectors)
    started = time.perf_counter()
    generate(store, args.vectors, args.dims)
    size_mib = (store.root / "vectors.f16").stat().st_size / 2**20
    lines = [f"generated {args.vectors:,} x {args.dims} float16 vectors in {time.perf_counter() - started:.0f} s"]
    lines.append(f"  on disk: {size_mib:,.0f} MiB")
    child = subprocess.run(
        [sys.executable, __file__, "--build-only", str(folder / "vectors"), "--vectors", str(args.vectors)],
        check=True,
        capture_output=True,
        text=True,
    )
    built = json.loads(child.stdout.strip().splitlines()[-1])
    index_path = store.root / "index.usearch"
    index_mib = index_path.stat().st_size / 2**20 if index_path.exists() else 0.0
    lines.append(
        f"index ({store.index_kind}) of {built['added']:,} vectors built in {built['seconds']:.0f} s wall, "
        f"{built['cpu_seconds']:.0f} s CPU, "
        f"peak RSS of the building process {built['peak_rss_mb']:,.0f} MB, {index_mib:,.0f} MiB on disk"
    )
    return lines, store


def recall_line(args: argparse.Namespace, store: EmbeddingStore) -> str:
    queries = np.random.default_rng(1).choice(args.vectors, size=min(args.queries, args.vectors), replace=False)
    found, exact_ms = recall(store, queries)
    return (
        f"recall@10 against brute force over {args.dims} dims, {queries.size} queries: {found:.3f} "
        f"(brute force {exact_ms:.0f} ms a query on one core)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vectors", type=int, default=1_000_000)
    parser.add_argument("--dims", type=int, default=1280)
    parser.add_argument("--queries", type=int, default=200, help="query rows for recall@10")
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--think", type=float, default=1.0, help="mean pause between a client's requests, s")
    parser.add_argument("--single", type=int, default=40, help="requests per endpoint in the one-client pass")
    parser.add_argument("--backends", default="sqlite,postgres")
    parser.add_argument("--extract", type=int, default=0)
    parser.add_argument("--dir", type=Path, default=None, help="where the store goes (default: a temp dir)")
    parser.add_argument(
        "--reuse", type=Path, default=None, help="an existing store's root: skip generating and building"
    )
    parser.add_argument("--build-only", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.build_only is not None:
        build_index(args.build_only, args.vectors)
        return
    report = [f"embedding index benchmark on {os.cpu_count()} CPUs; load average before: {os.getloadavg()[0]:.1f}"]
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        folder = Path(tmp)
        lines, store = index_part(args, folder)
        lines.append(recall_line(args, store))
        print("\n".join(report + lines), flush=True)
        report += lines
        if "sqlite" in args.backends:
            data_dir = folder / "sqlite"
            data_dir.mkdir()
            lines = measure("SQLite", f"sqlite:///{data_dir / 'errorbook.db'}", args, data_dir, store)
            print("\n".join(lines), flush=True)
            report += lines
        if "postgres" in args.backends:
            data_dir = folder / "postgres"
            data_dir.mkdir()
            schema = f"eb_bench_{uuid.uuid4().hex[:8]}"
            admin = create_engine(normalise_database_url(POSTGRES_URL), isolation_level="AUTOCOMMIT")
            try:
                with admin.connect() as connection:
                    connection.execute(text(f'CREATE SCHEMA "{schema}"'))
                url = normalise_database_url(POSTGRES_URL) + f"?options=-csearch_path%3D{schema}"
                lines = measure("Postgres", url, args, data_dir, store)
                print("\n".join(lines), flush=True)
                report += lines
            finally:
                with admin.connect() as connection:
                    connection.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
                admin.dispose()
    if args.extract:
        print(f"real extraction (efficientnet_lite0, cold cache): {extraction_rate(args.extract):.1f} images/s")
    print(f"load average after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
