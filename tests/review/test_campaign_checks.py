"""The campaign page's checks on SQLite and Postgres: "X of Y reviewed flags were real errors", the estimated label
errors left in dev and test (recomputed here from the stored predictions), and the agreement panel."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from sqlalchemy.orm import Session

from app.models import Image, Prediction
from tests.factories import RunFixture, make_run
from tests.review.conftest import element_text, label_name, start_campaign


@pytest.fixture
def run(db: Session) -> RunFixture:
    fixture = make_run(db, sizes={"dev": 30, "test": 30}, error_rate=0.4, seed=41)
    db.commit()
    return fixture


def _expected_left(db: Session, run: RunFixture, items: list[dict[str, Any]], subset: str) -> float:
    """The estimate by its stated rule, from the run's stored probabilities and today's labels."""
    picked = [i for i in items if i["selection"] == "suspicious" and i["status"] in ("kept", "relabeled")]
    calibration = sum(i["status"] == "relabeled" for i in picked) / sum(i["suspicion"] for i in picked)
    sampled = [i for i in items if i["selection"] == "correct_sample" and i["status"] in ("kept", "relabeled")]
    agreeing_rate = sum(i["status"] == "relabeled" for i in sampled) / len(sampled)
    reviewed = {i["image_id"] for i in picked + sampled}
    suspicious = {i["image_id"] for i in items if i["selection"] == "suspicious"}
    names = list(run.run.label_names)
    total = 0.0
    for image in run.images[subset]:
        if image.id in reviewed:
            continue
        prediction = db.get(Prediction, (run.run.id, image.id))
        current = db.get(Image, image.id)
        assert prediction is not None and current is not None
        probs = np.frombuffer(prediction.probs, dtype=np.float32)
        column = names.index(label_name(run, current.label_id))
        if int(probs.argmax()) != column or image.id in suspicious:
            total += min(1.0, (1.0 - float(probs[column])) * calibration)
        else:
            total += agreeing_rate
    return total


def test_the_page_says_how_many_flags_were_real_errors_and_estimates_what_is_left(as_reviewer, run, db) -> None:
    review_id = start_campaign(as_reviewer, run, suspicious_per_subset=4, correct_per_subset=3)
    before = as_reviewer.get(f"/api/reviews/{review_id}/honesty").json()
    assert before["precision"][-1] == {
        "subset": "all",
        "reviewed": 0,
        "errors": 0,
        "ambiguous": 0,
        "awaiting": 8,
        "precision": None,
    }
    assert [row["total"] for row in before["errors_left"]] == [None, None]  # nothing reviewed: not yet known
    page = as_reviewer.get(f"/reviews/{review_id}").text
    assert element_text(page, "data-flag-precision").startswith("0 of 0 reviewed flags were real errors")
    assert element_text(page, 'data-errors-left="dev"') == "not yet known"

    items = as_reviewer.get(f"/api/reviews/{review_id}").json()["items"]
    suspicious = [i for i in items if i["selection"] == "suspicious"]
    sampled = [i for i in items if i["selection"] == "correct_sample"]
    # Three flags were real errors (given the model's label), three were fine; one sampled correct one was wrong.
    for item in suspicious[:3]:
        other = (
            item["predicted"]
            if item["predicted"] != item["label"]
            else next(label.name for label in run.labels if label.name != item["label"])
        )
        response = as_reviewer.post(
            f"/api/images/{item['image_id']}/label",
            json={"label": other, "expected_version": item["label_version"], "review_id": review_id},
        )
        assert response.json()["review_status"] == "relabeled"
    for item in [*suspicious[3:6], *sampled[:3]]:
        response = as_reviewer.post(
            f"/api/reviews/{review_id}/items/{item['image_id']}/decision",
            json={"decision": "kept", "expected_version": item["label_version"]},
        )
        assert response.status_code == 200
    wrong_sample = sampled[3]
    as_reviewer.post(
        f"/api/images/{wrong_sample['image_id']}/label",
        json={
            "label": next(label.name for label in run.labels if label.name != wrong_sample["label"]),
            "expected_version": 1,
            "review_id": review_id,
        },
    )

    items = as_reviewer.get(f"/api/reviews/{review_id}").json()["items"]
    honesty = as_reviewer.get(f"/api/reviews/{review_id}/honesty").json()
    overall = honesty["precision"][-1]
    assert (overall["errors"], overall["reviewed"], overall["awaiting"]) == (3, 6, 2)
    assert overall["precision"] == pytest.approx(0.5)
    assert honesty["agreeing_rate"] == pytest.approx(1 / 4)
    for row in honesty["errors_left"]:
        assert row["total"] == pytest.approx(_expected_left(db, run, items, row["subset"]), rel=1e-5)
        assert row["unreviewed"] == 30 - sum(
            1 for i in items if i["subset"] == row["subset"] and i["status"] in ("kept", "relabeled")
        )

    page = as_reviewer.get(f"/reviews/{review_id}").text
    assert element_text(page, "data-flag-precision").startswith("3 of 6 reviewed flags were real errors (50.0%)")
    for row in honesty["errors_left"]:
        assert element_text(page, f'data-errors-left="{row["subset"]}"') == f"≈ {row['total']:.0f}"
    assert "How this is estimated" in element_text(page, "data-estimate-method")
    assert "1 of 4" in element_text(page, "data-estimate-method")  # the sampled correct ones, as counted above
    # The polled fragment says the same.
    assert element_text(as_reviewer.get(f"/reviews/{review_id}/checks").text, "data-flag-precision").startswith(
        "3 of 6"
    )


def test_the_page_lists_open_proposals_with_confirm_for_others_and_disagreements(
    as_reviewer, as_admin, people, run
) -> None:
    review_id = start_campaign(as_reviewer, run, require_agreement=True)
    items = [i for i in as_reviewer.get(f"/api/reviews/{review_id}").json()["items"] if i["subset"] == "test"][:2]
    for item in items:
        new = next(label.name for label in run.labels if label.name != item["label"])
        body = {"label": new, "expected_version": 1, "review_id": review_id, "reason": "ears"}
        assert as_reviewer.post(f"/api/images/{item['image_id']}/label", json=body).status_code == 200
    as_admin.post(f"/api/reviews/{review_id}/items/{items[1]['image_id']}/reject", json={"reason": "no, a cat"})

    mine = as_reviewer.get(f"/reviews/{review_id}?view=all").text
    assert f'data-proposal="{items[0]["image_id"]}"' in mine and "yours: another reviewer confirms" in mine
    assert f'data-confirm-proposal="{items[0]["image_id"]}"' not in mine
    assert "data-agreement-keys" in mine and "data-item-proposal" in mine
    theirs = as_admin.get(f"/reviews/{review_id}?view=all").text
    assert f'data-confirm-proposal="{items[0]["image_id"]}"' in theirs
    assert element_text(theirs, "data-agreement-rate") == "0.0%"  # one decided by a second reviewer: rejected
    assert "no, a cat" in theirs and people["admin"].name in theirs
    detail = as_admin.get(f"/reviews/{review_id}/items/{items[0]['image_id']}").text
    assert "data-detail-proposal" in detail and f'data-confirm-proposal="{items[0]["image_id"]}"' in detail
    # Once confirmed, the history row names both reviewers.
    assert as_admin.post(f"/api/reviews/{review_id}/items/{items[0]['image_id']}/confirm").status_code == 200
    detail = as_admin.get(f"/reviews/{review_id}/items/{items[0]['image_id']}").text
    assert f"{people['reviewer'].name}, confirmed by {people['admin'].name}" in detail
    assert element_text(as_admin.get(f"/reviews/{review_id}/checks").text, "data-agreement-rate") == "50.0%"
