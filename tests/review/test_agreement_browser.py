"""Two reviewers in headless Chromium against a real ``errorbook serve``: the first starts a campaign (two-reviewer
agreement on by default) and proposes a relabel with the keyboard, which leaves the label as it was; the second sees
the open proposal and confirms it with ``c``; the history names both."""

from __future__ import annotations

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

FIRST, SECOND, PASSWORD = "rhea", "sam", "shared-password-123"


def _propose(page: Page) -> tuple[str, str, str]:
    """Press the key of a label other than the selected item's; returns (image id, old label, proposed label)."""
    page.wait_for_selector("#review-detail [data-item-detail]")
    card = page.locator("[data-item].selected")
    image_id, current = card.get_attribute("data-image-id") or "", card.get_attribute("data-label") or ""
    keys = page.eval_on_selector_all(
        "[data-review-toolbar] [data-key]", "buttons => buttons.map(b => [b.dataset.key, b.dataset.labelKey])"
    )
    key, new_label = next((k, name) for k, name in keys if name != current)
    page.keyboard.press(key)
    page.wait_for_selector(f'#item-{image_id}[data-status="proposed"]')
    return image_id, current, new_label


def test_a_proposal_by_one_reviewer_is_confirmed_by_another(tmp_path: Path) -> None:
    from playwright.sync_api import expect

    data_dir = tmp_path / "data"
    data_dir.mkdir()
    engine = make_engine(f"sqlite:///{data_dir / 'errorbook.db'}")
    upgrade_to_head(engine)
    with Session(engine) as session:
        fixture = make_run(session, sizes={"train": 10, "dev": 20, "test": 20}, error_rate=0.4, seed=23)
        session.commit()
        run_id = fixture.run.id
    engine.dispose()
    env = server_env(data_dir=data_dir)
    add_user(env, FIRST, password=PASSWORD)
    add_user(env, SECOND, password=PASSWORD)

    with serve(env, tmp_path / "serve.log") as base_url, chromium() as browser:
        first = browser.new_context(viewport={"width": 1360, "height": 960}).new_page()
        log_in(first, base_url, FIRST, PASSWORD, then=f"/runs/{run_id}/review")
        assert first.is_checked("[data-require-agreement]")  # on by default: the campaign touches test
        first.fill('input[name="suspicious_per_subset"]', "3")
        first.fill('input[name="correct_per_subset"]', "1")
        first.click('[data-start-review] button[type="submit"]')
        first.wait_for_selector("[data-claim]")
        review_path = first.url.split(base_url, 1)[1].split("?", 1)[0]
        first.click("[data-claim]")
        first.wait_for_selector("[data-item].selected")
        image_id, old_label, new_label = _propose(first)
        assert first.inner_text(f"#item-{image_id} [data-item-label]") == old_label  # the label stays
        expect(first.locator("[data-open-count]")).to_have_text("1")
        expect(first.locator(f'[data-proposal="{image_id}"]')).to_contain_text("yours: another reviewer confirms")
        first.keyboard.press("c")  # one's own proposal: the key does nothing, there is no confirm for it here
        assert first.get_attribute(f"#item-{image_id}", "data-status") == "proposed"

        second = browser.new_context(viewport={"width": 1360, "height": 960}).new_page()
        log_in(second, base_url, SECOND, PASSWORD, then=f"{review_path}")
        second.goto(f"{base_url}{review_path}?view=all")
        row = second.locator(f'[data-proposal="{image_id}"]')
        expect(row).to_contain_text(f"{old_label} → {new_label}")
        expect(row).to_contain_text(FIRST)
        second.click(f'[data-show-item="{image_id}"]')
        second.wait_for_selector(
            f'#review-detail [data-item-detail][data-image-id="{image_id}"] [data-detail-proposal]'
        )
        second.keyboard.press("c")
        second.wait_for_selector(f'#item-{image_id}[data-status="relabeled"]')
        assert second.inner_text(f"#item-{image_id} [data-item-label]") == new_label
        expect(second.locator("[data-open-count]")).to_have_text("0")
        expect(second.locator("[data-agreement-rate]")).to_have_text("100.0%")
        expect(second.locator("#review-detail .label-history")).to_contain_text(f"{FIRST}, confirmed by {SECOND}")
        second.screenshot(path=str(tmp_path / "agreement.png"), full_page=True)
    assert (tmp_path / "agreement.png").stat().st_size > 10_000

    engine = make_engine(f"sqlite:///{data_dir / 'errorbook.db'}")
    with Session(engine) as session:
        change = session.scalar(
            select(LabelChange).where(LabelChange.image_id == int(image_id), LabelChange.kind == "relabel")
        )
        assert change is not None and change.version == 2
        assert session.get(User, change.user_id).name == FIRST  # type: ignore[union-attr]
        assert session.get(User, change.confirmed_by_id).name == SECOND  # type: ignore[union-attr]
        assert session.get(Label, change.new_label_id).name == new_label  # type: ignore[union-attr]
    engine.dispose()
