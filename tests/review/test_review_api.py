"""The label-review API on SQLite and Postgres: campaign rule, versioned relabeling, history and revert,
ambiguous items, claims, permissions and re-scoring."""

from __future__ import annotations

import csv
import io
from datetime import timedelta

import numpy as np
import pytest
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from app.models import Image, LabelChange, Prediction, Review, ReviewItem, utcnow
from tests.conftest import api_client
from tests.factories import RunFixture, make_run
from tests.review.conftest import label_name, start_campaign


@pytest.fixture
def run(db: Session) -> RunFixture:
    fixture = make_run(db, sizes={"train": 20, "dev": 30, "test": 30}, error_rate=0.3, seed=11)
    db.commit()
    return fixture


def _other_label(fixture: RunFixture, image: Image) -> str:
    return next(label.name for label in fixture.labels if label.id != image.label_id)


def _self_confidence(db: Session, fixture: RunFixture, image_id: int) -> float:
    prediction = db.get(Prediction, (fixture.run.id, image_id))
    image = db.get(Image, image_id)
    assert prediction is not None and image is not None
    column = list(fixture.run.label_names).index(label_name(fixture, image.label_id))
    return 1.0 - float(np.frombuffer(prediction.probs, dtype=np.float32)[column])


def test_a_campaign_must_cover_dev_and_test_together(as_reviewer, run, db) -> None:
    for subsets in (["dev"], ["test"], ["dev", "train"], ["dev", "test", "train"], ["dev", "dev"], []):
        response = as_reviewer.post(
            f"/api/datasets/{run.dataset.id}/reviews", json={"run_id": run.run.id, "subsets": subsets}
        )
        assert response.status_code == 400, (subsets, response.text)
        body = response.json()
        assert body["error"] == "campaign_rule"
        assert "dev and test together" in body["detail"]
    assert db.scalar(select(func.count()).select_from(Review).where(Review.dataset_id == run.dataset.id)) == 0


def test_a_campaign_picks_the_same_rule_in_dev_and_test(as_reviewer, db, run) -> None:
    review_id = start_campaign(as_reviewer, run, subsets=["test", "dev"], suspicious_per_subset=5, correct_per_subset=3)
    body = as_reviewer.get(f"/api/reviews/{review_id}").json()
    assert body["subsets"] == ["dev", "test"]
    assert body["progress"] == {
        "dev": {"done": 0, "total": 8, "relabeled": 0, "ambiguous": 0},
        "test": {"done": 0, "total": 8, "relabeled": 0, "ambiguous": 0},
    }
    for subset in ("dev", "test"):
        items = [item for item in body["items"] if item["subset"] == subset]
        suspicious = [i for i in items if i["selection"] == "suspicious"]
        correct = [i for i in items if i["selection"] == "correct_sample"]
        assert (len(suspicious), len(correct)) == (5, 3)
        assert all(i["label"] == i["predicted"] for i in correct)  # correctly classified ones are looked at too
        in_subset = {image.id for image in run.images[subset]}
        assert {i["image_id"] for i in items} <= in_subset
        others = in_subset - {i["image_id"] for i in suspicious}
        lowest_picked = min(_self_confidence(db, run, i["image_id"]) for i in suspicious)
        assert lowest_picked >= max(_self_confidence(db, run, image_id) for image_id in others) - 1e-6
        for item in suspicious:
            assert item["suspicion"] == pytest.approx(_self_confidence(db, run, item["image_id"]), abs=1e-6)
    assert all(item["status"] == "pending" for item in body["items"])
    # Review order alternates dev and test, so a reviewer going through it treats both alike.
    assert [item["subset"] for item in body["items"][:4]] == ["dev", "test", "dev", "test"]


def test_train_is_reviewed_only_through_its_explicit_option(as_reviewer, run) -> None:
    review_id = start_campaign(as_reviewer, run, include_train=True)
    body = as_reviewer.get(f"/api/reviews/{review_id}").json()
    assert body["subsets"] == ["dev", "test", "train"]
    assert {item["subset"] for item in body["items"]} == {"dev", "test", "train"}


def test_campaign_inputs_are_checked(as_reviewer, run, db) -> None:
    url = f"/api/datasets/{run.dataset.id}/reviews"
    base = {"run_id": run.run.id, "subsets": ["dev", "test"]}
    assert as_reviewer.post(url, json={**base, "suspicious_per_subset": 0}).status_code == 422
    assert as_reviewer.post(url, json={**base, "correct_per_subset": -1}).status_code == 422
    assert as_reviewer.post(url, json={**base, "run_id": 999_999}).status_code == 404
    other = make_run(db, sizes={"dev": 5, "test": 5}, seed=12)
    db.commit()
    assert as_reviewer.post(url, json={**base, "run_id": other.run.id}).status_code == 422


def test_relabel_records_history_and_a_stale_version_gets_409(as_reviewer, as_admin, people, run, db) -> None:
    image = run.images["dev"][0]
    old_name, new_name = label_name(run, image.label_id), _other_label(run, image)
    changed = as_reviewer.post(
        f"/api/images/{image.id}/label", json={"label": new_name, "expected_version": 1, "reason": "it is a fox"}
    )
    assert changed.status_code == 200, changed.text
    assert changed.json()["label"] == new_name and changed.json()["label_version"] == 2

    third = next(label.name for label in run.labels if label.name not in (old_name, new_name))
    stale = as_admin.post(f"/api/images/{image.id}/label", json={"label": third, "expected_version": 1})
    assert stale.status_code == 409
    conflict = stale.json()
    assert (conflict["label"], conflict["label_version"]) == (new_name, 2)
    assert conflict["changed_by"] == people["reviewer"].name
    assert as_admin.get(f"/api/images/{image.id}/label").json()["label"] == new_name  # nothing overwritten

    unknown = as_reviewer.post(f"/api/images/{image.id}/label", json={"label": "zebra", "expected_version": 2})
    assert unknown.status_code == 422
    assert as_reviewer.post("/api/images/999999/label", json={"label": "cat", "expected_version": 1}).status_code == 404

    history = as_reviewer.get(f"/api/images/{image.id}/history").json()
    assert [(h["kind"], h["old_label"], h["new_label"], h["version"]) for h in history] == [
        ("import", None, old_name, 1),
        ("relabel", old_name, new_name, 2),
    ]
    assert history[1]["user"] == people["reviewer"].name and history[1]["reason"] == "it is a fox"


def test_revert_restores_the_label_and_a_revert_of_it_redoes_the_change(as_reviewer, run) -> None:
    image = run.images["test"][0]
    old_name, new_name = label_name(run, image.label_id), _other_label(run, image)
    change_id = as_reviewer.post(
        f"/api/images/{image.id}/label", json={"label": new_name, "expected_version": 1}
    ).json()["change_id"]
    reverted = as_reviewer.post(f"/api/label-changes/{change_id}/revert", json={"reason": "too hasty"})
    assert reverted.status_code == 200, reverted.text
    assert (reverted.json()["label"], reverted.json()["label_version"]) == (old_name, 3)
    again = as_reviewer.post(f"/api/label-changes/{change_id}/revert", json={})
    assert again.status_code == 409  # no longer in effect: the revert replaced it
    redo = as_reviewer.post(f"/api/label-changes/{reverted.json()['change_id']}/revert")
    assert (redo.json()["label"], redo.json()["label_version"]) == (new_name, 4)
    stale = as_reviewer.post(f"/api/label-changes/{redo.json()['change_id']}/revert", json={"expected_version": 3})
    assert stale.status_code == 409 and stale.json()["label_version"] == 4
    history = as_reviewer.get(f"/api/images/{image.id}/history").json()
    assert [h["kind"] for h in history] == ["import", "relabel", "revert", "revert"]
    assert history[2]["reverts_change_id"] == change_id and history[2]["reason"] == "too hasty"
    first_import = history[0]["id"]
    assert as_reviewer.post(f"/api/label-changes/{first_import}/revert").status_code == 422


def test_within_a_campaign_decisions_set_item_status_and_undo_resets_it(as_reviewer, run) -> None:
    review_id = start_campaign(as_reviewer, run)
    items = as_reviewer.get(f"/api/reviews/{review_id}").json()["items"]
    dev_item, test_item, other_test = (
        items[0],
        next(i for i in items if i["subset"] == "test"),
        [i for i in items if i["subset"] == "test"][1],
    )
    other = next(label.name for label in run.labels if label.name != dev_item["label"])
    relabeled = as_reviewer.post(
        f"/api/images/{dev_item['image_id']}/label",
        json={"label": other, "expected_version": dev_item["label_version"], "review_id": review_id},
    ).json()
    assert relabeled["review_status"] == "relabeled"
    kept = as_reviewer.post(
        f"/api/reviews/{review_id}/items/{test_item['image_id']}/decision",
        json={"decision": "kept", "expected_version": test_item["label_version"]},
    )
    assert kept.json()["review_status"] == "kept"
    same = as_reviewer.post(  # choosing the label it already has keeps it too
        f"/api/images/{other_test['image_id']}/label",
        json={"label": other_test["label"], "expected_version": other_test["label_version"], "review_id": review_id},
    ).json()
    assert same["review_status"] == "kept" and same["change_id"] is None and same["label_version"] == 1
    progress = as_reviewer.get(f"/api/reviews/{review_id}").json()["progress"]
    assert (progress["dev"]["done"], progress["dev"]["relabeled"], progress["test"]["done"]) == (1, 1, 2)

    refused = as_reviewer.post(
        f"/api/reviews/{review_id}/items/{dev_item['image_id']}/decision",
        json={"decision": "kept", "expected_version": 2},
    )
    assert refused.status_code == 409  # it was relabeled: undo that change first
    undone = as_reviewer.post(f"/api/label-changes/{relabeled['change_id']}/revert").json()
    assert undone["review_status"] == "pending"
    reopened = as_reviewer.post(
        f"/api/reviews/{review_id}/items/{test_item['image_id']}/decision",
        json={"decision": "pending", "expected_version": 1},
    ).json()
    assert reopened["review_status"] == "pending"
    progress = as_reviewer.get(f"/api/reviews/{review_id}").json()["progress"]
    assert (progress["dev"]["done"], progress["test"]["done"]) == (0, 1)
    history = as_reviewer.get(f"/api/images/{dev_item['image_id']}/history").json()
    assert {h["review_id"] for h in history[1:]} == {review_id}

    outsider = next(image for image in run.images["dev"] if image.id not in {i["image_id"] for i in items})
    not_in_campaign = as_reviewer.post(
        f"/api/images/{outsider.id}/label",
        json={"label": _other_label(run, outsider), "expected_version": 1, "review_id": review_id},
    )
    assert not_in_campaign.status_code == 422


def test_a_closed_campaign_takes_no_claims_or_decisions_until_reopened(as_reviewer, run) -> None:
    review_id = start_campaign(as_reviewer, run)
    item = as_reviewer.post(f"/api/reviews/{review_id}/claim", json={"count": 1}).json()[0]
    other = next(label.name for label in run.labels if label.name != item["label"])
    relabeled = as_reviewer.post(
        f"/api/images/{item['image_id']}/label",
        json={"label": other, "expected_version": item["label_version"], "review_id": review_id},
    ).json()
    closed = as_reviewer.patch(f"/api/reviews/{review_id}", json={"status": "closed"})
    assert closed.status_code == 200 and closed.json() == {"id": review_id, "status": "closed"}
    assert as_reviewer.get(f"/api/reviews/{review_id}").json()["status"] == "closed"

    pending = next(i for i in as_reviewer.get(f"/api/reviews/{review_id}").json()["items"] if i["status"] == "pending")
    refused = [
        as_reviewer.post(f"/api/reviews/{review_id}/claim"),
        as_reviewer.post(
            f"/api/reviews/{review_id}/items/{pending['image_id']}/decision",
            json={"decision": "kept", "expected_version": pending["label_version"]},
        ),
        as_reviewer.post(
            f"/api/images/{pending['image_id']}/label",
            json={"label": other, "expected_version": pending["label_version"], "review_id": review_id},
        ),
    ]
    assert [r.status_code for r in refused] == [409, 409, 409]
    assert all("closed" in r.json()["detail"] for r in refused)
    # What was done in it stays revertible, and its items stay labelable outside it.
    assert as_reviewer.post(f"/api/label-changes/{relabeled['change_id']}/revert").status_code == 200
    assert as_reviewer.get(f"/api/images/{pending['image_id']}/label").json()["label_version"] == 1
    assert as_reviewer.patch(f"/api/reviews/{review_id}", json={"status": "done"}).status_code == 422

    assert as_reviewer.patch(f"/api/reviews/{review_id}", json={"status": "open"}).json()["status"] == "open"
    assert as_reviewer.post(f"/api/reviews/{review_id}/claim").status_code == 200


def test_ambiguous_items_are_excluded_with_a_reason_and_can_be_included_again(as_reviewer, run) -> None:
    image = run.images["dev"][1]
    before = as_reviewer.get(f"/api/runs/{run.run.id}/rescored").json()["dev"]
    assert (
        as_reviewer.post(f"/api/images/{image.id}/exclude", json={"reason": "  ", "expected_version": 1}).status_code
        == 422
    )
    excluded = as_reviewer.post(
        f"/api/images/{image.id}/exclude", json={"reason": "a cat and a dog", "expected_version": 1}
    )
    assert excluded.status_code == 200
    assert excluded.json()["excluded_reason"] == "a cat and a dog" and excluded.json()["label_version"] == 2
    after = as_reviewer.get(f"/api/runs/{run.run.id}/rescored").json()["dev"]
    assert (after["excluded"], after["count"]) == (1, before["count"] - 1)
    history = as_reviewer.get(f"/api/images/{image.id}/history").json()
    assert (history[-1]["kind"], history[-1]["reason"]) == ("ambiguous", "a cat and a dog")
    included = as_reviewer.post(f"/api/label-changes/{history[-1]['id']}/revert").json()
    assert included["excluded_reason"] is None and included["label_version"] == 3
    assert as_reviewer.get(f"/api/runs/{run.run.id}/rescored").json()["dev"] == before


def test_rescoring_counts_corrections_and_exclusions_against_stored_predictions(as_reviewer, run) -> None:
    dev = run.images["dev"]
    errors = [image for image in dev if run.predicted[image.id] != image.label_id]
    correct = [image for image in dev if run.predicted[image.id] == image.label_id]
    assert len(errors) >= 3 and len(correct) >= 2
    # Two errors were mislabeled: give them the label the model predicted. One correct example was mislabeled
    # the other way. One error is ambiguous.
    for image in errors[:2]:
        name = label_name(run, run.predicted[image.id])
        assert (
            as_reviewer.post(f"/api/images/{image.id}/label", json={"label": name, "expected_version": 1}).status_code
            == 200
        )
    flipped = correct[0]
    wrong_name = next(label.name for label in run.labels if label.id != run.predicted[flipped.id])
    assert (
        as_reviewer.post(
            f"/api/images/{flipped.id}/label", json={"label": wrong_name, "expected_version": 1}
        ).status_code
        == 200
    )
    excluded = as_reviewer.post(
        f"/api/images/{errors[2].id}/exclude", json={"reason": "blurry beyond recognition", "expected_version": 1}
    )
    assert excluded.status_code == 200

    rescored = as_reviewer.get(f"/api/runs/{run.run.id}/rescored").json()
    before_error = len(errors) / len(dev)
    after_errors = len(errors) - 2 + 1 - 1
    assert rescored["dev"] == {
        "accuracy": pytest.approx(1 - after_errors / (len(dev) - 1)),
        "error": pytest.approx(after_errors / (len(dev) - 1)),
        "before_accuracy": pytest.approx(1 - before_error),
        "before_error": pytest.approx(before_error),
        "count": len(dev) - 1,
        "changed": 3,
        "excluded": 1,
    }
    test_errors = sum(run.predicted[image.id] != image.label_id for image in run.images["test"])
    assert rescored["test"]["error"] == pytest.approx(test_errors / len(run.images["test"]))
    assert rescored["test"]["changed"] == 0
    assert "train" not in rescored


def test_the_split_manifest_carries_current_labels(as_reviewer, run) -> None:
    image = run.images["test"][2]
    new_name = _other_label(run, image)
    assert (
        as_reviewer.post(f"/api/images/{image.id}/label", json={"label": new_name, "expected_version": 1}).status_code
        == 200
    )
    response = as_reviewer.get(f"/api/splits/{run.split.id}/manifest.csv")
    assert response.status_code == 200, response.text
    rows = list(csv.reader(io.StringIO(response.text)))
    matching = [row for row in rows if image.filename in row]
    assert len(matching) == 1 and new_name in matching[0]


def test_two_reviewers_claim_different_items_and_an_expired_claim_is_free_again(app, people, run, db) -> None:
    with api_client(app, people["reviewer"].token) as first, api_client(app, people["admin"].token) as second:
        review_id = start_campaign(first, run, suspicious_per_subset=4, correct_per_subset=1)
        mine = first.post(f"/api/reviews/{review_id}/claim", json={"count": 6}).json()
        theirs = second.post(f"/api/reviews/{review_id}/claim", json={"count": 6}).json()
        assert len(mine) == 6 and len(theirs) == 4  # 10 items in all
        assert not {i["image_id"] for i in mine} & {i["image_id"] for i in theirs}
        assert first.post(f"/api/reviews/{review_id}/claim", json={"count": 6}).json() == mine  # held, not more
        assert {i["claimed_by"] for i in mine} == {people["reviewer"].name}

        db.execute(  # the first reviewer walked away: move their claims into the past
            update(ReviewItem)
            .where(ReviewItem.review_id == review_id, ReviewItem.claimed_by_id == people["reviewer"].user_id)
            .values(claim_expires_at=utcnow() - timedelta(seconds=1))
        )
        db.commit()
        taken_over = second.post(f"/api/reviews/{review_id}/claim", json={"count": 10}).json()
        assert {i["image_id"] for i in taken_over} == {i["image_id"] for i in mine + theirs}


def test_viewers_read_but_cannot_change_labels(as_viewer, as_reviewer, run, db) -> None:
    review_id = start_campaign(as_reviewer, run)
    image = run.images["dev"][0]
    change_id = db.scalar(select(LabelChange.id).where(LabelChange.image_id == image.id))
    assert as_viewer.get(f"/api/reviews/{review_id}").status_code == 200
    assert as_viewer.get(f"/api/images/{image.id}/history").status_code == 200
    assert as_viewer.get(f"/api/runs/{run.run.id}/rescored").status_code == 200
    assert as_viewer.get(f"/api/runs/{run.run.id}/suspicious?subset=test&limit=5").status_code == 200
    refused = [
        as_viewer.post(f"/api/datasets/{run.dataset.id}/reviews", json={"run_id": run.run.id}),
        as_viewer.post(f"/api/images/{image.id}/label", json={"label": "cat", "expected_version": 1}),
        as_viewer.post(f"/api/images/{image.id}/exclude", json={"reason": "x", "expected_version": 1}),
        as_viewer.post(f"/api/label-changes/{change_id}/revert"),
        as_viewer.post(f"/api/reviews/{review_id}/claim"),
        as_viewer.patch(f"/api/reviews/{review_id}", json={"status": "closed"}),
        as_viewer.post(
            f"/api/reviews/{review_id}/items/{image.id}/decision", json={"decision": "kept", "expected_version": 1}
        ),
    ]
    assert [r.status_code for r in refused] == [403] * len(refused)
    assert db.get(Image, image.id).label_version == 1


def test_suspicion_ranking_lists_the_least_self_confident_first(as_viewer, run, db) -> None:
    body = as_viewer.get(f"/api/runs/{run.run.id}/suspicious?subset=dev&limit=30").json()
    assert body["size"] == 30 and len(body["items"]) == 30
    scores = [_self_confidence(db, run, item["image_id"]) for item in body["items"]]
    assert scores == sorted(scores, reverse=True)
    assert 0 < body["flagged"] <= 30
    assert all(item["suggested"] != item["label"] for item in body["items"])
    assert as_viewer.get(f"/api/runs/{run.run.id}/suspicious?subset=train_dev").status_code == 422
