"""Two-reviewer agreement through the API on SQLite and Postgres: a relabel in such a campaign only proposes,
a second reviewer confirms (applied, versioned, both names in the history) or rejects it; one's own proposal cannot
be confirmed (403), a proposal whose image was relabelled since is refused (409 naming the change), and a closed
campaign takes no confirmations or rejections."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.models import Image, LabelChange
from tests.factories import RunFixture, make_run
from tests.review.conftest import start_campaign


@pytest.fixture
def run(db: Session) -> RunFixture:
    fixture = make_run(db, sizes={"dev": 20, "test": 20}, error_rate=0.3, seed=31)
    db.commit()
    return fixture


def _propose(client: TestClient, review_id: int, item: dict[str, Any], label: str, reason: str = "") -> Any:
    return client.post(
        f"/api/images/{item['image_id']}/label",
        json={"label": label, "expected_version": item["label_version"], "review_id": review_id, "reason": reason},
    )


def _first_item(client: TestClient, review_id: int, subset: str = "test") -> dict[str, Any]:
    items = client.get(f"/api/reviews/{review_id}").json()["items"]
    return next(item for item in items if item["subset"] == subset)


def _other(run: RunFixture, label: str) -> str:
    return next(label_.name for label_ in run.labels if label_.name != label)


def _item(client: TestClient, review_id: int, image_id: int) -> dict[str, Any]:
    return next(i for i in client.get(f"/api/reviews/{review_id}").json()["items"] if i["image_id"] == image_id)


def test_agreement_is_on_by_default_and_a_relabel_only_proposes(as_reviewer, run, db) -> None:
    review_id = start_campaign(as_reviewer, run, require_agreement=None)  # not said: on, since it touches test
    body = as_reviewer.get(f"/api/reviews/{review_id}").json()
    assert body["require_agreement"] is True
    assert start_campaign(as_reviewer, run, require_agreement=False) != review_id
    item = _first_item(as_reviewer, review_id)
    new = _other(run, item["label"])

    proposed = _propose(as_reviewer, review_id, item, new, reason="looks like a fox")
    assert proposed.status_code == 200, proposed.text
    answer = proposed.json()
    assert (answer["review_status"], answer["label"], answer["label_version"]) == ("proposed", item["label"], 1)
    assert answer["change_id"] is None
    assert answer["proposal"]["state"] == "proposed" and answer["proposal"]["new_label"] == new
    # The label is as it was, nothing entered the history, and the item is not done yet.
    assert as_reviewer.get(f"/api/images/{item['image_id']}/label").json()["label"] == item["label"]
    assert [h["kind"] for h in as_reviewer.get(f"/api/images/{item['image_id']}/history").json()] == ["import"]
    listed = _item(as_reviewer, review_id, item["image_id"])
    assert listed["status"] == "proposed" and listed["proposal"]["state"] == "proposed"
    assert listed["proposal"]["reason"] == "looks like a fox"
    assert as_reviewer.get(f"/api/reviews/{review_id}").json()["progress"]["test"]["done"] == 0

    # While it waits, the item takes no other decision in the campaign.
    again = _propose(as_reviewer, review_id, item, _other(run, new))
    keep = as_reviewer.post(
        f"/api/reviews/{review_id}/items/{item['image_id']}/decision", json={"decision": "kept", "expected_version": 1}
    )
    exclude = as_reviewer.post(
        f"/api/images/{item['image_id']}/exclude",
        json={"reason": "blurry", "expected_version": 1, "review_id": review_id},
    )
    assert [r.status_code for r in (again, keep, exclude)] == [409, 409, 409]
    assert "open proposal" in again.json()["detail"]
    assert db.get(Image, item["image_id"]).label_version == 1


def test_a_second_reviewer_confirms_and_both_names_are_in_the_history(as_reviewer, as_admin, people, run) -> None:
    review_id = start_campaign(as_reviewer, run, require_agreement=True)
    item = _first_item(as_reviewer, review_id)
    new = _other(run, item["label"])
    assert _propose(as_reviewer, review_id, item, new, reason="a fox").status_code == 200

    own = as_reviewer.post(f"/api/reviews/{review_id}/items/{item['image_id']}/confirm")
    assert own.status_code == 403 and "another reviewer" in own.json()["detail"]
    assert as_reviewer.get(f"/api/images/{item['image_id']}/label").json()["label_version"] == 1

    confirmed = as_admin.post(f"/api/reviews/{review_id}/items/{item['image_id']}/confirm")
    assert confirmed.status_code == 200, confirmed.text
    answer = confirmed.json()
    assert (answer["label"], answer["label_version"], answer["review_status"]) == (new, 2, "relabeled")
    assert answer["proposal"]["state"] == "confirmed" and answer["proposal"]["change_id"] == answer["change_id"]
    history = as_reviewer.get(f"/api/images/{item['image_id']}/history").json()
    last = history[-1]
    assert (last["kind"], last["old_label"], last["new_label"], last["version"]) == ("relabel", item["label"], new, 2)
    assert (last["user"], last["confirmed_by"], last["reason"]) == (
        people["reviewer"].name,
        people["admin"].name,
        "a fox",
    )
    assert last["review_id"] == review_id
    listed = _item(as_reviewer, review_id, item["image_id"])
    assert listed["status"] == "relabeled" and listed["proposal"]["state"] == "confirmed"
    agreement = as_reviewer.get(f"/api/reviews/{review_id}/agreement").json()
    assert (agreement["confirmed"], agreement["rejected"], agreement["rate"], agreement["open"]) == (1, 0, 1.0, [])

    twice = as_admin.post(f"/api/reviews/{review_id}/items/{item['image_id']}/confirm")
    assert twice.status_code == 409 and "already confirmed" in twice.json()["detail"]
    nothing = as_admin.post(
        f"/api/reviews/{review_id}/items/{_first_item(as_admin, review_id, 'dev')['image_id']}/confirm"
    )
    assert nothing.status_code == 404
    # The applied change is an ordinary one: reverting it puts the item back to undecided.
    reverted = as_admin.post(f"/api/label-changes/{answer['change_id']}/revert")
    assert (reverted.json()["label"], reverted.json()["review_status"]) == (item["label"], "pending")


def test_a_rejection_keeps_the_label_and_counts_as_a_disagreement(as_reviewer, as_admin, people, run) -> None:
    review_id = start_campaign(as_reviewer, run, require_agreement=True)
    items = [i for i in as_reviewer.get(f"/api/reviews/{review_id}").json()["items"] if i["subset"] == "test"][:3]
    for item in items:
        assert _propose(as_reviewer, review_id, item, _other(run, item["label"])).status_code == 200
    rejected = as_admin.post(
        f"/api/reviews/{review_id}/items/{items[0]['image_id']}/reject",
        json={"reason": "it is a cat, look at the ears"},
    )
    assert rejected.status_code == 200, rejected.text
    assert (rejected.json()["label"], rejected.json()["label_version"]) == (items[0]["label"], 1)
    assert rejected.json()["review_status"] == "kept" and rejected.json()["proposal"]["state"] == "rejected"
    withdrawn = as_reviewer.post(f"/api/reviews/{review_id}/items/{items[1]['image_id']}/reject")
    assert withdrawn.json()["review_status"] == "pending" and withdrawn.json()["proposal"]["withdrawn"] is True
    assert as_admin.post(f"/api/reviews/{review_id}/items/{items[2]['image_id']}/confirm").status_code == 200

    agreement = as_reviewer.get(f"/api/reviews/{review_id}/agreement").json()
    assert (agreement["confirmed"], agreement["rejected"], agreement["withdrawn"]) == (1, 1, 1)
    assert agreement["rate"] == pytest.approx(0.5)
    [disagreement] = agreement["disagreements"]
    assert (disagreement["image_id"], disagreement["decided_by"]) == (items[0]["image_id"], people["admin"].name)
    assert disagreement["decision_reason"] == "it is a cat, look at the ears"
    assert as_reviewer.post(f"/api/reviews/{review_id}/items/{items[0]['image_id']}/reject").status_code == 409
    # A withdrawn item can be proposed again.
    assert _propose(as_reviewer, review_id, items[1], _other(run, items[1]["label"])).status_code == 200


def test_a_proposal_whose_image_was_relabelled_since_is_refused_naming_the_change(
    as_reviewer, as_admin, people, run, db
) -> None:
    review_id = start_campaign(as_reviewer, run, require_agreement=True)
    item = _first_item(as_reviewer, review_id)
    proposed_label = _other(run, item["label"])
    assert _propose(as_reviewer, review_id, item, proposed_label).status_code == 200
    meanwhile = next(label.name for label in run.labels if label.name not in (item["label"], proposed_label))
    direct = as_admin.post(f"/api/images/{item['image_id']}/label", json={"label": meanwhile, "expected_version": 1})
    assert direct.status_code == 200  # outside the campaign, a relabel applies at once

    stale = as_admin.post(f"/api/reviews/{review_id}/items/{item['image_id']}/confirm")
    assert stale.status_code == 409
    body = stale.json()
    assert f"change #{direct.json()['change_id']}" in body["detail"] and people["admin"].name in body["detail"]
    assert (body["change_id"], body["changed_by"]) == (direct.json()["change_id"], people["admin"].name)
    assert (body["label"], body["label_version"]) == (meanwhile, 2)
    db.expire_all()
    assert db.get(Image, item["image_id"]).label_version == 2
    assert db.scalar(select(func.count()).select_from(LabelChange).where(LabelChange.image_id == item["image_id"])) == 2
    open_ = as_reviewer.get(f"/api/reviews/{review_id}/agreement").json()["open"]
    assert [(p["image_id"], p["stale"]) for p in open_] == [(item["image_id"], True)]
    assert as_admin.post(f"/api/reviews/{review_id}/items/{item['image_id']}/reject").status_code == 200


def test_a_closed_campaign_refuses_confirm_and_reject(as_reviewer, as_admin, run) -> None:
    review_id = start_campaign(as_reviewer, run, require_agreement=True)
    item = _first_item(as_reviewer, review_id)
    assert _propose(as_reviewer, review_id, item, _other(run, item["label"])).status_code == 200
    assert as_reviewer.patch(f"/api/reviews/{review_id}", json={"status": "closed"}).status_code == 200
    refused = [
        as_admin.post(f"/api/reviews/{review_id}/items/{item['image_id']}/confirm"),
        as_admin.post(f"/api/reviews/{review_id}/items/{item['image_id']}/reject"),
    ]
    assert [r.status_code for r in refused] == [409, 409]
    assert all("closed" in r.json()["detail"] for r in refused)
    assert as_admin.get(f"/api/images/{item['image_id']}/label").json()["label_version"] == 1
    assert as_reviewer.patch(f"/api/reviews/{review_id}", json={"status": "open"}).status_code == 200
    assert as_admin.post(f"/api/reviews/{review_id}/items/{item['image_id']}/confirm").status_code == 200


def test_viewers_cannot_confirm_or_reject(as_viewer, as_reviewer, run) -> None:
    review_id = start_campaign(as_reviewer, run, require_agreement=True)
    item = _first_item(as_reviewer, review_id)
    assert _propose(as_reviewer, review_id, item, _other(run, item["label"])).status_code == 200
    assert as_viewer.post(f"/api/reviews/{review_id}/items/{item['image_id']}/confirm").status_code == 403
    assert as_viewer.post(f"/api/reviews/{review_id}/items/{item['image_id']}/reject").status_code == 403
    assert as_viewer.get(f"/api/reviews/{review_id}/agreement").json()["open"][0]["image_id"] == item["image_id"]
