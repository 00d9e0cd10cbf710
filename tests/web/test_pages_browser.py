"""Pages as a newcomer meets them, in headless Chromium against one real ``errorbook serve`` for the module:
a phone-width layout that never overflows (issue 15.17), a 404 page with the navigation (15.16), readable
class-balance labels (15.14) and a label merge that asks first and can be undone (15.2)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, BrowserContext, Page, expect
from sqlalchemy.orm import Session

from app.core.db import make_engine
from app.core.migrate import upgrade_to_head
from tests.browser import add_user, chromium, log_in, serve, server_env
from tests.factories import make_run

pytestmark = [pytest.mark.browser, pytest.mark.slow]

ADMIN, PASSWORD = "ada", "ada-password-123"
SCREENSHOTS = Path(__file__).resolve().parents[2] / "tmp-screenshots"  # only when ERRORBOOK_SCREENSHOTS is set


@dataclass
class Served:
    base_url: str
    token: str
    run_id: int
    dataset_id: int
    split_id: int
    fruit_id: int  # a dataset of its own for the merge
    review_id: int


def _curves(epochs: int) -> list[dict[str, float]]:
    return [
        {
            "epoch": i + 1,
            "train_loss": 1.2 / (i + 1),
            "dev_loss": 1.3 / (i + 1) + 0.1,
            "train_accuracy": 1 - 0.5 / (i + 1),
            "dev_accuracy": 0.9 - 0.5 / (i + 1),
        }
        for i in range(epochs)
    ]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    tmp_path = tmp_path_factory.mktemp("pages")
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    engine = make_engine(f"sqlite:///{data_dir / 'errorbook.db'}")
    upgrade_to_head(engine)
    long_names = ("cat", "dog", "a rather long label name for a phone")
    with Session(engine) as session:
        fixture = make_run(session, label_names=long_names, sizes={"train": 12, "dev": 24, "test": 12}, seed=5)
        fixture.run.history = _curves(6)
        settings = {"epochs": 6, "lr": 0.001, "batch_size": 32, "weight_decay": 0.0, "seed": 0, "human_error": 0.02}
        fixture.run.config = {**fixture.run.config, **settings}
        fixture.run.metrics = {
            s: {"count": n, "accuracy": a, "error": 1 - a, "loss": 0.4}
            for s, n, a in (("train", 12, 0.95), ("dev", 24, 0.7), ("test", 12, 0.72))
        }
        gaps = {"avoidable_bias": 0.03, "variance": 0.25, "overfitting_to_dev": 0.02}
        fixture.run.diagnosis = {"gaps": gaps, "largest": "variance", "advice": "More data or regularisation."}
        fixture.run.confusion = {"labels": list(long_names), "matrix": [[7, 1, 0], [2, 6, 1], [0, 1, 6]]}
        fruit = make_run(session, label_names=("apple", "banana", "cherry"), sizes={"dev": 9}, seed=6, name="fruit")
        session.commit()
        ids = (fixture.run.id, fixture.dataset.id, fixture.split.id, fruit.dataset.id)
    engine.dispose()
    env = server_env(data_dir=data_dir)
    token = add_user(env, ADMIN, password=PASSWORD, role="admin")
    with serve(env, tmp_path / "serve.log", worker=True) as base_url:  # a real worker builds the live split
        review = httpx.post(
            f"{base_url}/api/datasets/{ids[1]}/reviews",
            json={"run_id": ids[0], "suspicious_per_subset": 3, "correct_per_subset": 1},
            headers={"Authorization": f"Bearer {token}"},
        )
        assert review.status_code == 201, review.text
        yield Served(base_url, token, *ids, review_id=review.json()["review_id"])


@pytest.fixture(scope="module")
def browser(served: Served) -> Iterator[Browser]:
    with chromium() as launched:
        yield launched


@pytest.fixture(scope="module")
def phone(browser: Browser, served: Served) -> Iterator[Page]:
    context: BrowserContext = browser.new_context(viewport={"width": 390, "height": 844}, device_scale_factor=1)
    page = context.new_page()
    log_in(page, served.base_url, ADMIN, PASSWORD)
    yield page
    context.close()


def _screenshot(page: Page, name: str) -> None:
    import os

    if os.environ.get("ERRORBOOK_SCREENSHOTS"):
        SCREENSHOTS.mkdir(exist_ok=True)
        page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


OVERFLOW = """() => {
  const root = document.documentElement;
  const name = el => el.tagName.toLowerCase() + (typeof el.className === 'string' && el.className
    ? '.' + el.className.split(' ').join('.') : '');
  const wide = [...document.querySelectorAll('body *')]
    .filter(el => el.getBoundingClientRect().right > root.clientWidth + 1)
    .map(name);
  return {scroll: root.scrollWidth, client: root.clientWidth, wide: wide.slice(0, 8)};
}"""


def _assert_fits(page: Page, what: str) -> None:
    measured = page.evaluate(OVERFLOW)
    assert measured["scroll"] <= measured["client"], f"{what} overflows at 390 px: {measured}"


def test_no_page_overflows_at_phone_width(phone: Page, served: Served) -> None:
    pages = {
        "home": "/",
        "datasets": "/datasets",
        "dataset": f"/datasets/{served.dataset_id}",
        "upload": f"/datasets/{served.dataset_id}/upload",
        "splits": f"/datasets/{served.dataset_id}/splits",
        "split": f"/splits/{served.split_id}",
        "runs": "/runs",
        "run-form": f"/runs/new?dataset_id={served.dataset_id}",
        "run": f"/runs/{served.run_id}",
        "errors": f"/runs/{served.run_id}/errors",
        "review-start": f"/runs/{served.run_id}/review",
        "review": f"/reviews/{served.review_id}",
        "jobs": "/jobs",
        "users": "/users",
        "api-docs": "/api/docs",
        "not-found": "/no/such/page",
    }
    for name, path in pages.items():
        answer = phone.goto(f"{served.base_url}{path}")
        assert answer is not None and answer.status < 500, (path, answer and answer.status)
        phone.wait_for_load_state("networkidle")
        _screenshot(phone, f"390-{name}")
        _assert_fits(phone, path)
    # The error detail panel, open over the grid.
    phone.goto(f"{served.base_url}/runs/{served.run_id}/errors")
    phone.wait_for_selector("[data-card].selected")
    phone.keyboard.press("Enter")
    phone.wait_for_selector("#detail [data-detail]")
    _screenshot(phone, "390-errors-detail")
    _assert_fits(phone, "the error detail panel")
    inside = phone.eval_on_selector("#detail", "panel => [panel.scrollWidth, panel.clientWidth]")
    assert inside[0] <= inside[1], f"the error detail panel scrolls sideways: {inside}"


def test_an_unknown_page_has_the_navigation_and_the_favicon_loads(phone: Page, served: Served) -> None:
    answer = phone.goto(f"{served.base_url}/datasets/{served.dataset_id}/nonsense")
    assert answer is not None and answer.status == 404
    nav = phone.locator("header.topbar nav")
    expect(nav).to_contain_text("Datasets")
    assert "there is no page at" in phone.inner_text("main")
    icon = phone.evaluate("() => fetch(document.querySelector('link[rel=icon]').href).then(r => r.status)")
    assert icon == 200


def test_class_balance_labels_are_at_least_11_px(browser: Browser, served: Served) -> None:
    for width in (1280, 390):
        with browser.new_context(viewport={"width": width, "height": 900}) as context:
            page = context.new_page()
            log_in(page, served.base_url, ADMIN, PASSWORD, then=f"/datasets/{served.dataset_id}")
            sizes = page.eval_on_selector_all(
                'svg[aria-label="Images per label"] text',
                "texts => texts.map(t => t.getBoundingClientRect().height)",
            )
            assert sizes and min(sizes) >= 11, (width, sizes)


def test_a_merge_asks_first_with_the_count_and_is_undone_from_the_history(browser: Browser, served: Served) -> None:
    with browser.new_context(viewport={"width": 1280, "height": 900}) as context:
        page = context.new_page()
        log_in(page, served.base_url, ADMIN, PASSWORD, then=f"/datasets/{served.fruit_id}")
        bananas = int(page.inner_text('[data-label-row="banana"] td.num').replace(",", ""))
        assert bananas > 0
        questions: list[str] = []

        def answer(dialog) -> None:  # type: ignore[no-untyped-def]
            questions.append(dialog.message)
            dialog.dismiss() if len(questions) == 1 else dialog.accept()

        page.on("dialog", answer)
        row = page.locator('[data-label-row="banana"]')
        row.locator("select").select_option(label="cherry")
        row.locator('button:has-text("Merge")').click()  # dismissed: nothing happens
        assert questions[0].startswith(f"Move {bananas} image") and "labelled banana to cherry" in questions[0]
        expect(page.locator('[data-label-row="banana"]')).to_be_visible()
        row.locator('button:has-text("Merge")').click()  # accepted
        page.wait_for_selector('[data-label-row="banana"]', state="detached")
        _screenshot(page, "dataset-after-merge")
        undo = page.locator("[data-label-event] button")
        expect(undo).to_be_visible()  # the history opens on the merge, with its undo
        undo.click()
        page.wait_for_selector('[data-label-row="banana"]')
        assert page.inner_text('[data-label-row="banana"] td.num') == str(bananas)
        assert "undid the merge of banana into cherry" in page.inner_text(".label-history")
        assert len(questions) == 3 and "back to banana" in questions[2]
        labels = httpx.get(
            f"{served.base_url}/api/datasets/{served.fruit_id}", headers={"Authorization": f"Bearer {served.token}"}
        ).json()["labels"]
        assert labels["banana"] == bananas


def test_the_split_form_explains_bad_ratios_beside_them_and_marks_a_stale_preview(
    browser: Browser, served: Served
) -> None:
    """Issue 15.7: ratios adding to 1.3 flashed "small_ratios must add up to 1" at the top of the page."""
    with browser.new_context(viewport={"width": 1280, "height": 900}) as context:
        page = context.new_page()
        log_in(page, served.base_url, ADMIN, PASSWORD, then=f"/datasets/{served.dataset_id}/splits")
        page.wait_for_selector("#split-preview[data-for] table")
        page.fill('input[name="ratio_train"]', "0.9")
        page.press('input[name="ratio_train"]', "Tab")  # change: a new preview is asked for
        ratios = page.locator('[data-field-error="ratios"]')
        expect(ratios).to_contain_text("add up to 1.3")
        expect(page.locator("[data-preview-blocked]")).to_be_visible()
        assert "small_ratios" not in page.inner_text("body")
        assert page.inner_text("#flash").strip() == ""
        # The ratios fixed, the preview comes back; typing into a field marks it out of date until it is redone.
        page.fill('input[name="ratio_train"]', "0.6")
        page.press('input[name="ratio_train"]', "Tab")
        expect(ratios).to_have_text("")
        expect(page.locator("[data-preview-blocked]")).to_have_count(0)
        expect(page.locator("#split-preview")).not_to_have_class("stale")
        page.type('input[name="seed"]', "7")  # no change event yet: only typing
        expect(page.locator("#split-preview")).to_have_class("stale")
        expect(page.locator("[data-stale-note]")).to_be_visible()
        _screenshot(page, "split-form-stale")
        page.press('input[name="seed"]', "Tab")
        expect(page.locator("#split-preview")).not_to_have_class("stale")
        expect(page.locator("[data-stale-note]")).to_be_hidden()


def test_the_split_page_follows_its_job_live_to_the_result(browser: Browser, served: Served) -> None:
    """Issue 15.5: the split page said "queued … reload" and never changed; its badge and its job bar must
    agree while the worker builds it, and the result appears without a reload."""
    auth = {"Authorization": f"Bearer {served.token}"}
    # The one worker is busy with a demo job first, so the page really starts on a queued split.
    demo = httpx.post(f"{served.base_url}/api/jobs/demo", json={"seconds": 6, "steps": 6}, headers=auth)
    assert demo.status_code == 202, demo.text
    created = httpx.post(
        f"{served.base_url}/api/datasets/{served.fruit_id}/splits",
        json={"seed": 4},
        headers={"Authorization": f"Bearer {served.token}"},
    )
    assert created.status_code == 202, created.text
    with browser.new_context(viewport={"width": 1280, "height": 900}) as context:
        page = context.new_page()
        log_in(page, served.base_url, ADMIN, PASSWORD, then=f"/splits/{created.json()['split_id']}")
        page.evaluate("() => { window.loadedOnce = true; }")  # gone if the page were reloaded
        seen = []
        while page.get_attribute("#split-live", "data-split-live") in ("queued", "building") and len(seen) < 300:
            # Badge and bar read in one go from the same DOM: read one by one, a swap could fall between them.
            badge, job = page.evaluate(
                """() => {
                    const region = document.querySelector("#split-live");
                    const badge = region.querySelector("h1 .badge"), bar = region.querySelector(".job-status");
                    return [badge ? badge.innerText : "", bar ? bar.innerText : ""];
                }"""
            )
            seen.append((badge, job.split(" ")[0]))
            page.wait_for_timeout(300)
        expect(page.locator('#split-live[data-split-live="ready"]')).to_be_visible(timeout=60_000)
        assert seen and seen[0][0] == "queued", seen  # it was seen unfinished, then finished in place
        assert page.evaluate("() => window.loadedOnce === true")
        assert "reload" not in page.inner_text("main")
        expect(page.locator("#split-live h1 .badge")).to_have_text("ready")
        consistent = {("queued", "queued"), ("building", "running"), ("queued", ""), ("building", "")}
        disagreeing = [pair for pair in seen if pair not in consistent]
        assert not disagreeing, (disagreeing, len(seen))
