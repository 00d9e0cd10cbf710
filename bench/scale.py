"""Scale-out figures (issue 18): the whole workflow on Postgres + an S3-protocol store, stage by stage.

    python bench/scale.py                       # 2,000 images
    python bench/scale.py --images 100000       # the issue's size (hours on two cores)
    ERRORBOOK_BENCH_POSTGRES_URL=postgresql://postgres@127.0.0.1:5432/postgres python bench/scale.py

On this machine, in real processes: moto's standalone server (an S3-protocol test server, not a store to deploy)
on loopback, two fresh databases on the Postgres server, and then
1. `errorbook import` of a zip of demo images (shapes/stripes, 5% flipped labels) into Postgres + S3,
2. the same zip imported again on the local backend (another database and data dir): the ingest-rate ratio,
3. a split and a linear run through the API of `errorbook serve --no-worker`, done by 2 `errorbook worker`
   processes (sharded extraction when this version has ERRORBOOK_EXTRACT_SHARD_SIZE: --shard-size),
4. the run's error page and review page (first load and the median of 5),
5. thumbnails with 20 concurrent clients, served streamed through the app and as presigned URLs (the redirect
   followed to the store, as a browser does): p50/p95 latency.
Per stage: wall time, SQL statements and S3 API calls (counted in every process the bench starts by
bench/scale_hooks/sitecustomize.py), Postgres commits and rows (pg_stat_database deltas); peak RSS per process.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import zipfile
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil
import psycopg

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
HOOKS = ROOT / "bench" / "scale_hooks"
CACHE = Path(tempfile.gettempdir()) / "errorbook-bench-scale"
ADMIN_URL = os.environ.get("ERRORBOOK_BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
PROCESSES = ("import", "worker-1", "worker-2", "web", "web-presigned")
PG_FIELDS = ("xact_commit", "tup_returned", "tup_fetched", "tup_inserted", "tup_updated", "tup_deleted")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def build_zip(count: int) -> Path:
    """Demo images (`label/source-file.jpg`), cached by size."""
    from app.ml.demo import generate_demo_dataset

    path = CACHE / f"demo-{count}.zip"
    if path.exists():
        return path
    CACHE.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    with zipfile.ZipFile(partial, "w", compression=zipfile.ZIP_STORED) as archive:
        for start in range(0, count, 1000):  # in slices: the generator holds its images in memory
            images = generate_demo_dataset(n_images=min(1000, count - start), seed=start)
            for image in images:
                archive.writestr(f"{image.given_label}/{start}-{image.source}-{image.filename}", image.jpeg)
    partial.rename(path)
    return path


# -- processes and their memory ------------------------------------------------------------------------------------


@dataclass
class Processes:
    """Every process the bench starts, with a sampler of the peak RSS of each one and of its children by kind."""

    log_dir: Path
    started: list[tuple[str, subprocess.Popen[bytes]]] = field(default_factory=list)
    peaks: dict[str, int] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)

    def start(self, label: str, command: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        with open(self.log_dir / f"{label}.log", "ab") as log:
            process = subprocess.Popen(command, env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        self.started.append((label, process))
        return process

    def run(self, label: str, command: list[str], env: dict[str, str]) -> None:
        process = self.start(label, command, env)
        if process.wait() != 0:
            tail = (self.log_dir / f"{label}.log").read_text(errors="replace")[-3000:]
            raise RuntimeError(f"{label} exited {process.returncode}:\n{tail}")

    @staticmethod
    def _kind(process: psutil.Process) -> str:
        command = " ".join(process.cmdline())
        if "serve_decodes" in command or "decode_pool" in command:
            return "decoder"
        if "multiprocessing" in command:
            return "job runner"
        return ""

    def _sample(self) -> None:
        while not self._stop.wait(0.2):
            for label, root in list(self.started):
                try:
                    tree = [psutil.Process(root.pid), *psutil.Process(root.pid).children(recursive=True)]
                except psutil.NoSuchProcess:
                    continue
                for process in tree:
                    try:
                        kind, rss = self._kind(process), process.memory_info().rss
                    except psutil.Error:
                        continue
                    name = f"{label} {kind}".strip() if process.pid != root.pid else label
                    self.peaks[name] = max(self.peaks.get(name, 0), rss)

    def __enter__(self) -> Processes:
        threading.Thread(target=self._sample, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for _, process in reversed(self.started):
            if process.poll() is None:
                process.terminate()
        for _, process in self.started:
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()


def stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=90)
    except subprocess.TimeoutExpired:
        process.kill()


# -- counters ------------------------------------------------------------------------------------------------------


def read_counts(counts_dir: Path) -> Counter[str]:
    total: Counter[str] = Counter()
    for path in counts_dir.glob("*.json"):
        try:
            total.update(json.loads(path.read_text()))
        except (OSError, ValueError):
            continue  # being replaced this instant: its next version is read at the next stage boundary
    return total


def pg_stats(databases: list[str]) -> Counter[str]:
    with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
        rows = conn.execute(
            f"select {', '.join(PG_FIELDS)} from pg_stat_database where datname = any(%s)", [databases]
        ).fetchall()
    total: Counter[str] = Counter()
    for row in rows:
        total.update(dict(zip(PG_FIELDS, (int(v) for v in row), strict=True)))
    return total


@dataclass
class Stage:
    name: str
    seconds: float = 0.0
    counts: Counter[str] = field(default_factory=Counter)
    pg: Counter[str] = field(default_factory=Counter)
    note: str = ""


@dataclass
class Recorder:
    counts_dir: Path
    databases: list[str]
    stages: list[Stage] = field(default_factory=list)

    @contextmanager
    def stage(self, name: str) -> Iterator[Stage]:
        # Counters are flushed every 0.25 s and Postgres's statistics up to ~1 s after a transaction: let both settle.
        time.sleep(1.2)
        counts, pg = read_counts(self.counts_dir), pg_stats(self.databases)
        stage = Stage(name)
        started = time.perf_counter()
        yield stage
        stage.seconds = time.perf_counter() - started
        time.sleep(1.2)
        stage.counts = read_counts(self.counts_dir) - counts
        stage.pg = pg_stats(self.databases) - pg
        self.stages.append(stage)
        print(f"  {name}: {stage.seconds:.1f} s {stage.note}", flush=True)


# -- the deployment on this machine --------------------------------------------------------------------------------


@contextmanager
def s3_server(procs: Processes) -> Iterator[str]:
    port = free_port()
    command = [f"{sys.prefix}/bin/moto_server", "-H", "127.0.0.1", "-p", str(port)]
    procs.start("moto", command, {k: v for k, v in os.environ.items() if k != "ERRORBOOK_BENCH_COUNTS"})
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            urllib.request.urlopen(endpoint, timeout=1).close()
            break
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError("moto_server did not start") from None
            time.sleep(0.2)
    yield endpoint


@contextmanager
def databases(count: int) -> Iterator[list[str]]:
    names = [f"bench_scale_{os.getpid()}_{i}" for i in range(count)]
    with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
        for name in names:
            conn.execute(f'create database "{name}"')
    try:
        yield names
    finally:
        with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
            for name in names:
                conn.execute(f'drop database if exists "{name}" with (force)')


def database_url(name: str) -> str:
    base, _, _ = ADMIN_URL.rpartition("/")
    return f"{base}/{name}"


def errorbook(*args: str) -> list[str]:
    return [sys.executable, "-m", "app.cli", *args]


def ingest_seconds(url: str) -> float:
    """How long the last ingest job ran (from the queue's own timestamps)."""
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "select extract(epoch from finished_at - started_at) from jobs where kind = 'datasets.ingest' "
            "order by id desc limit 1"
        ).fetchone()
    assert row and row[0] is not None, "no finished ingest job"
    return float(row[0])


def wait_job(api: httpx.Client, job_id: int, timeout: float = 7200) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        job: dict[str, Any] = api.get(f"/api/jobs/{job_id}").raise_for_status().json()
        if job["status"] not in ("queued", "running", "waiting"):  # waiting: for its shards
            if job["status"] != "succeeded":
                raise RuntimeError(f"job {job_id} {job['status']}: {job['error']}")
            return job
        if time.monotonic() > deadline:
            raise TimeoutError(f"job {job_id} still {job['status']}")
        time.sleep(0.5)


@contextmanager
def web_server(procs: Processes, env: dict[str, str], label: str) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    port = free_port()
    process = procs.start(label, errorbook("serve", "--no-worker", "--port", str(port)), env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline or process.poll() is not None:
            raise RuntimeError(f"{label} did not start")
        time.sleep(0.3)
    try:
        yield url, process
    finally:
        stop(process)


async def _thumbs(url: str, token: str, ids: list[int], clients: int, per_client: int) -> list[float]:
    latencies: list[float] = []
    limits = httpx.Limits(max_connections=clients * 2)
    headers = {"authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=60, follow_redirects=True, limits=limits) as c:

        async def client(seed: int) -> None:
            rng = random.Random(seed)
            for _ in range(per_client):
                started = time.perf_counter()
                answer = await c.get(f"/images/{rng.choice(ids)}/thumb")
                assert answer.status_code == 200 and answer.content[:2] == b"\xff\xd8", answer.status_code
                latencies.append(time.perf_counter() - started)

        await asyncio.gather(*(client(i) for i in range(clients)))
    return latencies


def thumbnails(url: str, token: str, ids: list[int], clients: int, per_client: int) -> tuple[str, dict[str, float]]:
    latencies = sorted(asyncio.run(_thumbs(url, token, ids, clients, per_client)))
    p50 = statistics.median(latencies)
    p95 = latencies[int(0.95 * (len(latencies) - 1))]
    return f"({len(latencies)} GETs, p50 {p50 * 1000:.0f} ms, p95 {p95 * 1000:.0f} ms)", {"p50": p50, "p95": p95}


def page(api: httpx.Client, path: str) -> tuple[float, float]:
    """(first load, median of the next 5) in seconds."""
    times = []
    for _ in range(6):
        started = time.perf_counter()
        api.get(path).raise_for_status()
        times.append(time.perf_counter() - started)
    return times[0], statistics.median(times[1:])


# -- the bench -----------------------------------------------------------------------------------------------------


def main() -> None:  # noqa: C901 - one straight sequence of stages
    from app.core.settings import Settings

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--shard-size", type=int, default=500, help="ERRORBOOK_EXTRACT_SHARD_SIZE, where it exists")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--thumbs-per-client", type=int, default=25)
    args = parser.parse_args()
    sharded = "extract_shard_size" in Settings.model_fields
    scratch = Path(tempfile.mkdtemp(prefix="errorbook-scale-"))
    counts_dir, log_dir = scratch / "counts", scratch / "logs"
    counts_dir.mkdir()
    log_dir.mkdir()
    archive = build_zip(args.images)
    archive.read_bytes()  # in the page cache for both imports alike
    print(f"{args.images:,} images, {archive.stat().st_size / 1e6:.0f} MB zip; scratch {scratch}", flush=True)
    base_env = {k: v for k, v in os.environ.items() if not k.startswith(("ERRORBOOK_", "AWS_"))}
    base_env.update(
        {
            "PYTHONPATH": f"{HOOKS}{os.pathsep}{ROOT}",
            "ERRORBOOK_BENCH_COUNTS": str(counts_dir),
            "AWS_ACCESS_KEY_ID": "bench",
            "AWS_SECRET_ACCESS_KEY": "bench-secret",
            "AWS_DEFAULT_REGION": "us-east-1",
        }
    )
    with Processes(log_dir) as procs, s3_server(procs) as endpoint, databases(2) as (s3_db, local_db):
        env = {
            **base_env,
            "ERRORBOOK_DATA_DIR": str(scratch / "s3-install"),
            "ERRORBOOK_DATABASE_URL": database_url(s3_db),
            "ERRORBOOK_STORAGE": "s3",
            "ERRORBOOK_S3_ENDPOINT_URL": endpoint,
            "ERRORBOOK_S3_BUCKET": "errorbook-bench",
        }
        if sharded:
            env["ERRORBOOK_EXTRACT_SHARD_SIZE"] = str(args.shard_size)
        local_env = {
            **base_env,
            "ERRORBOOK_DATA_DIR": str(scratch / "local-install"),
            "ERRORBOOK_DATABASE_URL": database_url(local_db),
        }
        # Each process its own data dir, as on separate hosts: nothing reaches another through a shared disk cache.
        own = {label: {**env, "ERRORBOOK_DATA_DIR": str(scratch / "s3-install" / label)} for label in PROCESSES}
        procs.run("storage-init", errorbook("storage", "init"), env)
        procs.run("db-upgrade", errorbook("db", "upgrade"), env)
        procs.run("db-upgrade-local", errorbook("db", "upgrade"), local_env)
        rec = Recorder(counts_dir, [s3_db, local_db])
        rates: dict[str, float] = {}
        for backend, stage_env in (("s3", own["import"]), ("local", local_env)):
            with rec.stage(f"import ({backend})") as stage:
                procs.run(f"import-{backend}", errorbook("import", str(archive), "--dataset", "scale"), stage_env)
            job_s = ingest_seconds(stage_env["ERRORBOOK_DATABASE_URL"])
            rates[backend] = args.images / job_s
            stage.note = f"(ingest job {job_s:.1f} s: {rates[backend]:.0f} images/s)"
        token_out = subprocess.run(
            errorbook("users", "add", "bench", "--role", "admin"), env=env, cwd=ROOT, capture_output=True, text=True
        )
        token = token_out.stdout.strip().splitlines()[-1]
        with psycopg.connect(env["ERRORBOOK_DATABASE_URL"]) as conn:
            dataset = conn.execute("select id from datasets where name = 'scale'").fetchone()[0]  # type: ignore[index]
            ids = [row[0] for row in conn.execute("select id from images where dataset_id = %s", [dataset])]
        workers = [procs.start(label, errorbook("worker"), own[label]) for label in ("worker-1", "worker-2")]
        pages: dict[str, tuple[float, float]] = {}
        with web_server(procs, own["web"], "web (stream)") as (url, _):
            api = httpx.Client(base_url=url, headers={"authorization": f"Bearer {token}"}, timeout=600)
            with rec.stage("split"):
                created = api.post(f"/api/datasets/{dataset}/splits", json={"seed": 0}).raise_for_status().json()
                wait_job(api, created["job_id"])
            body = {"dataset_id": dataset, "split_id": created["split_id"], "epochs": args.epochs, "batch_size": 64}
            with rec.stage(f"run, 2 workers{' (sharded)' if sharded else ''}") as stage:
                run = api.post("/api/runs", json=body).raise_for_status().json()
                wait_job(api, run["job_id"])
                result = api.get(f"/api/runs/{run['run_id']}").json()
                stage.note = f"(dev accuracy {result['metrics']['dev']['accuracy']:.1%})"
            for worker in workers:
                stop(worker)  # idle from here: they would only poll
            for name, path in (("error page", "errors"), ("review page", "review")):
                with rec.stage(name) as stage:
                    pages[name] = page(api, f"/runs/{run['run_id']}/{path}")
                    stage.note = f"(first {pages[name][0] * 1000:.0f} ms, then median {pages[name][1] * 1000:.0f} ms)"
            with rec.stage(f"thumbnails, stream, {args.clients} clients") as stage:
                stage.note, _ = thumbnails(url, token, ids, args.clients, args.thumbs_per_client)
        presigned = {**own["web-presigned"], "ERRORBOOK_S3_SERVE": "presigned"}
        with (
            web_server(procs, presigned, "web (presigned)") as (url, _),
            rec.stage(f"thumbnails, presigned, {args.clients} clients") as stage,
        ):
            stage.note, _ = thumbnails(url, token, ids, args.clients, args.thumbs_per_client)
        report(args, rec, procs, rates, sharded)


def report(args: argparse.Namespace, rec: Recorder, procs: Processes, rates: dict[str, float], sharded: bool) -> None:
    print(f"\n## bench/scale.py: {args.images:,} images, 2 worker processes, sharded extraction: {sharded}")
    print(
        f"load average {os.getloadavg()[0]:.2f} / {os.getloadavg()[1]:.2f} / {os.getloadavg()[2]:.2f}, "
        f"{os.cpu_count()} cores\n"
    )
    print("| stage | wall s | SQL statements | S3 calls | PG commits | PG rows written | PG rows read | note |")
    print("|---|---:|---:|---:|---:|---:|---:|---|")
    for s in rec.stages:
        s3 = sum(v for k, v in s.counts.items() if k.startswith("s3."))
        written = s.pg["tup_inserted"] + s.pg["tup_updated"] + s.pg["tup_deleted"]
        print(
            f"| {s.name} | {s.seconds:.1f} | {s.counts['sql']:,} | {s3:,} | {s.pg['xact_commit']:,} | {written:,} "
            f"| {s.pg['tup_fetched']:,} | {s.note} |"
        )
    print("\nS3 calls by operation per stage:")
    for s in rec.stages:
        ops = {k[3:]: v for k, v in s.counts.items() if k.startswith("s3.") and v}
        print(f"  {s.name}: {dict(sorted(ops.items(), key=lambda kv: -kv[1]))}")
    print(
        f"\ningest rate, same zip: S3 {rates['s3']:.0f} images/s, local {rates['local']:.0f} images/s "
        f"(S3/local {rates['s3'] / rates['local']:.2f})"
    )
    print("\npeak RSS per process (MB):")
    for name, rss in sorted(procs.peaks.items()):
        print(f"  {name}: {rss / 1e6:.0f}")


if __name__ == "__main__":
    main()
