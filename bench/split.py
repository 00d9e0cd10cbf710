"""Split figures on 1,000,000 image rows (no files): the split job and the preview, on SQLite and Postgres.

    python bench/split.py [--images 1000000]
Targets (issue 4): split job under 30 s and memory under 1 GB on each backend; preview under 3 s.
The rows are inserted directly, so the ingest job's last step (storing the split input) is run and timed here.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np
from sqlalchemy import create_engine, text
from sqlalchemy.orm import Session

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from app.core.db import make_engine  # noqa: E402
from app.core.migrate import upgrade_to_head  # noqa: E402
from app.core.settings import normalise_database_url  # noqa: E402
from app.jobs.service import DEFAULT_MAX_ATTEMPTS  # noqa: E402

POSTGRES_URL = os.environ.get("ERRORBOOK_BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")


def populate(url: str, images: int) -> int:
    """A dataset of `images` rows: 50 classes (skewed), 4 sources (one is the target), random dHashes."""
    engine = make_engine(url)
    upgrade_to_head(engine)
    rng = np.random.default_rng(0)
    with engine.begin() as conn:
        dataset_id = conn.execute(
            text(
                "INSERT INTO datasets (name, description, created_at) VALUES ('bench', '', CURRENT_TIMESTAMP) RETURNING id"
            )
        ).scalar_one()
        label_ids = [
            conn.execute(
                text(
                    "INSERT INTO labels (dataset_id, name, created_at) VALUES (:d, :n, CURRENT_TIMESTAMP) RETURNING id"
                ),
                {"d": dataset_id, "n": f"class_{k:02d}"},
            ).scalar_one()
            for k in range(50)
        ]
        weights = np.linspace(1, 10, 50)
        labels = rng.choice(label_ids, size=images, p=weights / weights.sum())
        sources = rng.choice(["web", "render", "scan", "phone"], size=images, p=[0.4, 0.3, 0.2, 0.1])
        phashes = rng.integers(-(2**63), 2**63 - 1, size=images, dtype=np.int64)
        inner = rng.integers(-(2**63), 2**63 - 1, size=images, dtype=np.int64)  # ingest stores both dHashes
        columns = "dataset_id, sha256, filename, source, label_id, label_version, width, height, format, phash, inner_phash, notes, created_at"
        if conn.dialect.name == "postgresql":
            buffer = io.StringIO()
            for i in range(images):
                buffer.write(
                    f"{dataset_id}\t{i:064x}\timg_{i}.jpg\t{sources[i]}\t{labels[i]}\t1\t64\t64\tJPEG\t{phashes[i]}\t{inner[i]}\t\t2026-01-01\n"
                )
            raw = conn.connection.dbapi_connection
            with raw.cursor() as cursor, cursor.copy(f"COPY images ({columns}) FROM STDIN") as copy:  # type: ignore[union-attr]
                copy.write(buffer.getvalue())
        else:
            conn.exec_driver_sql(
                f"INSERT INTO images ({columns}) VALUES (?, ?, ?, ?, ?, 1, 64, 64, 'JPEG', ?, ?, '', '2026-01-01')",
                [
                    (
                        dataset_id,
                        f"{i:064x}",
                        f"img_{i}.jpg",
                        sources[i],
                        int(labels[i]),
                        int(phashes[i]),
                        int(inner[i]),
                    )
                    for i in range(images)
                ],
            )
    engine.dispose()
    return int(dataset_id)


def measure(mode: str, url: str, dataset_id: int) -> None:
    """Child process (so every preview is a first call, with nothing cached in memory); prints one JSON line.

    cold: the preview with no stored split input (the first preview ever on rows that never went through an
    ingest). warm: what the end of an ingest job does, grouping near-duplicates into the store. first: the first
    preview in a new process with the store filled, then the split job (as a worker would run it).
    """
    from app.core.settings import get_settings
    from app.core.storage import LocalBlobStore
    from app.jobs import repository
    from app.jobs.runner import run_job
    from app.models import utcnow
    from app.splits import service
    from app.splits.input_store import SplitInputStore
    from app.splits.logic import params_from_dict

    engine = make_engine(url)
    store = SplitInputStore(get_settings().split_input_dir)
    blobs = LocalBlobStore(get_settings().blob_dir)  # the rows have no thumbnails: dHash is the only check
    params = params_from_dict({"seed": 0, "target_source": "phone"})
    result: dict[str, object] = {}
    with Session(engine) as session:
        start = time.perf_counter()
        if mode == "warm":
            service.warm_split_input(session, dataset_id=dataset_id, blobs=blobs, store=store)
            result["warm_s"] = time.perf_counter() - start
        else:
            preview = service.preview(
                session, dataset_id=dataset_id, params=params, blobs=blobs, store=store if mode == "first" else None
            )
            result["preview_s"] = time.perf_counter() - start
            result["preview_totals"] = {k: v["total"] for k, v in preview.counts.items()}
        if mode != "first":
            print(json.dumps(result | {"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
            return
        split, _job = service.create_split(
            session, dataset_id=dataset_id, params=params, user_id=None, max_attempts=DEFAULT_MAX_ATTEMPTS
        )
        split_id = split.id
        session.commit()
        claimed = repository.claim_next(session, worker_id="bench", queues=None, lease_seconds=600, now=utcnow())
        session.commit()
    assert claimed is not None
    # A worker's runner has no preview in memory: the job reads the store and the labels like a first preview.
    service._INPUT_CACHE.clear()
    start = time.perf_counter()
    run_job(
        job_id=claimed.id,
        kind=claimed.kind,
        payload=claimed.payload,
        attempt=1,
        token=claimed.lease_token,
        engine=engine,
        settings=get_settings(),
    )
    result["job_s"] = time.perf_counter() - start
    with Session(engine) as session:
        status, error = session.execute(text("SELECT status, error FROM jobs WHERE id = :i"), {"i": claimed.id}).one()
        counts = service.get_split(session, split_id=split_id).counts
    result |= {
        "status": status,
        "error": error,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "totals": {k: v["total"] for k, v in counts.items()},
    }
    print(json.dumps(result))


def _child(mode: str, url: str, dataset_id: int, data_dir: str) -> dict:
    env = os.environ | {"ERRORBOOK_DATA_DIR": data_dir}
    out = subprocess.run(
        [sys.executable, __file__, "--measure", mode, url, str(dataset_id)], capture_output=True, text=True, env=env
    )
    if out.returncode:
        raise SystemExit(f"{mode}: measuring failed:\n{out.stderr[-3000:]}")
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def run_backend(url: str, images: int) -> dict:
    start = time.perf_counter()
    dataset_id = populate(url, images)
    populate_s = time.perf_counter() - start
    with tempfile.TemporaryDirectory() as data_dir:
        cold = _child("cold", url, dataset_id, data_dir)
        warm = _child("warm", url, dataset_id, data_dir)
        first = _child("first", url, dataset_id, data_dir)
    return first | {
        "populate_s": populate_s,
        "cold_preview_s": cold["preview_s"],
        "cold_rss_mb": cold["peak_rss_mb"],
        "warm_s": warm["warm_s"],
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=1_000_000)
    parser.add_argument("--measure", nargs=3)
    args = parser.parse_args()
    if args.measure:
        measure(args.measure[0], args.measure[1], int(args.measure[2]))
        return
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        results["SQLite"] = run_backend(f"sqlite:///{tmp}/bench.db", args.images)
    schema = f"eb_bench_{uuid.uuid4().hex[:8]}"
    admin = create_engine(normalise_database_url(POSTGRES_URL), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    try:
        url = normalise_database_url(POSTGRES_URL) + f"?options=-csearch_path%3D{schema}"
        results["Postgres"] = run_backend(url, args.images)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
    print(
        f"split benchmark: {args.images:,} image rows, 50 classes, 4 sources (target 'phone' 10%), {os.cpu_count()} CPUs"
    )
    print(
        f"{'backend':<10}{'preview s':>10}{'cold preview s':>15}{'ingest warm-up s':>17}{'split job s':>12}"
        f"{'peak RSS MB':>12}  status   subsets"
    )
    for name, r in results.items():
        print(
            f"{name:<10}{r['preview_s']:>10.2f}{r['cold_preview_s']:>15.2f}{r['warm_s']:>17.2f}{r['job_s']:>12.2f}"
            f"{max(r['peak_rss_mb'], r['cold_rss_mb']):>12.0f}  {r['status']:<8} {r['totals']}"
        )
    print(
        "preview: the first preview in a new process after an ingest (the ingest job ends by storing the columns "
        "only new images change); cold preview: rows that never went through an ingest, nothing stored"
    )


if __name__ == "__main__":
    main()
