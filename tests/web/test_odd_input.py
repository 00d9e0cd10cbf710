"""Odd JSON gets a clear 422, never a 500: NaN and Infinity in bounded floats, lone surrogates in stored strings,
seeds past 64 bits, an unknown target source; a failed split on the run form; and a 500 still carries the
security headers."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from app.models import Split
from app.web.app import create_app
from tests.factories import make_run

JSON = {"content-type": "application/json"}


def _post(client: TestClient, path: str, raw: str) -> tuple[int, dict]:  # type: ignore[type-arg]
    response = client.post(path, content=raw.encode(), headers=JSON)
    return response.status_code, json.loads(response.content)  # the reply is plain, strict JSON


@pytest.mark.parametrize("number", ["NaN", "Infinity", "-Infinity"])
def test_non_finite_numbers_are_refused_with_a_422(db: Session, as_reviewer: TestClient, number: str) -> None:
    fixture = make_run(db, sizes={"train": 4, "dev": 4, "test": 4})
    db.commit()
    run = f'{{"dataset_id": {fixture.dataset.id}, "split_id": {fixture.split.id}, '
    for body in (run + f'"lr": {number}}}', run + f'"human_error": {number}}}'):
        status, reply = _post(as_reviewer, "/api/runs", body)
        assert status == 422, reply
    splits = f"/api/datasets/{fixture.dataset.id}/splits"
    for field in ("target_train_fraction", "train_dev_fraction"):
        status, reply = _post(as_reviewer, splits, f'{{"{field}": {number}}}')
        assert status == 422, reply
    status, reply = _post(as_reviewer, splits, f'{{"small_ratios": [{number}, 0.2, 0.2]}}')
    assert status == 422, reply


def test_lone_surrogates_are_refused_with_a_422(as_viewer: TestClient, as_reviewer: TestClient) -> None:
    status, reply = _post(as_viewer, "/api/tokens", '{"name": "a\\ud800"}')
    assert status == 422, reply
    status, reply = _post(as_reviewer, "/api/datasets", '{"name": "x\\udfff", "description": "d"}')
    assert status == 422, reply
    status, reply = _post(as_reviewer, "/api/datasets", '{"name": "fine", "description": "\\ud83d"}')
    assert status == 422, reply
    # A proper pair is a real character and is kept.
    status, reply = _post(as_reviewer, "/api/datasets", '{"name": "smile \\ud83d\\ude00"}')
    assert status == 201 and reply["name"] == "smile \U0001f600", reply


def test_seeds_are_bounded_and_target_sources_known(db: Session, as_reviewer: TestClient) -> None:
    fixture = make_run(db, sizes={"train": 4, "dev": 4, "test": 4})
    db.commit()
    huge = 2**70
    split_path = f"/api/datasets/{fixture.dataset.id}/splits"
    assert _post(as_reviewer, split_path, f'{{"seed": {huge}}}')[0] == 422
    run = f'{{"dataset_id": {fixture.dataset.id}, "split_id": {fixture.split.id}, "seed": {huge}}}'
    assert _post(as_reviewer, "/api/runs", run)[0] == 422
    review = f'{{"run_id": {fixture.run.id}, "seed": {huge}}}'
    assert _post(as_reviewer, f"/api/datasets/{fixture.dataset.id}/reviews", review)[0] == 422
    status, reply = _post(as_reviewer, split_path, '{"target_source": "no-such-source", "dry_run": true}')
    assert status == 422 and "no-such-source" in reply["detail"], reply


def test_the_run_form_of_a_failed_split_says_so(db: Session, as_reviewer: TestClient) -> None:
    fixture = make_run(db, sizes={"train": 4, "dev": 4, "test": 4})
    failed = Split(dataset_id=fixture.dataset.id, version=2, status="failed", params={})
    db.add(failed)
    db.commit()
    page = as_reviewer.get(f"/runs/new?split_id={failed.id}")
    assert page.status_code == 409 and "failed" in page.text


def test_a_server_error_carries_the_security_headers(settings, session_maker) -> None:  # type: ignore[no-untyped-def]
    app = create_app(settings, session_maker=session_maker)

    @app.get("/boom")
    def boom() -> None:
        raise RuntimeError("a bug")

    with TestClient(app, raise_server_exceptions=False) as client:
        response = client.get("/boom")
    assert response.status_code == 500
    assert response.headers["x-content-type-options"] == "nosniff"
    assert "frame-ancestors 'none'" in response.headers["content-security-policy"]
