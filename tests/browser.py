"""What the browser and real-server tests share: a real ``errorbook serve`` on a free loopback port, users made
through the CLI, headless Chromium (Debian's, never a downloaded one) and logging a page in."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import quote

import httpx

from tests.jobs.conftest import wait_until

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking"]
LOG_TAIL_CHARS = 20_000


def server_env(*, data_dir: Path, database_url: str | None = None) -> dict[str, str]:
    """This process's environment without our own settings, pointed at one data dir (and database)."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("ERRORBOOK_")}
    env["ERRORBOOK_DATA_DIR"] = str(data_dir)
    env["ERRORBOOK_STATE_DIR"] = str(data_dir.parent / "state")  # its running-server note stays in the test's dir
    if database_url:
        env["ERRORBOOK_DATABASE_URL"] = database_url
    return env


def add_user(env: dict[str, str], name: str, *, password: str, role: str = "reviewer") -> str:
    """``errorbook users add``; returns the user's new API token."""
    added = subprocess.run(
        [sys.executable, "-m", "app.cli", "users", "add", name, "--role", role, "--password", password],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert added.returncode == 0, added.stdout + added.stderr
    return added.stdout.strip().splitlines()[-1]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _healthy(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def log_tail(log_path: Path) -> str:
    text = log_path.read_text(errors="replace") if log_path.exists() else "(no log)"
    return text[-LOG_TAIL_CHARS:]


@contextmanager
def serve(env: dict[str, str], log_path: Path, *, worker: bool = False, timeout: float = 90) -> Iterator[str]:
    """A real ``errorbook serve`` (with one embedded job worker if ``worker``) on a free loopback port; yields its
    base URL once /healthz answers. When the body fails, the server's log goes to stderr (pytest shows it)."""
    port = _free_port()
    command = [sys.executable, "-m", "app.cli", "serve", "--host", "127.0.0.1", "--port", str(port)]
    if not worker:
        command.append("--no-worker")
    with open(log_path, "wb") as log:
        server = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=log)
    base_url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: server.poll() is not None or _healthy(f"{base_url}/healthz"), timeout=timeout, interval=0.2)
        assert server.poll() is None, f"errorbook serve exited:\n{log_tail(log_path)}"
        yield base_url
    except BaseException:
        print(f"---- errorbook serve log ({log_path}) ----\n{log_tail(log_path)}", file=sys.stderr)
        raise
    finally:
        server.terminate()
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(5)


@contextmanager
def chromium() -> Iterator[Browser]:
    """Headless Debian Chromium through Playwright."""
    from playwright.sync_api import expect, sync_playwright

    # The suite runs on two processes, each with its own servers and browser: on a 2-core machine a page's
    # follow-up request can take longer than expect's 5 s default without anything being wrong.
    expect.set_options(timeout=20_000)

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


def log_in(page: Page, base_url: str, name: str, password: str, *, then: str = "/") -> None:
    """Log in through the login form; ends on ``then`` (a path)."""
    page.goto(f"{base_url}/login?next={quote(then, safe='/')}")
    page.fill('input[name="name"]', name)
    page.fill('input[name="password"]', password)
    page.click('button[type="submit"]')
    page.wait_for_url(lambda url: url.split("#", 1)[0] == f"{base_url}{then}")
