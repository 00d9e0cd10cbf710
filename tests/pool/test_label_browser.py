"""A reviewer labels the batch a run ranked, from the keyboard, in headless Chromium against a real
``errorbook serve``: Enter accepts the suggestion, a digit picks another label, x marks not usable, Space selects
for a bulk accept; the page counts what was labelled this session and the database holds versioned changes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.core.db import make_engine
from app.core.migrate import upgrade_to_head
from app.models import Dataset, Image, Label, LabelChange
from tests.browser import add_user, chromium, log_in, serve, server_env
from tests.factories import make_run
from tests.pool.conftest import add_pool, score

pytestmark = [pytest.mark.browser, pytest.mark.slow]

REVIEWER, PASSWORD = "lena", "lena-password-123"


def test_a_reviewer_labels_a_ranked_batch_with_the_keyboard(tmp_path: Path) -> None:
    from playwright.sync_api import expect

    data_dir = tmp_path / "data"
    data_dir.mkdir()
    engine = make_engine(f"sqlite:///{data_dir / 'errorbook.db'}")
    upgrade_to_head(engine)
    with Session(engine) as session:
        fixture = make_run(session, sizes={"train": 6, "dev": 6, "test": 6}, seed=5)
        images = add_pool(session, fixture, 8, source="web")
        probs = np.random.default_rng(0).dirichlet(np.ones(3), size=8).astype(np.float32)
        score(session, fixture, images, probs, np.random.default_rng(1).normal(size=(8, 16)).astype(np.float32))
        fresh = Dataset(name="no-labels-yet")
        session.add(fresh)
        session.flush()
        for i in range(2):
            session.add(Image(dataset_id=fresh.id, sha256=f"{i:064x}", filename=f"new-{i}.jpg", from_pool=True))
        session.commit()
        dataset_id, run_id, fresh_id = fixture.dataset.id, fixture.run.id, fresh.id
    env = server_env(data_dir=data_dir)
    add_user(env, REVIEWER, password=PASSWORD)

    with serve(env, tmp_path / "serve.log") as base_url, chromium() as browser:
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        log_in(page, base_url, REVIEWER, PASSWORD, then=f"/datasets/{dataset_id}/label?run_id={run_id}&limit=6")
        page.wait_for_selector("[data-label-grid]")
        expect(page.locator("[data-placement-note]")).to_contain_text("join train")
        expect(page.locator("[data-placement]").first).to_have_text("joins train")  # web is not the target source
        cards = page.locator("[data-card]")
        expect(cards).to_have_count(6)
        ids = [int(cards.nth(i).get_attribute("data-image-id") or 0) for i in range(6)]
        suggestions = [cards.nth(i).get_attribute("data-suggestion") for i in range(6)]

        cards.nth(0).focus()
        page.keyboard.press("Enter")  # the suggestion
        expect(page.locator("[data-session-count]")).to_have_text("1")
        expect(cards.nth(1)).to_be_focused()
        page.keyboard.press("2")  # the second label on the key list: dog
        expect(page.locator("[data-session-count]")).to_have_text("2")
        page.keyboard.press("x")  # not usable
        expect(page.locator("[data-session-count]")).to_have_text("3")
        page.keyboard.press("Space")
        page.keyboard.press("ArrowRight")
        page.keyboard.press("Space")
        expect(page.locator("[data-selected-count]")).to_have_text("2")
        page.click("[data-bulk-accept]")
        expect(page.locator("[data-session-count]")).to_have_text("5")
        expect(page.locator("[data-progress]")).to_have_text("5 of 6 in this batch labelled")
        expect(cards.nth(0).locator("[data-card-status]")).to_have_text(f"labelled {suggestions[0]}")

        # A dataset uploaded unlabeled, with no labels and no run: the first label is typed, then it has a key.
        page.goto(f"{base_url}/datasets/{fresh_id}/label")
        expect(page.locator("[data-refusal]")).to_contain_text("No finished run yet")
        fresh_cards = page.locator("[data-card]")
        expect(fresh_cards).to_have_count(2)
        fresh_cards.nth(0).focus()
        page.keyboard.press("Enter")  # no suggestion: Enter goes to the label box
        expect(page.locator("[data-new-label-name]")).to_be_focused()
        page.keyboard.type("heron")
        page.keyboard.press("Enter")
        expect(page.locator("[data-session-count]")).to_have_text("1")
        expect(page.locator('[data-key-label="heron"]')).to_have_text("1 heron")
        expect(fresh_cards.nth(1)).to_be_focused()
        page.keyboard.press("1")
        expect(page.locator("[data-session-count]")).to_have_text("2")

    with Session(engine) as session:
        names = {label.id: label.name for label in session.scalars(select(Label))}
        stored = {image.id: image for image in session.scalars(select(Image).where(Image.id.in_(ids)))}
        assert names[stored[ids[0]].label_id] == suggestions[0]
        assert names[stored[ids[1]].label_id] == "dog"
        assert stored[ids[2]].label_id is None and stored[ids[2]].excluded_reason == "not usable"
        assert names[stored[ids[3]].label_id] == suggestions[3] and names[stored[ids[4]].label_id] == suggestions[4]
        assert stored[ids[5]].label_id is None and stored[ids[5]].excluded_reason is None
        kinds = session.scalars(select(LabelChange.kind).where(LabelChange.image_id.in_(ids))).all()
        assert sorted(kinds) == ["ambiguous", "label", "label", "label", "label"]
        fresh_labels = session.scalars(select(Label.name).where(Label.dataset_id == fresh_id)).all()
        assert fresh_labels == ["heron"]
        heron = session.scalars(select(Image.label_id).where(Image.dataset_id == fresh_id)).all()
        assert len(set(heron)) == 1 and None not in heron
    engine.dispose()
