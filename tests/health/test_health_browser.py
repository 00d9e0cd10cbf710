"""The dataset page's "Data health" panel in Chromium: scan from the button, watch it finish, follow an issue to
its images; and the embeddings card's button with its live status."""

from __future__ import annotations

import io
import time
from pathlib import Path

import httpx
import pytest
from PIL import Image as PILImage

from app.ml.demo import generate_demo_dataset
from tests.browser import chromium, log_in
from tests.datasets.conftest import zip_of
from tests.uploads.test_upload_browser import Served, served  # noqa: F401  (the fixture)

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def _dataset_with_a_near_duplicate(served: Served) -> tuple[int, list[tuple[str, bytes]]]:  # noqa: F811
    headers = {"authorization": f"Bearer {served.token}"}
    dataset = httpx.post(f"{served.base_url}/api/datasets", json={"name": "health"}, headers=headers).json()["id"]
    demo = generate_demo_dataset(n_images=10, size=96, seed=7)
    files = [(f"{item.true_label}/{i}.jpg", item.jpeg) for i, item in enumerate(demo)]
    copy = io.BytesIO()
    PILImage.open(io.BytesIO(demo[0].jpeg)).resize((84, 84)).save(copy, format="JPEG", quality=85)
    files.append((f"{demo[0].true_label}/copy.jpg", copy.getvalue()))
    upload = httpx.post(
        f"{served.base_url}/api/datasets/{dataset}/uploads",
        files=[("files", ("batch.zip", zip_of(files), "application/zip"))],
        headers=headers,
        timeout=60,
    )
    assert upload.status_code == 202, upload.text
    deadline = time.monotonic() + 120
    while (
        httpx.get(f"{served.base_url}/api/uploads/{upload.json()['upload_id']}", headers=headers).json()["status"]
        != "done"
    ):
        assert time.monotonic() < deadline, "ingest did not finish"
        time.sleep(0.5)
    return dataset, files


def test_scan_from_the_panel_then_follow_an_issue(served: Served, tmp_path: Path) -> None:  # noqa: F811
    dataset, _ = _dataset_with_a_near_duplicate(served)
    with chromium() as browser:
        page = browser.new_page()
        log_in(page, served.base_url, served.user, served.password, then=f"/datasets/{dataset}")
        page.wait_for_selector("[data-health-missing]")
        page.click("[data-health-scan]")
        page.wait_for_selector('[data-health-status="ready"]', timeout=120_000)
        row = page.locator('[data-issue="near_duplicate"]')
        assert row.get_attribute("data-issue-count") == "2"
        assert row.locator("img").count() == 1  # one example per group
        unmeasured = page.locator('[data-issue="unmeasured"]')
        if unmeasured.count():  # ingest that does not measure statistics yet: said, not hidden
            assert unmeasured.get_attribute("data-issue-count") == "11"
        row.locator("a", has_text="near duplicate").click()
        page.wait_for_url(f"**/datasets/{dataset}?issue=near_duplicate")
        assert page.locator("#image-grid .thumb").count() == 2
        assert page.locator('select[name="issue"]').input_value() == "near_duplicate"


def test_compute_embeddings_from_the_dataset_page_then_find_more_like_this(
    served: Served,  # noqa: F811
    tmp_path: Path,
) -> None:
    dataset, _ = _dataset_with_a_near_duplicate(served)
    with chromium() as browser:
        page = browser.new_page()
        log_in(page, served.base_url, served.user, served.password, then=f"/datasets/{dataset}")
        page.wait_for_selector("[data-embeddings-missing]")
        page.click("[data-embeddings-start]")
        # The button's answer already shows the queued job (its bar polls), before any worker picked it up.
        assert page.locator("[data-embedding-set]").get_attribute("data-status") in ("queued", "running")
        assert page.locator("[data-embeddings] .job").count() == 1
        page.wait_for_selector('[data-embedding-set][data-status="ready"]', timeout=240_000)
        assert "11 images" in page.inner_text("[data-embeddings]")
        first = page.locator("#image-grid .thumb").first
        image_id = first.get_attribute("data-image-id")
        page.goto(f"{served.base_url}/images/{image_id}")
        page.wait_for_selector("[data-similar] .thumb")
        page.click("[data-more-like-this]")
        page.wait_for_url(f"**/datasets/{dataset}?similar_to={image_id}")
        assert page.locator(f'[data-similar-to="{image_id}"]').count() == 1
        ids = [thumb.get_attribute("data-image-id") for thumb in page.locator("#image-grid .thumb").all()]
        assert ids[0] == image_id and len(ids) == 11
