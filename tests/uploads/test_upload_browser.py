"""Uploading a folder and a zip in headless Chromium against a real ``errorbook serve`` (with its worker)."""

from __future__ import annotations

import hashlib
import time
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from playwright.sync_api import Page, Route, expect

from tests.browser import add_user, chromium, log_in, serve, server_env
from tests.datasets.conftest import noisy_jpeg

pytestmark = [pytest.mark.browser, pytest.mark.slow]


@dataclass
class Served:
    base_url: str
    user: str
    password: str
    token: str


@pytest.fixture
def served(fresh_database, tmp_path: Path) -> Iterator[Served]:  # type: ignore[no-untyped-def]
    env = server_env(data_dir=tmp_path / "data", database_url=fresh_database.url)
    user, password = "uma", "uma-password-123"
    token = add_user(env, user, password=password)
    with serve(env, tmp_path / "serve.log", worker=True) as base_url:
        yield Served(base_url, user, password, token)


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

    with chromium() as browser:
        page = browser.new_page()
        log_in(page, served.base_url, served.user, served.password, then="/datasets")
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
