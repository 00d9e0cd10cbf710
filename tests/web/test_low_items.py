"""The small rules: one password rule on the users page, bounded descriptions and drill jobs, and a client's
out-of-range id logged as one line, not a traceback."""

from __future__ import annotations

import logging

import pytest
from fastapi.testclient import TestClient


def test_the_users_page_applies_the_api_s_password_rule(as_admin: TestClient) -> None:
    refused = as_admin.post("/users", data={"name": "newcomer", "role": "viewer", "password": "x"})
    assert refused.status_code == 422 and "at least 8 characters" in refused.text
    assert "newcomer" not in [user["name"] for user in as_admin.get("/api/users").json()]


def test_descriptions_and_demo_jobs_are_bounded(as_reviewer: TestClient) -> None:
    too_long = as_reviewer.post("/api/datasets", json={"name": "described", "description": "x" * 10_001})
    assert too_long.status_code == 422 and "at most 10,000 characters" in too_long.json()["detail"]
    created = as_reviewer.post("/api/datasets", json={"name": "described", "description": "x" * 10_000})
    assert created.status_code == 201
    patched = as_reviewer.patch(f"/api/datasets/{created.json()['id']}", json={"description": "y" * 20_000})
    assert patched.status_code == 422
    assert as_reviewer.post("/api/jobs/demo", json={"seconds": 1e9}).status_code == 422
    assert as_reviewer.post("/api/jobs/demo", json={"seconds": 1, "steps": 2}).status_code == 202


def test_an_out_of_range_id_is_logged_as_one_line(as_viewer: TestClient, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="app.web.errors"):
        response = as_viewer.get(f"/api/datasets/{2**70}")
    assert response.status_code in (404, 422)
    records = [record for record in caplog.records if record.name == "app.web.errors"]
    assert all(record.exc_info is None and "\n" not in record.getMessage() for record in records)
