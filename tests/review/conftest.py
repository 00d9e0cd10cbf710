"""Helpers shared by the label-review tests: campaigns through the API."""

from __future__ import annotations

import re
from typing import Any

from fastapi.testclient import TestClient

from tests.factories import RunFixture


def start_campaign(client: TestClient, fixture: RunFixture, **overrides: Any) -> int:
    body = {
        "run_id": fixture.run.id,
        "subsets": ["dev", "test"],
        "suspicious_per_subset": 4,
        "correct_per_subset": 2,
        "seed": 7,
        # One reviewer's relabel applies at once here; the two-reviewer path has its own tests (test_agreement_*).
        "require_agreement": False,
        **overrides,
    }
    response = client.post(f"/api/datasets/{fixture.dataset.id}/reviews", json=body)
    assert response.status_code == 201, response.text
    return int(response.json()["review_id"])


def label_name(fixture: RunFixture, label_id: int) -> str:
    return next(label.name for label in fixture.labels if label.id == label_id)


def element_text(html: str, attribute: str) -> str:
    """The text inside the first element carrying ``attribute``, tags dropped and spaces collapsed."""
    found = re.search(rf"<(\w+)[^>]*{attribute}[^>]*>(.*?)</\1>", html, re.S)
    assert found, attribute
    return " ".join(re.sub(r"<[^>]+>", "", found.group(2)).split())
