"""A real `errorbook serve` (uvicorn, no embedded worker) on loopback, in a process of its own, on a fresh SQLite
data dir with an admin user and its API token."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from app.auth import service as auth
from app.core.db import get_engine, session_scope
from app.core.migrate import upgrade_to_head
from app.core.settings import PROJECT_ROOT, Settings

ADMIN, ADMIN_PASSWORD = "ada", "a-long-password"


@dataclass
class LiveServer:
    port: int
    pid: int
    token: str
    tmp_dirs: list[Path]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextmanager
def live_server(tmp_path: Path, **env_settings: str) -> Iterator[LiveServer]:
    """`env_settings`: ERRORBOOK_* variables for the server (e.g. TRUSTED_PROXIES="127.0.0.1")."""
    data, tmp = tmp_path / "data", tmp_path / "tmp"
    tmp.mkdir(exist_ok=True)
    env = {**os.environ, "ERRORBOOK_DATA_DIR": str(data), "TMPDIR": str(tmp), "PYTHONPATH": str(PROJECT_ROOT)}
    env.pop("ERRORBOOK_DATABASE_URL", None)
    env.update({f"ERRORBOOK_{name.upper()}": value for name, value in env_settings.items()})
    engine = get_engine(Settings(data_dir=data))
    upgrade_to_head(engine)
    with session_scope(engine) as session:
        user = auth.create_user(session, name=ADMIN, role="admin", password=ADMIN_PASSWORD)
        _, token = auth.create_token(session, user=user, name="t")
    engine.dispose()
    port = _free_port()
    command = [sys.executable, "-m", "app.cli", "serve", "--no-worker", "--port", str(port)]
    process = subprocess.Popen(command, env=env, cwd=PROJECT_ROOT, stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise
                time.sleep(0.2)
        yield LiveServer(port, process.pid, token, [tmp, data / "blobs" / "tmp", data / "staging"])
    finally:
        process.terminate()
        process.wait(timeout=30)
