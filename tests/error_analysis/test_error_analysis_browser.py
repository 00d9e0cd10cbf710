"""A reviewer tags three errors with the keyboard in headless Chromium against a real ``errorbook serve``."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, Page, expect
from sqlalchemy.orm import Session

from app.error_analysis import service
from tests.browser import add_user, chromium, log_in, serve, server_env
from tests.conftest import BACKENDS, _new_database
from tests.factories import make_run

pytestmark = [pytest.mark.browser, pytest.mark.slow]


@dataclass
class Served:
    base_url: str
    run_id: int
    reviewer: str
    password: str
    token: str


@pytest.fixture(scope="module", params=BACKENDS)
def served(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """One server per backend for the module: each test works on its own cards."""
    tmp_path = tmp_path_factory.mktemp(f"errors-{request.param}")
    for database in _new_database(request.param, tmp_path):
        with Session(database.engine) as session:
            fixture = make_run(session, sizes={"dev": 40, "test": 10}, error_rate=0.5, seed=31)
            service.add_tag(session, dataset_id=fixture.dataset.id, name="blurry")
            session.commit()
            run_id = fixture.run.id
        env = server_env(data_dir=tmp_path / "data", database_url=database.url)
        reviewer, password = "rita", "rita-password-123"
        token = add_user(env, reviewer, password=password)
        with serve(env, tmp_path / "serve.log") as base_url:
            yield Served(base_url, run_id, reviewer, password, token)


@pytest.fixture(scope="module")
def browser(served: Served) -> Iterator[Browser]:
    with chromium() as launched:
        yield launched


def _api_tags(served: Served, image_id: str) -> list[str]:
    answer = httpx.get(
        f"{served.base_url}/api/runs/{served.run_id}/errors/{image_id}",
        headers={"Authorization": f"Bearer {served.token}"},
    )
    assert answer.status_code == 200, answer.text
    return list(answer.json()["item"]["tags"])


def _count(page: Page, tag: str) -> str:
    return str(page.inner_text(f'[data-tag-row="{tag}"] [data-count]'))


def test_a_reviewer_tags_three_errors_with_the_keyboard_and_the_table_follows(
    served: Served, browser: Browser, tmp_path: Path
) -> None:
    errors_url = f"{served.base_url}/runs/{served.run_id}/errors?subset=dev"
    with browser.new_context(viewport={"width": 1280, "height": 900}) as context:
        page = context.new_page()
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


def test_the_large_view_follows_the_selection_so_a_key_tags_the_image_shown(served: Served, browser: Browser) -> None:
    """Issue 15.1: Enter, then down, then 2 tagged the card hidden under a panel that still showed the first."""
    with browser.new_context(viewport={"width": 1280, "height": 900}) as context:
        page = context.new_page()
        log_in(page, served.base_url, served.reviewer, served.password, then=f"/runs/{served.run_id}/errors")
        ids = page.eval_on_selector_all("[data-card]", "cards => cards.map(card => card.dataset.imageId)")
        columns = page.evaluate(
            "() => { const c = [...document.querySelectorAll('[data-card]')];"
            " return c.filter(x => x.offsetTop === c[0].offsetTop).length; }"
        )
        opened = ids[-columns - 1]  # a card with one below it, away from the other test's cards
        below = ids[-1]
        page.click(f"#card-{opened} .meta")  # select, without opening
        page.keyboard.press("Enter")
        page.wait_for_selector(f'#detail [data-detail][data-image-id="{opened}"]')
        page.keyboard.press("ArrowDown")
        page.keyboard.press("2")  # blurry
        page.wait_for_selector(f'#card-{below} [data-tag-name="blurry"]')
        # The panel shows the image that got the tag, and the server agrees which one that was.
        page.wait_for_selector(f'#detail [data-detail][data-image-id="{below}"]:not(.stale)')
        assert page.inner_text("#detail h2") == f"Image {below}"
        expect(page.locator("#detail [data-detail-tags]")).to_contain_text("blurry")
        assert _api_tags(served, below) == ["blurry"]
        assert _api_tags(served, opened) == []
