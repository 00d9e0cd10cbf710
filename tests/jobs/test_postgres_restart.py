"""A real Postgres restart under running workers: a throwaway cluster of our own (initdb on a free port), so the
shared server the other tests use is never touched. Workers keep running, reconnect, and finish every job once."""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session

from app.core.db import make_engine
from app.core.migrate import upgrade_to_head
from app.jobs import service as jobs
from app.models import Job
from tests.jobs.conftest import WorkerProcesses, successes_per_job, wait_until

PG_BINS = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"))


class OwnPostgres:
    """initdb + pg_ctl in a temp dir; as root, the server runs as the `postgres` user (it refuses root)."""

    def __init__(self) -> None:
        self.bin = PG_BINS[-1].parent
        self.root = Path(tempfile.mkdtemp(prefix="eb-pg-"))
        self.data = self.root / "data"
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        self._as_postgres = os.geteuid() == 0
        if self._as_postgres:
            account = pwd.getpwnam("postgres")
            os.chown(self.root, account.pw_uid, account.pw_gid)

    def _run(self, tool: str, *args: str) -> None:
        command = [str(self.bin / tool), *args]
        if self._as_postgres:
            command = ["runuser", "-u", "postgres", "--", *command]
        subprocess.run(command, check=True, capture_output=True, timeout=120)

    def init(self) -> None:
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8")

    def start(self) -> None:
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.root / "server.log"), "-o", options, "-w", "start")

    def stop(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")

    def remove(self) -> None:
        with contextlib.suppress(subprocess.CalledProcessError):  # already down
            self.stop()
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture
def own_postgres() -> Iterator[OwnPostgres]:
    if not PG_BINS:
        pytest.skip("PostgreSQL server binaries are not installed here")
    server = OwnPostgres()
    try:
        server.init()
        server.start()
    except (subprocess.CalledProcessError, KeyError, OSError) as exc:
        server.remove()
        pytest.skip(f"cannot run a throwaway PostgreSQL here: {exc}")
    try:
        yield server
    finally:
        server.remove()


def _counts(engine: Engine) -> dict[str, int]:
    with Session(engine) as session:
        return {status: n for status, n in session.execute(select(Job.status, func.count()).group_by(Job.status))}


def test_workers_carry_on_through_a_real_postgres_restart(own_postgres: OwnPostgres, tmp_path: Path) -> None:
    engine = make_engine(own_postgres.url.replace("postgresql://", "postgresql+psycopg://"))
    upgrade_to_head(engine)
    count = 30
    with Session(engine) as session:
        ids = [jobs.enqueue(session, kind="demo.sleep", payload={"seconds": 0.3, "steps": 6}).id for _ in range(count)]
        session.commit()
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    pool = WorkerProcesses(own_postgres.url, data_dir)
    try:
        processes = pool.start(2, ERRORBOOK_JOB_LEASE_SECONDS="5")
        wait_until(lambda: _counts(engine).get("succeeded", 0) >= 3, timeout=120)
        engine.dispose()
        own_postgres.stop()  # every connection is cut and new ones are refused while it is down
        time.sleep(3)
        own_postgres.start()
        assert _counts(engine).get("succeeded", 0) < count  # the restart really happened mid-stream

        def all_done() -> bool:
            counts = _counts(engine)
            return counts.get("queued", 0) + counts.get("running", 0) == 0

        wait_until(all_done, timeout=180, interval=0.3)
        assert all(process.poll() is None for process in processes), pool.logs()[-3000:]
        assert _counts(engine) == {"succeeded": count}, pool.logs()[-4000:]
        assert successes_per_job(engine) == dict.fromkeys(ids, 1)  # each job finished exactly once
        assert "Connection refused" in pool.logs()  # the workers did meet the server down
        with Session(engine) as session:
            jobs.enqueue(session, kind="demo.sleep", payload={"seconds": 0, "steps": 1})
            session.commit()
        wait_until(lambda: _counts(engine) == {"succeeded": count + 1}, timeout=60)
    finally:
        pool.stop_all()
        engine.dispose()
