from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session

from app.models import JobExecution

ROOT = Path(__file__).resolve().parents[2]

FAST_QUEUE = {
    "ERRORBOOK_JOB_POLL_SECONDS": "0.05",
    "ERRORBOOK_JOB_REAPER_SECONDS": "0.2",
    "ERRORBOOK_JOB_HEARTBEAT_SECONDS": "0.5",
    "ERRORBOOK_JOB_LEASE_SECONDS": "30",
    "ERRORBOOK_JOB_CANCEL_GRACE_SECONDS": "1",
}


def successes_per_job(engine: Engine) -> dict[int, int]:
    """Job id -> how many of its executions succeeded (a job must finish exactly once, whatever happened)."""
    with Session(engine) as session:
        rows = session.execute(
            select(JobExecution.job_id, func.count())
            .where(JobExecution.outcome == "succeeded")
            .group_by(JobExecution.job_id)
        )
        return {job_id: count for job_id, count in rows}


def wait_until(predicate: Callable[[], object], *, timeout: float, interval: float = 0.05) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout} s")


class WorkerProcesses:
    """Real ``errorbook worker`` processes against one database."""

    def __init__(self, url: str, data_dir: Path) -> None:
        self.url = url
        self.data_dir = data_dir
        self.processes: list[subprocess.Popen[bytes]] = []

    def start(self, count: int = 1, *, args: tuple[str, ...] = (), **env: str) -> list[subprocess.Popen[bytes]]:
        started = []
        for _ in range(count):
            environment = {
                **os.environ,
                **FAST_QUEUE,
                "ERRORBOOK_DATABASE_URL": self.url,
                "ERRORBOOK_DATA_DIR": str(self.data_dir),
                **env,
            }
            log = open(self.data_dir / f"worker-{len(self.processes)}.log", "wb")  # noqa: SIM115
            process = subprocess.Popen(
                [sys.executable, "-m", "app.cli", "worker", *args],
                cwd=ROOT,
                env=environment,
                stdout=log,
                stderr=log,
            )
            self.processes.append(process)
            started.append(process)
        return started

    def kill(self, process: subprocess.Popen[bytes]) -> list[int]:
        """SIGKILL a worker and every process under it (its runner, the runner's decoders) at once, as a
        machine crash would; returns their pids."""
        family = [psutil.Process(process.pid)]
        with contextlib.suppress(psutil.NoSuchProcess):
            family += family[0].children(recursive=True)
        for member in family:
            with contextlib.suppress(psutil.NoSuchProcess):
                member.send_signal(signal.SIGKILL)
        process.wait(10)
        psutil.wait_procs(family, timeout=10)
        return [member.pid for member in family]

    def stop_all(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGKILL)
        for process in self.processes:
            process.wait(10)

    def logs(self) -> str:
        return "\n".join(p.read_text(errors="replace") for p in sorted(self.data_dir.glob("worker-*.log")))


@pytest.fixture
def workers(fresh_database, tmp_path: Path) -> Iterator[WorkerProcesses]:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    pool = WorkerProcesses(fresh_database.url, data_dir)
    try:
        yield pool
    finally:
        pool.stop_all()
