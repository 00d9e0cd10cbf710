"""The review pages: "is it worth it?" from the mislabeled tag, starting a campaign from the form, claiming items,
progress side by side with the drift flag, and the read-only view for viewers."""

from __future__ import annotations

import re

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from app.error_analysis import service as error_analysis
from app.ml.error_analysis import format_percent
from app.models import User
from tests.conftest import api_client, browser_login
from tests.factories import RunFixture, make_run
from tests.review.conftest import start_campaign


@pytest.fixture
def run(db: Session) -> RunFixture:
    fixture = make_run(db, sizes={"dev": 40, "test": 40}, error_rate=0.4, seed=21)
    db.commit()
    return fixture


def _text(html: str, attribute: str) -> str:
    found = re.search(rf"<[^>]*{attribute}[^>]*>(.*?)</", html, re.S)
    assert found, attribute
    return " ".join(found.group(1).split())


def test_the_run_page_says_whether_fixing_labels_is_worth_it(as_viewer, people, run, db) -> None:
    page = as_viewer.get(f"/runs/{run.run.id}/review")
    assert page.status_code == 200
    assert "No dev errors carry a category yet" in page.text
    assert "data-start-review" not in page.text  # viewers cannot start a campaign

    reviewer = db.get(User, people["reviewer"].user_id)
    assert reviewer is not None
    error_analysis.add_tag(db, dataset_id=run.dataset.id, name="blurry")
    sample = error_analysis.error_sample(db, run_id=run.run.id, subset="dev")
    errors = [item for item in sample.items if item.is_error]
    mislabeled, blurry = errors[:3], errors[3:8]
    for item, tag in [(i, "mislabeled") for i in mislabeled] + [(i, "blurry") for i in blurry]:
        error_analysis.set_annotation(
            db, run_id=run.run.id, image_id=item.image_id, tags=[tag], note=None, actor=reviewer
        )
    db.commit()

    page = as_viewer.get(f"/runs/{run.run.id}/review").text
    dev_error = sample.total_errors / sample.subset_size
    share = 3 / 8
    assert _text(page, "data-dev-error") == format_percent(dev_error)
    assert _text(page, "data-mislabeled-share") == format_percent(share)
    assert _text(page, "data-label-error") == format_percent(dev_error * share)
    assert _text(page, "data-other-error") == format_percent(dev_error * (1 - share))
    assert "3 of 8; 95% interval" in page
    assert "Worth fixing labels." in _text(page, "data-recommendation")
    assert "Rule: fixing labels is worth it when mislabeled examples are at least 30%" in page
    assert page.count("data-flagged") == 2  # suspicion ranking for dev and for test


def test_a_reviewer_starts_a_campaign_from_the_form_and_takes_items(app, people, run) -> None:
    with TestClient(app, follow_redirects=False) as client:
        token = browser_login(client, people["reviewer"])
        page = client.get(f"/runs/{run.run.id}/review")
        assert "data-start-review" in page.text
        form = {
            "csrf_token": token,
            "dataset_id": str(run.dataset.id),
            "suspicious_per_subset": "6",
            "correct_per_subset": "2",
            "seed": "3",
        }
        refused = client.post(f"/runs/{run.run.id}/review", data={**form, "subsets": ["dev"]})
        assert refused.status_code == 400 and "dev and test together" in refused.text
        started = client.post(f"/runs/{run.run.id}/review", data={**form, "subsets": ["dev", "test"]})
        assert started.status_code == 303
        campaign_url = started.headers["location"]
        review_id = int(campaign_url.rsplit("/", 1)[1])

        # The new campaign opens on its first items (issue 15.8), not on an empty grid: all 16 are held.
        mine = client.get(campaign_url).text
        assert "You hold no items of this campaign yet" not in mine and mine.count("data-item ") == 16
        claimed = client.post(f"/reviews/{review_id}/claim", data={"csrf_token": token, "count": "10"})
        assert claimed.status_code == 303
        assert client.get(claimed.headers["location"]).text.count("data-item ") == 16
        assert 'data-progress="dev"' in mine and 'data-progress="test"' in mine
        assert 'data-label-key="cat" data-key="1"' in mine

        progress = client.get(f"/reviews/{review_id}/progress").text
        assert progress.lstrip().startswith('<div id="review-progress"')
        assert re.search(r'data-progress="dev".*?<span data-total>8</span>', progress, re.S)


def test_a_reviewer_closes_a_finished_campaign_from_its_page_and_reopens_it(app, people, run) -> None:
    with TestClient(app, follow_redirects=False) as client:
        token = browser_login(client, people["reviewer"])
        review_id = start_campaign(api_client(app, people["reviewer"].token), run)
        page = client.get(f"/reviews/{review_id}").text
        assert "data-close-review" in page and "data-claim" in page and "data-review-closed" not in page
        closed = client.post(f"/reviews/{review_id}/status", data={"csrf_token": token, "status": "closed"})
        assert closed.status_code == 303
        page = client.get(f"/reviews/{review_id}").text
        assert "data-review-closed" in page and "data-reopen-review" in page
        assert "data-claim" not in page and 'data-action="keep"' not in page and 'data-can-review="0"' in page
        assert re.search(
            rf'href="/reviews/{review_id}">Review {review_id}</a> <span class="badge">closed',
            client.get(f"/runs/{run.run.id}/review").text,
        )
        client.post(f"/reviews/{review_id}/status", data={"csrf_token": token, "status": "open"})
        assert "data-claim" in client.get(f"/reviews/{review_id}").text


def test_progress_flags_dev_and_test_drifting_apart(as_reviewer, run) -> None:
    review_id = start_campaign(as_reviewer, run, suspicious_per_subset=8, correct_per_subset=0)
    items = as_reviewer.get(f"/api/reviews/{review_id}").json()["items"]
    for item in [i for i in items if i["subset"] == "dev"][:6]:
        response = as_reviewer.post(
            f"/api/reviews/{review_id}/items/{item['image_id']}/decision",
            json={"decision": "kept", "expected_version": item["label_version"]},
        )
        assert response.status_code == 200
    progress = as_reviewer.get(f"/reviews/{review_id}/progress").text
    assert "data-drift" in progress and "review test items next" in progress
    for item in [i for i in items if i["subset"] == "test"][:6]:
        as_reviewer.post(
            f"/api/reviews/{review_id}/items/{item['image_id']}/decision",
            json={"decision": "kept", "expected_version": item["label_version"]},
        )
    assert "data-drift" not in as_reviewer.get(f"/reviews/{review_id}/progress").text


def test_viewers_see_every_item_read_only(as_viewer, as_reviewer, people, run) -> None:
    review_id = start_campaign(as_reviewer, run)
    item = as_reviewer.get(f"/api/reviews/{review_id}").json()["items"][0]
    other = next(label.name for label in run.labels if label.name != item["label"])
    as_reviewer.post(
        f"/api/images/{item['image_id']}/label",
        json={"label": other, "expected_version": 1, "review_id": review_id, "reason": "<b>fox</b>"},
    )
    page = as_viewer.get(f"/reviews/{review_id}?view=mine").text
    assert page.count("data-item ") == 12  # viewers always see all items
    assert "data-claim" not in page and "relabeling needs the reviewer role" in page
    detail = as_viewer.get(f"/reviews/{review_id}/items/{item['image_id']}").text
    assert "Model&#39;s top 3" in detail or "Model's top 3" in detail
    assert "&lt;b&gt;fox&lt;/b&gt;" in detail and "<b>fox</b>" not in detail
    assert people["reviewer"].name in detail
    assert "data-revert-change" not in detail
    reviewer_detail = as_reviewer.get(f"/reviews/{review_id}/items/{item['image_id']}").text
    assert reviewer_detail.count("data-revert-change") == 1  # the relabel; an import cannot be reverted
