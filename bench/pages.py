"""Error-analysis pages under load: p50/p95/p99 per endpoint with 20 concurrent clients, SQLite and Postgres.

A dataset of 1,000,000 images and a finished run whose dev subset has 10,000 predictions (10% errors) is written
with bulk inserts; 60 of the 100 sampled errors are tagged through the service. Then a real
``errorbook serve --no-worker`` answers 20 concurrent httpx clients for a fixed time.

    python bench/pages.py                                   # both backends, the full size
    python bench/pages.py --backends sqlite --images 100000 --seconds 10
    ERRORBOOK_BENCH_POSTGRES_URL=postgresql://postgres@127.0.0.1:5432/test python bench/pages.py

First one client sends requests one after another (what a request costs), then 20 clients at once.
``--think`` sets the mean pause between a client's requests to measure with (default 0 and 1 s): 0 keeps every
client busy, i.e. the server saturated by 20 callers at once; 1 s is closer to 20 people reviewing at the same time.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
from sqlalchemy import Engine, create_engine, insert, text
from sqlalchemy.orm import Session

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from app.auth import service as auth_service  # noqa: E402
from app.core.db import make_engine  # noqa: E402
from app.core.migrate import upgrade_to_head  # noqa: E402
from app.core.settings import normalise_database_url  # noqa: E402
from app.error_analysis import service as error_analysis  # noqa: E402
from app.models import Dataset, Image, Label, LabelChange, Prediction, Run, Split, User, utcnow  # noqa: E402

POSTGRES_URL = os.environ.get("ERRORBOOK_BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
LABELS = 10
ERROR_RATE = 0.1
BATCH = 20_000


@dataclass(frozen=True)
class BenchData:
    run_id: int
    token: str
    dev_image_ids: list[int]


def build(engine: Engine, *, images: int, dev: int, seed: int = 0) -> BenchData:
    """Bulk-insert the dataset (core ``insert()`` executemany, no ORM objects per row)."""
    rng = np.random.default_rng(seed)
    now = utcnow()
    with Session(engine) as session:
        dataset = Dataset(name=f"bench-{uuid.uuid4().hex[:6]}", target_source="phone")
        session.add(dataset)
        session.flush()
        labels = [Label(dataset_id=dataset.id, name=f"class-{i}") for i in range(LABELS)]
        session.add_all(labels)
        split = Split(dataset_id=dataset.id, version=1, status="ready")
        session.add(split)
        session.flush()
        run = Run(
            dataset_id=dataset.id,
            split_id=split.id,
            status="succeeded",
            label_names=[label.name for label in labels],
        )
        session.add(run)
        session.flush()
        label_ids = [label.id for label in labels]
        label_of = rng.integers(LABELS, size=images)
        first_id = 1
        for start in range(0, images, BATCH):
            session.execute(
                insert(Image),
                [
                    {
                        "id": first_id + i,
                        "dataset_id": dataset.id,
                        "sha256": hashlib.sha256(f"{dataset.id}-{i}".encode()).hexdigest(),
                        "thumb_sha256": None,
                        "filename": f"images/{i:07d}.jpg",
                        "source": "phone",
                        "label_id": label_ids[label_of[i]],
                        "label_version": 1,
                        "width": 256,
                        "height": 256,
                        "format": "JPEG",
                        "notes": "",
                        "created_at": now,
                    }
                    for i in range(start, min(images, start + BATCH))
                ],
            )
        dev_indices = np.sort(rng.choice(images, size=dev, replace=False))
        rows, changes = [], []
        for index in dev_indices.tolist():
            true_index = int(label_of[index])
            wrong = rng.random() < ERROR_RATE
            predicted_index = (true_index + 1 + int(rng.integers(LABELS - 1))) % LABELS if wrong else true_index
            probs = rng.dirichlet(np.ones(LABELS)).astype(np.float32) * 0.4
            probs[predicted_index] += 0.6
            rows.append(
                {
                    "run_id": run.id,
                    "image_id": first_id + index,
                    "subset": "dev",
                    "label_id": label_ids[true_index],
                    "predicted_label_id": label_ids[predicted_index],
                    "confidence": float(probs[predicted_index]),
                    "is_error": wrong,
                    "probs": probs.tobytes(),
                }
            )
            changes.append(
                {
                    "image_id": first_id + index,
                    "kind": "import",
                    "new_label_id": label_ids[true_index],
                    "version": 1,
                    "reason": "",
                    "created_at": now,
                }
            )
        session.execute(insert(Prediction), rows)
        session.execute(insert(LabelChange), changes)
        reviewer = auth_service.create_user(session, name=f"bench-{uuid.uuid4().hex[:6]}", role="reviewer")
        _, token = auth_service.create_token(session, user=reviewer, name="bench")
        session.commit()
        run_id, dataset_id, reviewer_name = run.id, dataset.id, reviewer.name
    if engine.dialect.name == "postgresql":
        with engine.connect() as connection:
            connection.execute(text("ANALYZE"))
            connection.commit()
    _tag_sample(engine, run_id=run_id, dataset_id=dataset_id, reviewer_name=reviewer_name)
    return BenchData(run_id=run_id, token=token, dev_image_ids=[first_id + i for i in dev_indices.tolist()])


def _tag_sample(engine: Engine, *, run_id: int, dataset_id: int, reviewer_name: str) -> None:
    """Draw the stored sample and tag 60 of its errors, so the table and grid carry real content."""
    with Session(engine) as session:
        actor = auth_service.get_user_by_name(session, name=reviewer_name)
        assert isinstance(actor, User)
        for name in ("blurry", "occluded", "look-alike classes"):
            error_analysis.add_tag(session, dataset_id=dataset_id, name=name)
        sample = error_analysis.error_sample(session, run_id=run_id, subset="dev")
        choices = [["mislabeled"], ["blurry"], ["occluded", "blurry"], ["look-alike classes"]]
        for index, item in enumerate(sample.items[:60]):
            error_analysis.set_annotation(
                session,
                run_id=run_id,
                image_id=item.image_id,
                tags=choices[index % len(choices)],
                note="",
                actor=actor,
            )
        session.commit()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextmanager
def serving(url: str, data_dir: Path) -> Iterator[str]:
    port = _free_port()
    env = {**os.environ, "ERRORBOOK_DATABASE_URL": url, "ERRORBOOK_DATA_DIR": str(data_dir)}
    with open(data_dir / "serve.log", "wb") as log:
        server = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "serve", "--no-worker", "--host", "127.0.0.1", "--port", str(port)],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=log,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if server.poll() is not None:
                raise RuntimeError((data_dir / "serve.log").read_text()[-3000:])
            try:
                if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        yield base
    finally:
        server.terminate()
        server.wait(30)


async def _client(
    base: str,
    token: str,
    endpoints: Mapping[str, str | Sequence[str]],
    *,
    first: int,
    until: float,
    think: float,
    seen: dict[str, list[float]],
) -> None:
    # Pauses vary (0.5 to 1.5 times the think time) and clients start spread over one of them: with a fixed pause
    # all 20 would fire together every second, a burst no group of people makes.
    jitter = random.Random(first)
    async with httpx.AsyncClient(base_url=base, headers={"authorization": f"Bearer {token}"}, timeout=30) as client:
        names = list(endpoints)
        turn = first  # clients start on different endpoints, then take them in turn
        if think:
            await asyncio.sleep(jitter.uniform(0, think))
        while time.monotonic() < until:
            name = names[turn % len(names)]
            turn += 1
            # A list: one of its paths at random each time (e.g. a different query image per request).
            paths = endpoints[name]
            path = paths if isinstance(paths, str) else jitter.choice(paths)
            start = time.perf_counter()
            response = await client.get(path)
            elapsed = time.perf_counter() - start
            if response.status_code != 200:
                raise RuntimeError(f"{name}: HTTP {response.status_code}: {response.text[:300]}")
            seen[name].append(elapsed)
            if think:
                await asyncio.sleep(think * jitter.uniform(0.5, 1.5))


async def load(
    base: str,
    token: str,
    endpoints: Mapping[str, str | Sequence[str]],
    *,
    clients: int,
    seconds: float,
    think: float,
) -> dict[str, list[float]]:
    seen: dict[str, list[float]] = {name: [] for name in endpoints}
    until = time.monotonic() + seconds
    await asyncio.gather(
        *(_client(base, token, endpoints, first=index, until=until, think=think, seen=seen) for index in range(clients))
    )
    return seen


def single_client(client: httpx.Client, endpoints: dict[str, str], *, requests: int) -> list[str]:
    """One request at a time: what a request costs, with no queueing behind other clients (the less noisy figure
    on a shared machine)."""
    lines = [
        f"  one client, {requests} requests per endpoint one after another",
        f"  {'endpoint':<16}{'n':>7}{'p50 ms':>9}{'p95 ms':>9}{'min ms':>9}",
    ]
    for name, path in endpoints.items():
        samples = []
        for _ in range(requests):
            start = time.perf_counter()
            client.get(path).raise_for_status()
            samples.append(time.perf_counter() - start)
        p50, p95, _ = _percentiles(samples)
        lines.append(f"  {name:<16}{len(samples):>7}{p50:>9.1f}{p95:>9.1f}{1000 * min(samples):>9.1f}")
    return lines


def _percentiles(samples: list[float]) -> tuple[float, float, float]:
    cuts = statistics.quantiles(samples, n=100, method="inclusive")
    return 1000 * statistics.median(samples), 1000 * cuts[94], 1000 * cuts[98]


def measure(backend: str, url: str, args: argparse.Namespace, data_dir: Path) -> list[str]:
    engine = make_engine(url)
    upgrade_to_head(engine)
    started = time.perf_counter()
    data = build(engine, images=args.images, dev=args.dev)
    built = time.perf_counter() - started
    run = data.run_id
    endpoints = {
        "error page": f"/runs/{run}/errors?subset=dev",
        "analysis API": f"/api/runs/{run}/error-analysis?subset=dev",
        "error list API": f"/api/runs/{run}/errors?subset=dev&sample=100",
        "/api/me (floor)": "/api/me",  # auth and nothing else: what queueing alone costs
    }
    lines = [f"{backend}: built {args.images:,} images + {args.dev:,} dev predictions in {built:.0f} s"]
    with serving(url, data_dir) as base:
        headers = {"authorization": f"Bearer {data.token}"}
        with httpx.Client(base_url=base, headers=headers, timeout=60) as client:
            cold = time.perf_counter()
            client.get(endpoints["analysis API"]).raise_for_status()
            lines.append(f"  first request (loads the subset): {1000 * (time.perf_counter() - cold):.0f} ms")
            for path in endpoints.values():
                client.get(path).raise_for_status()
            lines += single_client(client, endpoints, requests=args.single)
        for think in args.think:
            seen = asyncio.run(
                load(base, data.token, endpoints, clients=args.clients, seconds=args.seconds, think=think)
            )
            total = sum(len(v) for v in seen.values())
            lines.append(
                f"  {args.clients} clients x {args.seconds:.0f} s, think {think * 1000:.0f} ms: "
                f"{total} requests, {total / args.seconds:.0f}/s"
            )
            lines.append(f"  {'endpoint':<16}{'n':>7}{'p50 ms':>9}{'p95 ms':>9}{'p99 ms':>9}")
            for name, samples in seen.items():
                p50, p95, p99 = _percentiles(samples)
                lines.append(f"  {name:<16}{len(samples):>7}{p50:>9.1f}{p95:>9.1f}{p99:>9.1f}")
        after_change = []
        with httpx.Client(base_url=base, headers=headers, timeout=60) as client:
            for image_id in data.dev_image_ids[:5]:
                with Session(engine) as session:  # a label change: the next request re-reads the changed image
                    session.add(LabelChange(image_id=image_id, kind="relabel", version=2, reason="bench"))
                    session.commit()
                cold = time.perf_counter()
                client.get(endpoints["analysis API"]).raise_for_status()
                after_change.append(time.perf_counter() - cold)
        lines.append(
            f"  first request after a label change (5 changes): median {1000 * statistics.median(after_change):.0f} ms"
        )
    engine.dispose()
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=1_000_000)
    parser.add_argument("--dev", type=int, default=10_000)
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument(
        "--think",
        type=lambda text: [float(value) for value in text.split(",")],
        default=[0.0, 1.0],
        help="pauses between a client's requests to measure with, in seconds, comma-separated",
    )
    parser.add_argument("--backends", default="sqlite,postgres")
    parser.add_argument("--single", type=int, default=60, help="requests per endpoint in the one-client pass")
    args = parser.parse_args()
    load = os.getloadavg()
    report = [
        f"error pages benchmark on {os.cpu_count()} CPUs (server and clients share them); "
        f"load average before: {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}"
    ]
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
    load = os.getloadavg()
    report.append(f"load average after: {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}")
    print("\n".join(report))


if __name__ == "__main__":
    main()
