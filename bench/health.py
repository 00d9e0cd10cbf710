"""Data health at scale: the scan's cost, then the health page's latency with 20 clients, SQLite and Postgres.

A dataset of `--images` generated rows (default 1,000,000) is bulk-inserted with per-image statistics for 95% of
them (the rest unmeasured), a few per cent dark, light, blurry, grey, oddly shaped or sized, random dHashes with
a share of near-duplicate pairs, and labels that disagree inside some of those pairs. The scan (the job's code:
`find_issues` then `store_findings`) runs in this process and is timed. Then a real ``errorbook serve
--no-worker`` answers 20 concurrent clients (bench/pages.py's load loop) on the health API, the dataset page's
health panel and the grid's issue filter; `/api/me` is the same-run floor (auth only) the others are compared to.

    python bench/health.py                                   # both backends, 1M images
    python bench/health.py --backends sqlite --images 100000 --seconds 10

Issue 16 goal: data-health page p95 < 100 ms at a million images.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx
import numpy as np
from sqlalchemy import Engine, create_engine, insert, text
from sqlalchemy.orm import Session

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from pages import POSTGRES_URL, load, serving, single_client  # noqa: E402

from app.auth import service as auth_service  # noqa: E402
from app.core.db import make_engine  # noqa: E402
from app.core.migrate import upgrade_to_head  # noqa: E402
from app.core.settings import normalise_database_url  # noqa: E402
from app.core.storage import LocalBlobStore  # noqa: E402
from app.health import service as health  # noqa: E402
from app.models import Dataset, Image, ImageStat, Label, utcnow  # noqa: E402

LABELS = 10
BATCH = 20_000
MEASURED = 0.95
ODD_SHARE = 0.01  # of each statistics issue
NEAR_PAIRS = 0.005  # of the images get a near-duplicate partner (same dHash)


def build(engine: Engine, *, images: int, seed: int = 0, statistics: bool = True) -> tuple[int, str]:
    """Bulk-insert the dataset (image ids 1..images) and its statistics (core executemany); returns (dataset id,
    API token)."""
    rng = np.random.default_rng(seed)
    now = utcnow()
    with Session(engine) as session:
        dataset = Dataset(name=f"bench-{uuid.uuid4().hex[:6]}")
        session.add(dataset)
        session.flush()
        labels = [Label(dataset_id=dataset.id, name=f"class-{i}") for i in range(LABELS)]
        session.add_all(labels)
        session.flush()
        label_ids = np.array([label.id for label in labels])
        label_of = label_ids[rng.integers(LABELS, size=images)]
        phash = rng.integers(-(2**63), 2**63 - 1, size=images, dtype=np.int64)
        partner = rng.choice(images, size=int(images * NEAR_PAIRS) * 2, replace=False).reshape(-1, 2)
        phash[partner[:, 1]] = phash[partner[:, 0]]
        width = np.full(images, 256)
        height = np.full(images, 256)
        odd = rng.random(images)
        width[odd < ODD_SHARE] = 1024  # 4:1
        height[(odd >= ODD_SHARE) & (odd < 2 * ODD_SHARE)] = 2  # a sliver: odd size and aspect ratio
        for start in range(0, images, BATCH):
            stop = min(images, start + BATCH)
            session.execute(
                insert(Image),
                [
                    {
                        "id": 1 + i,
                        "dataset_id": dataset.id,
                        "sha256": hashlib.sha256(f"{dataset.id}-{i}".encode()).hexdigest(),
                        "filename": f"images/{i:07d}.jpg",
                        "source": "default",
                        "label_id": int(label_of[i]),
                        "label_version": 1,
                        "width": int(width[i]),
                        "height": int(height[i]),
                        "format": "JPEG",
                        "phash": int(phash[i]),
                        "notes": "",
                        "created_at": now,
                    }
                    for i in range(start, stop)
                ],
            )
        stats = _statistics(rng, images)
        measured = np.flatnonzero(rng.random(images) < MEASURED) if statistics else np.zeros(0, dtype=np.int64)
        for start in range(0, measured.size, BATCH):
            session.execute(
                insert(ImageStat),
                [
                    {"image_id": 1 + int(i), **{name: float(column[i]) for name, column in stats.items()}}
                    for i in measured[start : start + BATCH].tolist()
                ],
            )
        reviewer = auth_service.create_user(session, name=f"bench-{uuid.uuid4().hex[:6]}", role="reviewer")
        _, token = auth_service.create_token(session, user=reviewer, name="bench")
        session.commit()
        dataset_id = dataset.id
    if engine.dialect.name == "postgresql":
        with engine.connect() as connection:
            connection.execute(text("ANALYZE"))
            connection.commit()
    return dataset_id, token


def _statistics(rng: np.random.Generator, images: int) -> dict[str, np.ndarray]:
    stats = {
        "brightness": rng.uniform(0.3, 0.7, images),
        "contrast": rng.uniform(0.1, 0.3, images),
        "sharpness": rng.uniform(1e-3, 8e-3, images),
        "entropy": rng.uniform(3.0, 5.5, images),
        "colourfulness": rng.uniform(0.05, 0.4, images),
    }
    draw = rng.random(images)
    stats["brightness"][draw < ODD_SHARE] = 0.05
    stats["brightness"][(draw >= ODD_SHARE) & (draw < 2 * ODD_SHARE)] = 0.95
    stats["sharpness"][(draw >= 2 * ODD_SHARE) & (draw < 3 * ODD_SHARE)] = 3e-5
    stats["colourfulness"][(draw >= 3 * ODD_SHARE) & (draw < 4 * ODD_SHARE)] = 0.0
    stats["entropy"][(draw >= 4 * ODD_SHARE) & (draw < 5 * ODD_SHARE)] = 0.3
    return stats


def scan(engine: Engine, dataset_id: int, data_dir: Path) -> list[str]:
    """The job's work, timed in its two parts: find (reads) and store (one transaction)."""
    started = time.perf_counter()
    with Session(engine) as session:
        findings = health.find_issues(
            session,
            dataset_id=dataset_id,
            blobs=LocalBlobStore(data_dir / "blobs"),
            embeddings_root=data_dir / "embeddings",
        )
    found = time.perf_counter()
    with Session(engine) as session:
        stored = health.store_findings(session, findings=findings)
        counts = {entry["type"]: entry["count"] for entry in stored.summary}
        session.commit()
    done = time.perf_counter()
    rows = sum(counts.values())
    return [
        f"  scan: find {found - started:.1f} s, store {rows:,} findings {done - found:.1f} s",
        "  found: " + ", ".join(f"{name} {count:,}" for name, count in counts.items()),
    ]


def measure(backend: str, url: str, args: argparse.Namespace, data_dir: Path) -> list[str]:
    from statistics import median, quantiles

    engine = make_engine(url)
    upgrade_to_head(engine)
    started = time.perf_counter()
    dataset_id, token = build(engine, images=args.images)
    lines = [f"{backend}: built {args.images:,} images + statistics in {time.perf_counter() - started:.0f} s"]
    lines += scan(engine, dataset_id, data_dir)
    endpoints = {
        "health API": f"/api/datasets/{dataset_id}/health",
        "health panel": f"/datasets/{dataset_id}/health",
        "issue filter API": f"/api/datasets/{dataset_id}/images?issue=dark&limit=60",
        "/api/me (floor)": "/api/me",
    }
    with serving(url, data_dir) as base:
        headers = {"authorization": f"Bearer {token}"}
        with httpx.Client(base_url=base, headers=headers, timeout=60) as client:
            for path in endpoints.values():
                client.get(path).raise_for_status()
            lines += single_client(client, endpoints, requests=args.single)
        seen = asyncio.run(load(base, token, endpoints, clients=args.clients, seconds=args.seconds, think=args.think))
    floor = quantiles(seen["/api/me (floor)"], n=100, method="inclusive")[94]
    lines.append(f"  {args.clients} clients x {args.seconds:.0f} s, think {args.think * 1000:.0f} ms")
    lines.append(f"  {'endpoint':<18}{'n':>7}{'p50 ms':>9}{'p95 ms':>9}{'p95 / floor':>13}")
    for name, samples in seen.items():
        p95 = quantiles(samples, n=100, method="inclusive")[94]
        lines.append(
            f"  {name:<18}{len(samples):>7}{1000 * median(samples):>9.1f}{1000 * p95:>9.1f}{p95 / floor:>13.2f}"
        )
    engine.dispose()
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=1_000_000)
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--think", type=float, default=1.0, help="mean pause between a client's requests, s")
    parser.add_argument("--backends", default="sqlite,postgres")
    parser.add_argument("--single", type=int, default=40, help="requests per endpoint in the one-client pass")
    args = parser.parse_args()
    before = os.getloadavg()
    report = [f"data-health benchmark on {os.cpu_count()} CPUs; load average before: {before[0]:.1f}"]
    with tempfile.TemporaryDirectory() as tmp:
        if "sqlite" in args.backends:
            data_dir = Path(tmp) / "sqlite"
            data_dir.mkdir()
            report += measure("SQLite", f"sqlite:///{data_dir / 'errorbook.db'}", args, data_dir)
        if "postgres" in args.backends:
            data_dir = Path(tmp) / "postgres"
            data_dir.mkdir()
            schema = f"eb_bench_{uuid.uuid4().hex[:8]}"
            admin = create_engine(normalise_database_url(POSTGRES_URL), isolation_level="AUTOCOMMIT")
            try:
                with admin.connect() as connection:
                    connection.execute(text(f'CREATE SCHEMA "{schema}"'))
                url = normalise_database_url(POSTGRES_URL) + f"?options=-csearch_path%3D{schema}"
                report += measure("Postgres", url, args, data_dir)
            finally:
                with admin.connect() as connection:
                    connection.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
                admin.dispose()
    after = os.getloadavg()
    report.append(f"load average after: {after[0]:.1f}")
    print("\n".join(report))


if __name__ == "__main__":
    main()
