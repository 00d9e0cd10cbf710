"""A reviewer starts a campaign, then relabels and keeps items in dev and test with the keyboard in headless
Chromium against a real ``errorbook serve``, and sees both progress bars move."""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.core.db import make_engine
from app.core.migrate import upgrade_to_head
from app.models import Label, LabelChange, User
from tests.browser import add_user, chromium, log_in, serve, server_env
from tests.factories import make_run

if TYPE_CHECKING:
    from playwright.sync_api import Page

pytestmark = [pytest.mark.browser, pytest.mark.slow]

REVIEWER, PASSWORD = "rhea", "rhea-password-123"


def _done(page: Page, subset: str) -> str:
    return str(page.inner_text(f'[data-progress="{subset}"] [data-done]'))


def test_a_reviewer_relabels_dev_and_test_with_the_keyboard(tmp_path: Path) -> None:
    from playwright.sync_api import expect

    data_dir = tmp_path / "data"
    data_dir.mkdir()
    engine = make_engine(f"sqlite:///{data_dir / 'errorbook.db'}")
    upgrade_to_head(engine)
    with Session(engine) as session:
        fixture = make_run(session, sizes={"train": 10, "dev": 30, "test": 30}, error_rate=0.4, seed=17)
        session.commit()
        run_id = fixture.run.id
    engine.dispose()
    env = server_env(data_dir=data_dir)
    add_user(env, REVIEWER, password=PASSWORD)

    with serve(env, tmp_path / "serve.log") as base_url, chromium() as browser:
        page = browser.new_page(viewport={"width": 1360, "height": 960})
        log_in(page, base_url, REVIEWER, PASSWORD, then=f"/runs/{run_id}/review")
        page.wait_for_selector("[data-start-review]")
        page.fill('input[name="suspicious_per_subset"]', "4")
        page.fill('input[name="correct_per_subset"]', "1")
        page.uncheck("[data-require-agreement]")  # one reviewer here; test_agreement_browser has two
        page.click('[data-start-review] button[type="submit"]')
        page.wait_for_selector("[data-claim]")
        assert (_done(page, "dev"), _done(page, "test")) == ("0", "0")
        page.click("[data-claim]")

        page.wait_for_selector("[data-item].selected")
        page.wait_for_selector("#review-detail [data-item-detail]")
        first = page.locator("[data-item].selected")
        first_id = first.get_attribute("data-image-id")
        assert first.get_attribute("data-subset") == "dev"
        current = first.get_attribute("data-label")
        keys = page.eval_on_selector_all(
            "[data-review-toolbar] [data-key]", "buttons => buttons.map(b => [b.dataset.key, b.dataset.labelKey])"
        )
        predicted = first.get_attribute("data-predicted")
        choices = sorted(keys, key=lambda pair: pair[1] != predicted)  # the model's guess first, if it differs
        key, new_label = next((k, name) for k, name in choices if name != current)
        page.keyboard.press(key)
        page.wait_for_selector(f'#item-{first_id}[data-status="relabeled"]')
        assert page.inner_text(f"#item-{first_id} [data-item-label]") == new_label

        # The next undecided item is selected: review order alternates dev and test.
        second = page.locator("[data-item].selected")
        expect(page.locator(f"#item-{first_id}")).not_to_have_class(re.compile(r"\bselected\b"))
        second_id = second.get_attribute("data-image-id")
        assert second.get_attribute("data-subset") == "test"
        page.wait_for_selector(f'#review-detail [data-item-detail][data-image-id="{second_id}"]')
        page.keyboard.press("k")
        page.wait_for_selector(f'#item-{second_id}[data-status="kept"]')
        # The bars refresh by a request after each decision; on a loaded machine (the suite runs on two
        # processes, each with its own server and browser) that can take longer than expect's 5 s default.
        for subset in ("dev", "test"):
            expect(page.locator(f'[data-progress="{subset}"] [data-done]')).to_have_text("1", timeout=20_000)
        page.screenshot(path=str(tmp_path / "review-page.png"), full_page=True)

        page.keyboard.press("u")  # undo the keep: the test item is undecided again
        page.wait_for_selector(f'#item-{second_id}[data-status="pending"]')
        expect(page.locator('[data-progress="test"] [data-done]')).to_have_text("0", timeout=20_000)
        assert _done(page, "dev") == "1"
    assert (tmp_path / "review-page.png").stat().st_size > 10_000

    engine = make_engine(f"sqlite:///{data_dir / 'errorbook.db'}")
    with Session(engine) as session:
        change = session.scalar(
            select(LabelChange).where(LabelChange.image_id == int(first_id or 0), LabelChange.kind == "relabel")
        )
        assert change is not None and change.review_id is not None
        assert session.get(User, change.user_id).name == REVIEWER  # type: ignore[union-attr]
        assert session.get(Label, change.new_label_id).name == new_label  # type: ignore[union-attr]
    engine.dispose()
