"""Uploading a folder and a zip in headless Chromium against a real ``errorbook serve`` (with its worker)."""

from __future__ import annotations

import hashlib
import os
import socket
import subprocess
import sys
import time
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Page, Route, expect, sync_playwright

from tests.datasets.conftest import noisy_jpeg
from tests.jobs.conftest import wait_until

pytestmark = [pytest.mark.browser, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking"]


@dataclass
class Served:
    base_url: str
    user: str
    password: str
    token: str


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _healthy(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.fixture
def served(fresh_database, tmp_path: Path) -> Iterator[Served]:  # type: ignore[no-untyped-def]
    env = {key: value for key, value in os.environ.items() if not key.startswith("ERRORBOOK_")}
    env.update(ERRORBOOK_DATABASE_URL=fresh_database.url, ERRORBOOK_DATA_DIR=str(tmp_path / "data"))
    user, password = "uma", "uma-password-123"
    added = subprocess.run(
        [sys.executable, "-m", "app.cli", "users", "add", user, "--role", "reviewer", "--password", password],
        cwd=ROOT,
        env=env,
        check=True,
        capture_output=True,
        text=True,
    )
    port = _free_port()
    log_path = tmp_path / "serve.log"
    with open(log_path, "wb") as log:
        server = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "serve", "--host", "127.0.0.1", "--port", str(port)],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=log,
        )
    base_url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: server.poll() is not None or _healthy(f"{base_url}/healthz"), timeout=90, interval=0.2)
        assert server.poll() is None, log_path.read_text()
        yield Served(base_url, user, password, added.stdout.strip().splitlines()[-1])
    finally:
        server.terminate()
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(5)


def _login(page: Page, served: Served, target: str) -> None:
    page.goto(f"{served.base_url}/login?next={target}")
    page.fill('input[name="name"]', served.user)
    page.fill('input[name="password"]', served.password)
    page.click('button[type="submit"]')
    page.wait_for_url(f"**{target}")


def _pump_until(page: Page, condition: Callable[[], bool], *, timeout: float) -> None:
    """Wait while letting Playwright run its route handlers (they only run inside Playwright calls)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"condition not met within {timeout} s"
        page.wait_for_timeout(100)


def _wait_for_report(page: Page) -> dict[str, str]:
    page.wait_for_selector('[data-upload-panel][data-status="done"]', timeout=120_000)
    return {
        key: page.inner_text(f'[data-upload-panel] [data-count="{key}"]')
        for key in ("files", "accepted", "duplicates", "conflicts", "rejected")
    }


def test_a_folder_then_a_zip_are_uploaded_with_progress_and_reported(served: Served, tmp_path: Path) -> None:
    folder = tmp_path / "holiday"
    for index in range(30):
        path = folder / ("cat" if index % 2 else "dog") / f"{index:02d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(noisy_jpeg(index))
    (folder / "cat" / ".DS_Store").write_bytes(b"finder junk")
    (folder / "dog" / "readme.jpg").write_text("not a picture")
    (folder / "dog" / "copy.jpg").write_bytes(noisy_jpeg(0))  # the same content as dog/00.jpg
    archive = tmp_path / "birds.zip"
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_STORED) as zipped:
        for index in range(40):
            zipped.writestr(f"train/bird/{index:02d}.jpg", noisy_jpeg(1000 + index, size=(640, 480)))
    assert archive.stat().st_size > 8 * 2**20  # big enough to travel in resumable chunks

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            _login(page, served, "/datasets")
            page.fill('input[name="name"]', "Holiday photos")
            page.click("button:has-text('Create')")
            page.wait_for_selector("h1:has-text('Holiday photos')")
            dataset_url = page.url
            page.click("a:has-text('Upload images')")
            page.wait_for_selector("[data-uploader]")

            # The JavaScript SHA-256 (used for big files and without crypto.subtle) agrees with the browser's.
            assert page.evaluate("window.errorbook.sha256Hex(new TextEncoder().encode('abc'))") == (
                hashlib.sha256(b"abc").hexdigest()
            )
            assert page.evaluate(
                """async () => {
                    const bytes = new Uint8Array(300007).map((_, i) => (i * 7919) % 251);
                    const subtle = new Uint8Array(await crypto.subtle.digest('SHA-256', bytes));
                    const hex = Array.from(subtle).map(b => b.toString(16).padStart(2, '0')).join('');
                    return hex === window.errorbook.sha256Hex(bytes);
                }"""
            )

            # A folder, with the first batch's connection dropped once: the page retries by itself.
            dropped: list[str] = []

            def drop_first(route: Route) -> None:
                if not dropped:
                    dropped.append(route.request.url)
                    route.abort("connectionreset")
                else:
                    route.continue_()

            page.route("**/api/uploads/*/files", drop_first)
            page.fill('input[name="source"]', "phone")
            page.set_input_files("[data-pick-folder]", str(folder))
            assert "32 files chosen" in page.inner_text("[data-selection]")  # .DS_Store left out
            page.click("[data-start]")
            page.wait_for_selector("[data-progress]:not([hidden])")
            report = _wait_for_report(page)
            assert report == {"files": "32", "accepted": "30", "duplicates": "1", "conflicts": "0", "rejected": "1"}
            assert dropped, "the dropped request was never made"
            assert page.evaluate("document.querySelector('[data-bytes-progress]').value") == 1
            assert page.is_visible("[data-upload-panel] .job progress")
            assert "not an image" in page.inner_text("[data-rejected]")
            page.unroute("**/api/uploads/*/files")

            # A zip in chunks; the page reloads halfway, and the upload resumes where the server stopped.
            chunks: list[str] = []

            def first_chunk_only(route: Route) -> None:
                chunks.append(route.request.url)
                if len(chunks) == 1:
                    route.continue_()
                else:
                    route.abort("connectionreset")

            page.route("**/api/uploads/*/chunks*", first_chunk_only)
            page.set_input_files("[data-pick-files]", str(archive))
            page.click("[data-start]")
            _pump_until(page, lambda: len(chunks) >= 2, timeout=60)
            page.unroute("**/api/uploads/*/chunks*")
            sent: list[str] = []
            page.on("request", lambda request: sent.append(request.url) if "/chunks?" in request.url else None)
            page.reload()
            page.wait_for_selector("[data-resume]")
            page.set_input_files("[data-pick-files]", str(archive))
            page.click("[data-start]")
            report = _wait_for_report(page)
            assert report == {"files": "40", "accepted": "40", "duplicates": "0", "conflicts": "0", "rejected": "0"}
            assert sent and "offset=0" not in sent[0]  # the first chunk was not sent again

            page.goto(dataset_url)
            counts = page.inner_text("[data-counts]")
            assert "bird" in counts and "cat" in counts and "dog" in counts
            assert page.inner_text("[data-image-count]") == "70"
            page.select_option('select[name="label"]', "bird")
            # a locator assertion, not wait_for_function: that one evaluates a string, which our CSP forbids
            expect(page.locator("#image-grid .thumb")).to_have_count(40)
            first = page.locator("#image-grid .thumb img").first
            first.wait_for()
            assert page.evaluate("img => img.naturalWidth", first.element_handle()) > 0  # the thumbnail loads
        finally:
            browser.close()
