"""A reviewer tags three errors with the keyboard in headless Chromium against a real ``errorbook serve``."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Page, sync_playwright
from sqlalchemy.orm import Session

from app.errors import service
from tests.factories import make_run
from tests.jobs.conftest import wait_until

pytestmark = [pytest.mark.browser, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking"]


@dataclass
class Served:
    base_url: str
    run_id: int
    reviewer: str
    password: str


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
def served(fresh_database, tmp_path: Path) -> Iterator[Served]:
    with Session(fresh_database.engine) as session:
        fixture = make_run(session, sizes={"dev": 40, "test": 10}, error_rate=0.5, seed=31)
        service.add_tag(session, dataset_id=fixture.dataset.id, name="blurry")
        session.commit()
        run_id = fixture.run.id
    env = {
        **os.environ,
        "ERRORBOOK_DATABASE_URL": fresh_database.url,
        "ERRORBOOK_DATA_DIR": str(tmp_path / "data"),
    }
    reviewer, password = "rita", "rita-password-123"
    subprocess.run(
        [sys.executable, "-m", "app.cli", "users", "add", reviewer, "--role", "reviewer", "--password", password],
        cwd=ROOT,
        env=env,
        check=True,
        capture_output=True,
    )
    port = _free_port()
    with open(tmp_path / "serve.log", "wb") as log:
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
        assert server.poll() is None, (tmp_path / "serve.log").read_text()
        yield Served(base_url, run_id, reviewer, password)
    finally:
        server.terminate()
        try:
            server.wait(15)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(5)


def _count(page: Page, tag: str) -> str:
    return str(page.inner_text(f'[data-tag-row="{tag}"] [data-count]'))


def test_a_reviewer_tags_three_errors_with_the_keyboard_and_the_table_follows(served: Served, tmp_path) -> None:
    errors_url = f"{served.base_url}/runs/{served.run_id}/errors?subset=dev"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(f"{served.base_url}/login?next=/runs/{served.run_id}/errors")
            page.fill('input[name="name"]', served.reviewer)
            page.fill('input[name="password"]', served.password)
            page.click('button[type="submit"]')
            page.wait_for_selector("[data-card].selected")
            assert (_count(page, "mislabeled"), _count(page, "blurry")) == ("0", "0")
            first, second, third = page.eval_on_selector_all(
                "[data-card]", "cards => cards.slice(0, 3).map(card => card.dataset.imageId)"
            )

            page.keyboard.press("m")
            page.wait_for_selector(f'#card-{first} [data-tag-name="mislabeled"]')
            page.keyboard.press("ArrowRight")
            page.keyboard.press("2")  # the second category: blurry
            page.wait_for_selector(f'#card-{second} [data-tag-name="blurry"]')
            page.keyboard.press("ArrowRight")
            page.keyboard.press("m")
            page.wait_for_selector(f'#card-{third} [data-tag-name="mislabeled"]')
            page.wait_for_function(
                "() => document.querySelector('[data-tag-row=\"mislabeled\"] [data-count]').textContent === '2'"
            )
            assert (_count(page, "mislabeled"), _count(page, "blurry")) == ("2", "1")
            assert page.inner_text("[data-reviewed]") == "3"
            assert page.is_visible(f"#card-{third}.selected")

            page.keyboard.press("Enter")
            page.wait_for_selector("#detail [data-detail]")
            assert "Top 5 classes" in page.inner_text("#detail")
            page.keyboard.press("2")  # keys keep working while the large view is open, and it follows
            page.wait_for_selector('#detail [data-detail-tags] >> text="blurry"')
            page.wait_for_function(
                "() => document.querySelector('[data-tag-row=\"blurry\"] [data-count]').textContent === '2'"
            )
            page.screenshot(path=str(tmp_path / "errors-page.png"), full_page=True)
            page.keyboard.press("2")
            page.wait_for_selector(f'#card-{third} [data-tag-name="blurry"]', state="detached")
            page.keyboard.press("Escape")
            page.wait_for_selector("#detail [data-detail]", state="detached")

            page.goto(errors_url)  # everything was saved: a reload shows the same tags and who set them
            page.wait_for_selector(f'#card-{second} [data-tag-name="blurry"]')
            assert f"by {served.reviewer}" in page.inner_text(f"#card-{first}")
            assert (_count(page, "mislabeled"), _count(page, "blurry")) == ("2", "1")
        finally:
            browser.close()
    assert (tmp_path / "errors-page.png").stat().st_size > 10_000
