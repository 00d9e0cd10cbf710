"""The embedding map in headless Chromium against a real ``errorbook serve``: it draws, hovers, colours, pans,
zooms and box-selects, and the selection shows as a grid of the right images."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pytest
from playwright.sync_api import Browser, Page, expect
from sqlalchemy.orm import Session

from app.core.storage import LocalBlobStore
from app.embeddings.store import EmbeddingStore, MapStore
from app.models import EmbeddingSet
from tests.browser import add_user, chromium, log_in, serve, server_env
from tests.conftest import BACKENDS, _new_database
from tests.factories import colour_jpeg, make_run

pytestmark = [pytest.mark.browser, pytest.mark.slow]
BACKBONE = "efficientnet_lite0"


@dataclass
class Served:
    base_url: str
    dataset_id: int
    bare_dataset_id: int
    left: list[int]  # images drawn in the upper-left cluster
    right: list[int]
    reviewer: str
    password: str
    run_id: int
    dev: list[int]


def _cluster(centre: tuple[float, float], count: int) -> np.ndarray:
    side = int(np.ceil(np.sqrt(count)))
    return np.array([(centre[0] + 0.02 * (i % side), centre[1] + 0.02 * (i // side)) for i in range(count)])


@pytest.fixture(scope="module", params=BACKENDS)
def served(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    tmp_path = tmp_path_factory.mktemp(f"map-{request.param}")
    data_dir = tmp_path / "data"
    thumb = LocalBlobStore(data_dir / "blobs").put_bytes(colour_jpeg((200, 60, 60), seed=1))
    for database in _new_database(request.param, tmp_path):
        with Session(database.engine) as session:
            fixture = make_run(session, sizes={"train": 20, "dev": 12, "test": 8}, seed=8, thumb_sha256=thumb)
            bare = make_run(session, sizes={"train": 2}, seed=9)
            ids = [image.id for subset in ("train", "dev", "test") for image in fixture.images[subset]]
            left, right = ids[::2], ids[1::2]
            session.add(EmbeddingSet(dataset_id=fixture.dataset.id, backbone=BACKBONE, status="ready", count=len(ids)))
            session.commit()
            dataset_id, bare_id = fixture.dataset.id, bare.dataset.id
            run_id, dev = fixture.run.id, [image.id for image in fixture.images["dev"]]
        store = EmbeddingStore(data_dir / "embeddings", dataset_id=dataset_id, backbone=BACKBONE)
        store.append(ids, np.eye(len(ids), 8, dtype=np.float32))
        MapStore(store).write(left + right, np.vstack([_cluster((0.1, 0.15), len(left)), _cluster((0.7, 0.65), 20)]))
        env = server_env(data_dir=data_dir, database_url=database.url)
        reviewer, password = "mara", "mara-password-123"
        add_user(env, reviewer, password=password)
        with serve(env, tmp_path / "serve.log") as base_url:
            yield Served(base_url, dataset_id, bare_id, left, right, reviewer, password, run_id, dev)


@pytest.fixture(scope="module")
def browser(served: Served) -> Iterator[Browser]:
    with chromium() as launched:
        yield launched


def _screen_of(page: Page, image_id: int) -> tuple[float, float]:
    found = page.evaluate("id => window.errorbookMap.screenOf(id)", image_id)
    assert found is not None, f"image {image_id} is not on the map"
    return float(found["x"]), float(found["y"])


def _open_map(page: Page, served: Served, dataset_id: int) -> None:
    log_in(page, served.base_url, served.reviewer, served.password, then=f"/datasets/{dataset_id}/map")


def test_the_map_hovers_colours_pans_zooms_and_box_selects_into_a_grid(served: Served, browser: Browser) -> None:
    page = browser.new_page(viewport={"width": 1200, "height": 900})
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    _open_map(page, served, served.dataset_id)
    expect(page.locator("canvas[data-map-canvas]")).to_have_attribute("data-points", "40")
    expect(page.locator("[data-map-status]")).to_contain_text("40 images")
    expect(page.locator("[data-map-legend] li").first).to_be_visible()  # coloured by label

    # Hover: the thumbnail of the image under the pointer.
    target = served.right[3]
    page.mouse.move(*_screen_of(page, target))
    hover = page.locator("[data-map-hover]")
    expect(hover).to_be_visible()
    expect(hover).to_have_attribute("data-image-id", str(target))
    expect(hover.locator("img")).to_have_attribute("src", f"/images/{target}/thumb")
    page.wait_for_function("() => document.querySelector('[data-map-hover] img').naturalWidth > 0")

    # Colour by subset of the split, then by right / wrong of the run: the legend follows.
    page.select_option('[data-map-controls] select[name="by"]', "subset")
    expect(page.locator("[data-map-legend]")).to_contain_text("train")
    expect(page.locator("[data-map-legend]")).to_contain_text("test")
    page.select_option('[data-map-controls] select[name="by"]', "correct")
    expect(page.locator("[data-map-legend]")).to_contain_text("wrong")

    # Pan by dragging, zoom with the wheel: the same image moves on screen.
    before = _screen_of(page, target)
    page.mouse.move(600, 850)
    page.mouse.down()
    page.mouse.move(650, 820, steps=5)
    page.mouse.up()
    panned = _screen_of(page, target)
    assert panned[0] == pytest.approx(before[0] + 50, abs=1) and panned[1] == pytest.approx(before[1] - 30, abs=1)
    page.mouse.move(*panned)
    page.mouse.wheel(0, -400)
    zoomed_neighbour = _screen_of(page, served.right[4])
    assert _screen_of(page, target) == pytest.approx(panned, abs=1)  # zoom keeps the point under the pointer
    page.click("[data-map-reset]")
    spread = abs(zoomed_neighbour[0] - panned[0])
    after_reset = abs(_screen_of(page, served.right[4])[0] - _screen_of(page, target)[0])
    assert spread > 1.5 * after_reset  # the wheel had zoomed in

    # Box-select the upper-left cluster: the grid shows exactly its images.
    corners = [_screen_of(page, image_id) for image_id in served.left]
    low = (min(x for x, _ in corners) - 8, min(y for _, y in corners) - 8)
    high = (max(x for x, _ in corners) + 8, max(y for _, y in corners) + 8)
    page.click("[data-map-select-mode]")
    page.mouse.move(*low)
    page.mouse.down()
    page.mouse.move(*high, steps=8)
    page.mouse.up()
    selection = page.locator("[data-map-selection]")
    expect(selection).to_be_visible()
    expect(selection.locator("[data-map-selected-count]")).to_have_text(str(len(served.left)))
    shown = selection.locator("[data-map-grid] [data-image-id]")
    expect(shown).to_have_count(len(served.left))
    assert sorted(int(v) for v in shown.evaluate_all("els => els.map(e => e.dataset.imageId)")) == sorted(served.left)
    assert shown.first.get_attribute("href", timeout=1000).startswith("/images/")
    expect(selection.locator("[data-selection-actions] button[data-selection-exclude]")).to_be_visible()
    page.click("[data-map-clear]")
    expect(selection).to_be_hidden()
    assert errors == []
    page.close()


def test_without_embeddings_the_map_says_which_job_to_start(served: Served, browser: Browser) -> None:
    page = browser.new_page()
    _open_map(page, served, served.bare_dataset_id)
    missing = page.locator("[data-map-missing]")
    expect(missing).to_be_visible()
    expect(missing).to_contain_text("POST /api/datasets/")
    page.click("[data-map-start]")
    expect(page.locator("[data-map-status]")).to_contain_text("Embeddings job")
    page.close()


def _inside(polygon: list[tuple[float, float]], x: float, y: float) -> bool:
    within = False
    for (xi, yi), (xj, yj) in zip(polygon, polygon[-1:] + polygon[:-1], strict=True):
        if (yi > y) != (yj > y) and x < (xj - xi) * (y - yi) / (yj - yi) + xi:
            within = not within
    return within


def test_a_lasso_selects_what_it_encloses_and_the_selection_is_excluded_and_scored_again(
    served: Served, browser: Browser
) -> None:
    page = browser.new_page(viewport={"width": 1200, "height": 900})
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    _open_map(page, served, served.dataset_id)
    expect(page.locator("canvas[data-map-canvas]")).to_have_attribute("data-points", "40")
    corners = {image_id: _screen_of(page, image_id) for image_id in served.left}
    low_x, low_y = min(x for x, _ in corners.values()) - 10, min(y for _, y in corners.values()) - 10
    high_x, high_y = max(x for x, _ in corners.values()) + 10, max(y for _, y in corners.values()) + 10
    # A triangle over the cluster's upper-left half: a box around it would take the whole cluster.
    triangle = [(low_x, low_y), (high_x, low_y), (low_x, high_y)]
    inside = sorted(image_id for image_id, at in corners.items() if _inside(triangle, *at))
    assert 0 < len(inside) < len(served.left)
    page.click("[data-map-lasso-mode]")
    expect(page.locator("[data-map-lasso-mode]")).to_have_attribute("aria-pressed", "true")
    page.mouse.move(*triangle[0])
    page.mouse.down()
    for (x0, y0), (x1, y1) in zip(triangle, triangle[1:] + triangle[:1], strict=True):
        for step in range(1, 11):
            page.mouse.move(x0 + (x1 - x0) * step / 10, y0 + (y1 - y0) * step / 10)
    page.mouse.up()
    selection = page.locator("[data-map-selection]")
    expect(selection.locator("[data-map-selected-count]")).to_have_text(str(len(inside)))
    shown = selection.locator("[data-map-grid] [data-image-id]")
    expect(shown).to_have_count(len(inside))
    assert sorted(int(v) for v in shown.evaluate_all("els => els.map(e => e.dataset.imageId)")) == inside

    # Exclude exactly the lassoed images, then score them again: each action reports what it did.
    actions = selection.locator("[data-selection-actions]")
    actions.locator('input[name="reason"]').fill("lassoed: ambiguous")
    actions.locator("[data-selection-exclude]").click()
    expect(actions.locator("[data-selection-result]")).to_have_text(f"{len(inside)} excluded")
    reasons = page.evaluate(
        """ids => Promise.all(ids.map(id => fetch('/api/images/' + id + '/label').then(r => r.json())))""",
        served.left,
    )
    excluded = sorted(state["image_id"] for state in reasons if state["excluded_reason"] == "lassoed: ambiguous")
    assert excluded == inside
    actions.locator("[data-selection-include]").click()
    expect(actions.locator("[data-selection-result]")).to_have_text(f"{len(inside)} scored again")
    reasons = page.evaluate(
        """ids => Promise.all(ids.map(id => fetch('/api/images/' + id + '/label').then(r => r.json())))""", inside
    )
    assert all(state["excluded_reason"] is None for state in reasons)
    assert errors == []
    page.close()


def test_the_ticked_neighbours_are_added_to_a_review_campaign(served: Served, browser: Browser) -> None:
    page = browser.new_page(viewport={"width": 1200, "height": 900})
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    log_in(page, served.base_url, served.reviewer, served.password, then=f"/datasets/{served.dataset_id}")
    started = page.evaluate(
        """([datasetId, runId]) => fetch('/api/datasets/' + datasetId + '/reviews', {method: 'POST',
             headers: {'Content-Type': 'application/json', 'X-CSRF-Token': window.errorbook.csrfToken()},
             body: JSON.stringify({run_id: runId, suspicious_per_subset: 2, correct_per_subset: 1, seed: 3,
                                   require_agreement: false})}).then(r => r.json())""",
        [served.dataset_id, served.run_id],
    )
    review_id = started["review_id"]
    page.goto(f"{served.base_url}/datasets/{served.dataset_id}?similar_to={served.dev[0]}&subset=dev")
    picks = page.locator("#image-grid [data-pick]")
    expect(picks).to_have_count(len(served.dev))  # the image and its dev neighbours, all ticked
    actions = page.locator("#image-grid [data-selection-actions]")
    expect(actions.locator("[data-selection-count]")).to_have_text(str(len(served.dev)))
    picks.nth(1).uncheck()
    expect(actions.locator("[data-selection-count]")).to_have_text(str(len(served.dev) - 1))
    ticked = [int(v) for v in picks.evaluate_all("els => els.filter(e => e.checked).map(e => e.value)")]
    before = page.evaluate(f"() => fetch('/api/reviews/{review_id}').then(r => r.json())")
    present = {item["image_id"] for item in before["items"]}
    actions.locator('select[name="review_id"]').select_option(str(review_id))
    actions.locator("[data-selection-campaign]").click()
    fresh = [image_id for image_id in ticked if image_id not in present]
    already = len(ticked) - len(fresh)
    expect(actions.locator("[data-selection-result]")).to_have_text(
        f"{len(fresh)} added to review {review_id}" + (f", {already} were in it" if already else "")
    )
    after = page.evaluate(f"() => fetch('/api/reviews/{review_id}').then(r => r.json())")
    picked = sorted(item["image_id"] for item in after["items"] if item["selection"] == "picked")
    assert picked == sorted(fresh)  # exactly the ticked ones the campaign lacked
    # A filter swaps the grid (htmx): its new cards start ticked and the new form counts them.
    page.select_option('select[name="subset"]', "test")
    expect(page.locator("#image-grid [data-pick]:checked")).to_have_count(8)  # the fixture's 8 test images
    expect(page.locator("#image-grid [data-selection-count]")).to_have_text("8")
    assert errors == []
    page.close()
