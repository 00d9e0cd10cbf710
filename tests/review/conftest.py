"""Helpers shared by the label-review tests: campaigns through the API and a real ``errorbook serve`` process."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
from fastapi.testclient import TestClient

from tests.factories import RunFixture
from tests.jobs.conftest import wait_until

ROOT = Path(__file__).resolve().parents[2]


def start_campaign(client: TestClient, fixture: RunFixture, **overrides: Any) -> int:
    body = {
        "run_id": fixture.run.id,
        "subsets": ["dev", "test"],
        "suspicious_per_subset": 4,
        "correct_per_subset": 2,
        "seed": 7,
        **overrides,
    }
    response = client.post(f"/api/datasets/{fixture.dataset.id}/reviews", json=body)
    assert response.status_code == 201, response.text
    return int(response.json()["review_id"])


def label_name(fixture: RunFixture, label_id: int) -> str:
    return next(label.name for label in fixture.labels if label.id == label_id)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _healthy(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def server_env(*, data_dir: Path, database_url: str | None) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("ERRORBOOK_")}
    env["ERRORBOOK_DATA_DIR"] = str(data_dir)
    if database_url:
        env["ERRORBOOK_DATABASE_URL"] = database_url
    return env


@contextmanager
def serve(env: dict[str, str], log_path: Path) -> Iterator[str]:
    """A real ``errorbook serve --no-worker`` on a free loopback port; yields its base URL."""
    port = _free_port()
    with open(log_path, "wb") as log:
        server = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "serve", "--no-worker", "--host", "127.0.0.1", "--port", str(port)],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=log,
        )
    base_url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: server.poll() is not None or _healthy(f"{base_url}/healthz"), timeout=60, interval=0.2)
        assert server.poll() is None, log_path.read_text()
        yield base_url
    finally:
        server.terminate()
        try:
            server.wait(15)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(5)
