"""A campaign page that tells the truth after refusals (issue 15.8), in headless Chromium against a real
``errorbook serve``: a new campaign shows its first items at once, a 409 on revert leaves the card with the
label the server holds, messages clear, and a change already reverted offers no second Revert."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from playwright.sync_api import expect
from sqlalchemy.orm import Session

from app.core.db import make_engine
from app.core.migrate import upgrade_to_head
from tests.browser import add_user, chromium, log_in, serve, server_env
from tests.factories import make_run

pytestmark = [pytest.mark.browser, pytest.mark.slow]

REVIEWER, PASSWORD = "remy", "remy-password-123"
LABELS = ("cat", "dog", "fox")


def test_refusals_leave_the_campaign_page_true(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    engine = make_engine(f"sqlite:///{data_dir / 'errorbook.db'}")
    upgrade_to_head(engine)
    with Session(engine) as session:
        run_id = make_run(session, label_names=LABELS, sizes={"train": 6, "dev": 16, "test": 16}, seed=23).run.id
        session.commit()
    engine.dispose()
    env = server_env(data_dir=data_dir)
    token = add_user(env, REVIEWER, password=PASSWORD)

    with serve(env, tmp_path / "serve.log") as base_url, chromium() as browser:
        api = httpx.Client(base_url=base_url, headers={"Authorization": f"Bearer {token}"})
        page = browser.new_page(viewport={"width": 1360, "height": 960})
        log_in(page, base_url, REVIEWER, PASSWORD, then=f"/runs/{run_id}/review")
        page.fill('input[name="suspicious_per_subset"]', "3")
        page.fill('input[name="correct_per_subset"]', "1")
        page.uncheck("[data-require-agreement]")  # one reviewer here: relabels apply at once
        page.click('[data-start-review] button[type="submit"]')
        # The first items are there at once: no empty grid waiting for "Take the next items".
        page.wait_for_selector("[data-item].selected", timeout=10_000)
        assert page.locator("[data-item]").count() > 0

        card = page.locator("[data-item].selected")
        image_id = card.get_attribute("data-image-id")
        first = card.get_attribute("data-label")
        second, third = [name for name in LABELS if name != first]
        page.keyboard.press(str(LABELS.index(second) + 1))  # relabel: change c1
        expect(page.locator(f"#item-{image_id}")).to_have_attribute("data-label", second)
        state = api.get(f"/api/images/{image_id}/label").json()
        other = api.post(
            f"/api/images/{image_id}/label", json={"label": third, "expected_version": state["label_version"]}
        )
        assert other.status_code == 200, other.text  # someone else changes it meanwhile: change c2
        later_change = other.json()["change_id"]

        page.click(f"#item-{image_id}")
        page.wait_for_selector(f'#review-detail [data-item-detail][data-image-id="{image_id}"]')
        rows = page.locator("#review-detail tr[data-change]")
        expect(rows).to_have_count(3)  # import, c1, c2 (newest first)
        c1 = rows.nth(1).get_attribute("data-change")
        for _ in range(2):  # stale version first, then "no longer in effect": both refused
            page.click(f'#review-detail [data-revert-change="{c1}"]')
            page.wait_for_selector("#flash .flash.error")
            expect(page.locator(f"#item-{image_id}")).to_have_attribute("data-label", third)
            expect(page.locator(f"#item-{image_id} [data-item-label]")).to_have_text(third)
            expect(page.locator(f"#item-{image_id}")).to_have_attribute(
                "data-version", str(other.json()["label_version"])
            )

        # Reverting the change in effect works; its row then says "reverted" instead of offering Revert again.
        page.click(f'#review-detail [data-revert-change="{later_change}"]')
        expect(page.locator("#flash .flash.error")).to_have_count(0)  # the refusal went when the next action began
        page.wait_for_selector("#flash .flash.ok")
        row = page.locator(f'#review-detail tr[data-change="{later_change}"]')
        expect(row).to_contain_text("reverted")
        expect(row.locator("[data-revert-change]")).to_have_count(0)
        expect(page.locator(f"#item-{image_id}")).to_have_attribute("data-label", second)
        expect(page.locator("#flash .flash")).to_have_count(0, timeout=15_000)  # a confirmation clears by itself
        assert api.get(f"/api/images/{image_id}/label").json()["label"] == second
