"""Issue 15 item 6 in the browser: when the chosen options mean every file will be rejected (loose files, no
label, no labels CSV), the upload page says so before anything is sent."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.browser import chromium, log_in
from tests.datasets.conftest import noisy_jpeg
from tests.uploads.test_upload_browser import Served, served  # noqa: F401  (the fixture)

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def test_loose_files_without_label_or_csv_are_announced_before_upload(served: Served, tmp_path: Path) -> None:  # noqa: F811
    import httpx

    headers = {"authorization": f"Bearer {served.token}"}
    dataset = httpx.post(f"{served.base_url}/api/datasets", json={"name": "loose"}, headers=headers).json()["id"]
    loose = [tmp_path / "a.jpg", tmp_path / "b.jpg"]
    for index, path in enumerate(loose):
        path.write_bytes(noisy_jpeg(index))
    with chromium() as browser:
        page = browser.new_page()
        log_in(page, served.base_url, served.user, served.password, then=f"/datasets/{dataset}/upload")
        warning = page.locator("[data-no-label-warning]")
        assert not warning.is_visible()
        page.set_input_files("[data-pick-files]", [str(path) for path in loose])
        assert warning.is_visible() and "would be rejected" in warning.inner_text()
        assert page.is_disabled("[data-start]")
        page.fill('input[name="label"]', "cat")
        assert not warning.is_visible() and not page.is_disabled("[data-start]")
        page.fill('input[name="label"]', "")
        assert warning.is_visible()
