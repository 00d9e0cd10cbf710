"""Job queue figures: claim latency and throughput with real worker processes.

python bench/jobs.py                       # SQLite (2 workers) and Postgres (3 workers)
ERRORBOOK_BENCH_POSTGRES_URL=postgresql://postgres@127.0.0.1:5432/test python bench/jobs.py
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from sqlalchemy import create_engine, func, select, text
from sqlalchemy.orm import Session

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from app.core.db import make_engine  # noqa: E402
from app.core.migrate import upgrade_to_head  # noqa: E402
from app.core.settings import normalise_database_url  # noqa: E402
from app.jobs import service  # noqa: E402
from app.models import Job  # noqa: E402

POSTGRES_URL = os.environ.get("ERRORBOOK_BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
JOBS = int(os.environ.get("BENCH_QUEUE_JOBS", "1000"))


def _enqueue(engine, count: int) -> list[int]:  # type: ignore[no-untyped-def]
    with Session(engine) as session:
        ids = [service.enqueue(session, kind="demo.sleep", payload={"seconds": 0, "steps": 1}).id for _ in range(count)]
        session.commit()
    return ids


def _pending(engine) -> int:  # type: ignore[no-untyped-def]
    with Session(engine) as session:
        return session.scalar(select(func.count()).where(Job.status.in_(["queued", "running"]))) or 0


def _wait_idle(engine, timeout: float = 300) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while _pending(engine) and time.monotonic() < deadline:
        time.sleep(0.02)


def measure(label: str, url: str, workers: int, data_dir: Path) -> dict[str, float]:
    engine = make_engine(url)
    upgrade_to_head(engine)
    env = {
        **os.environ,
        "ERRORBOOK_DATABASE_URL": url,
        "ERRORBOOK_DATA_DIR": str(data_dir),
        "ERRORBOOK_JOB_POLL_SECONDS": "0.05",
    }
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "app.cli", "worker"],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for _ in range(workers)
    ]
    try:
        _enqueue(engine, workers * 2)  # warm-up: every runner has started
        _wait_idle(engine)
        latencies = []
        for _ in range(20):
            (job_id,) = _enqueue(engine, 1)
            start = time.perf_counter()
            while True:
                with Session(engine) as session:
                    if session.scalar(select(Job.status).where(Job.id == job_id)) != "queued":
                        break
                time.sleep(0.002)
            latencies.append(time.perf_counter() - start)
            _wait_idle(engine)
        start = time.perf_counter()
        _enqueue(engine, JOBS)
        _wait_idle(engine)
        elapsed = time.perf_counter() - start
        with Session(engine) as session:
            failed = session.scalar(select(func.count()).where(Job.status != "succeeded")) or 0
        return {
            "claim_p50_ms": 1000 * statistics.median(latencies),
            "claim_max_ms": 1000 * max(latencies),
            "jobs_per_s": JOBS / elapsed,
            "not_succeeded": failed,
        }
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(30)
        engine.dispose()


def main() -> None:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        sqlite_url = f"sqlite:///{tmp}/bench.db"
        rows.append(("SQLite", 2, measure("sqlite", sqlite_url, 2, Path(tmp))))
        schema = f"eb_bench_{uuid.uuid4().hex[:8]}"
        admin = create_engine(normalise_database_url(POSTGRES_URL), isolation_level="AUTOCOMMIT")
        try:
            with admin.connect() as conn:
                conn.execute(text(f'CREATE SCHEMA "{schema}"'))
            pg_url = normalise_database_url(POSTGRES_URL) + f"?options=-csearch_path%3D{schema}"
            rows.append(("Postgres", 3, measure("postgres", pg_url, 3, Path(tmp))))
        finally:
            with admin.connect() as conn:
                conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
    print(f"queue benchmark: {JOBS} no-op jobs, poll interval 50 ms, {os.cpu_count()} CPUs")
    print(f"{'backend':<10}{'workers':>8}{'claim p50 ms':>14}{'claim max ms':>14}{'jobs/s':>10}{'not ok':>8}")
    for name, n, r in rows:
        print(
            f"{name:<10}{n:>8}{r['claim_p50_ms']:>14.1f}{r['claim_max_ms']:>14.1f}"
            f"{r['jobs_per_s']:>10.1f}{r['not_succeeded']:>8.0f}"
        )


if __name__ == "__main__":
    main()
