"""The labelling page's states: no run yet, a run without pool scores (the button that starts the job), a job
under way, and a ranked batch that says where the new labels go."""

from __future__ import annotations

import re

import numpy as np
from fastapi.testclient import TestClient
from sqlalchemy import select

from app.models import Dataset, Job
from tests.conftest import browser_login
from tests.factories import make_run
from tests.pool.conftest import add_pool, score


def test_the_page_leads_from_no_scores_to_a_batch(db, app, people) -> None:
    fixture = make_run(db)
    fixture.run.model_path = "/nowhere"
    add_pool(db, fixture, 3)
    db.commit()
    with TestClient(app, base_url="http://testserver", follow_redirects=False) as client:
        csrf = browser_login(client, people["reviewer"])
        page = client.get(f"/datasets/{fixture.dataset.id}/label")
        assert page.status_code == 200
        assert "no pool scores" in page.text and "data-score-pool" in page.text
        assert re.search(r"<strong data-pool-size>3</strong> unlabeled images", page.text)

        started = client.post(
            f"/datasets/{fixture.dataset.id}/label/score", data={"run_id": fixture.run.id, "csrf_token": csrf}
        )
        assert started.status_code == 303
        job = db.scalars(select(Job).where(Job.kind == "pool.score")).one()
        waiting = client.get(started.headers["location"])
        assert f'id="job-{job.id}"' in waiting.text and "data-score-pool" not in waiting.text

        other = make_run(db, seed=3)
        db.commit()
        wrong_dataset = client.post(
            f"/datasets/{fixture.dataset.id}/label/score", data={"run_id": other.run.id, "csrf_token": csrf}
        )
        assert wrong_dataset.status_code == 404


def test_a_ranked_batch_names_where_labels_go(db, as_viewer) -> None:
    fixture = make_run(db)  # its dataset's target source is "phone"
    images = add_pool(db, fixture, 4, source="phone")
    score(db, fixture, images, np.full((4, 3), 1 / 3, dtype=np.float32), np.eye(4, dtype=np.float32))
    db.commit()
    page = as_viewer.get(f"/datasets/{fixture.dataset.id}/label", params={"strategy": "uncertainty"})
    assert page.status_code == 200
    assert len(re.findall(r"data-card\b(?!-)", page.text)) == 4
    assert "from the target source &#39;phone&#39;" in page.text and "may go to dev or test" in page.text
    assert "joins train, or dev/test by the split&#39;s rule" in page.text
    assert 'data-can-label="0"' in page.text  # a viewer sees the batch but cannot label


def test_without_a_run_the_page_says_to_train_one(db, as_viewer) -> None:
    dataset = Dataset(name="just-uploaded")
    db.add(dataset)
    db.commit()
    page = as_viewer.get(f"/datasets/{dataset.id}/label")
    assert page.status_code == 200 and "Train a run first" in page.text
    assert as_viewer.get(f"/datasets/{dataset.id}/label", params={"strategy": "bald"}).status_code == 422
    assert as_viewer.get("/datasets/999999/label").status_code == 404
