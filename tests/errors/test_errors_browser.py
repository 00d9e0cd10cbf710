"""A reviewer tags three errors with the keyboard in headless Chromium against a real ``errorbook serve``."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect
from sqlalchemy.orm import Session

from app.errors import service
from tests.browser import add_user, chromium, log_in, serve, server_env
from tests.factories import make_run

pytestmark = [pytest.mark.browser, pytest.mark.slow]


@dataclass
class Served:
    base_url: str
    run_id: int
    reviewer: str
    password: str


@pytest.fixture
def served(fresh_database, tmp_path: Path) -> Iterator[Served]:  # type: ignore[no-untyped-def]
    with Session(fresh_database.engine) as session:
        fixture = make_run(session, sizes={"dev": 40, "test": 10}, error_rate=0.5, seed=31)
        service.add_tag(session, dataset_id=fixture.dataset.id, name="blurry")
        session.commit()
        run_id = fixture.run.id
    env = server_env(data_dir=tmp_path / "data", database_url=fresh_database.url)
    reviewer, password = "rita", "rita-password-123"
    add_user(env, reviewer, password=password)
    with serve(env, tmp_path / "serve.log") as base_url:
        yield Served(base_url, run_id, reviewer, password)


def _count(page: Page, tag: str) -> str:
    return str(page.inner_text(f'[data-tag-row="{tag}"] [data-count]'))


def test_a_reviewer_tags_three_errors_with_the_keyboard_and_the_table_follows(served: Served, tmp_path) -> None:
    errors_url = f"{served.base_url}/runs/{served.run_id}/errors?subset=dev"
    with chromium() as browser:
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        log_in(page, served.base_url, served.reviewer, served.password, then=f"/runs/{served.run_id}/errors")
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
        expect(page.locator('[data-tag-row="mislabeled"] [data-count]')).to_have_text("2")
        assert (_count(page, "mislabeled"), _count(page, "blurry")) == ("2", "1")
        assert page.inner_text("[data-reviewed]") == "3"
        assert page.is_visible(f"#card-{third}.selected")

        page.keyboard.press("Enter")
        page.wait_for_selector("#detail [data-detail]")
        assert "Top 5 classes" in page.inner_text("#detail")
        page.keyboard.press("2")  # keys keep working while the large view is open, and it follows
        page.wait_for_selector('#detail [data-detail-tags] >> text="blurry"')
        expect(page.locator('[data-tag-row="blurry"] [data-count]')).to_have_text("2")
        page.screenshot(path=str(tmp_path / "errors-page.png"), full_page=True)
        page.keyboard.press("2")
        page.wait_for_selector(f'#card-{third} [data-tag-name="blurry"]', state="detached")
        page.keyboard.press("Escape")
        page.wait_for_selector("#detail [data-detail]", state="detached")

        page.goto(errors_url)  # everything was saved: a reload shows the same tags and who set them
        page.wait_for_selector(f'#card-{second} [data-tag-name="blurry"]')
        assert f"by {served.reviewer}" in page.inner_text(f"#card-{first}")
        assert (_count(page, "mislabeled"), _count(page, "blurry")) == ("2", "1")
    assert (tmp_path / "errors-page.png").stat().st_size > 10_000
