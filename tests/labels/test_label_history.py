"""One owner of label writes and history: a write naming an old version changes nothing and says who changed it,
and every page (image detail, label review, error analysis) shows the same history rows."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.auth import service as auth_service
from app.labels import service as label_service
from app.models import LabelChange
from tests.factories import make_run

SHARED = ("kind", "old_label", "new_label", "version", "reason", "user", "created_at")


def test_a_write_naming_an_old_version_changes_nothing_and_names_the_change_since(db: Session) -> None:
    fixture = make_run(db, label_names=("cat", "dog", "fox"), sizes={"dev": 1}, seed=2)
    image = fixture.images["dev"][0]
    others = [label for label in fixture.labels if label.id != image.label_id]
    alice = auth_service.create_user(db, name="alice", role="reviewer")
    first = label_service.set_label(
        db, image=image, label_id=others[0].id, expected_version=1, reason="looks like one", user_id=alice.id
    )
    assert (first.version, first.new_label_id, image.label_version, image.label_id) == (
        2,
        others[0].id,
        2,
        others[0].id,
    )

    with pytest.raises(label_service.StaleVersion) as refused:
        label_service.set_label(db, image=image, label_id=others[1].id, expected_version=1, reason="", user_id=None)
    assert refused.value.status_code == 409
    assert refused.value.extra | {"changed_at": None} == {
        "image_id": image.id,
        "label": others[0].name,
        "label_version": 2,
        "excluded_reason": None,
        "changed_by": "alice",
        "changed_at": None,
    }
    for write in (
        lambda: label_service.set_exclusion(
            db, image=image, excluded_reason="two animals", expected_version=1, reason="two", user_id=None
        ),
        lambda: label_service.lock_version(db, image=image, expected_version=1),
        lambda: label_service.revert(db, change_id=first.id, expected_version=1, reason="", user_id=None),
    ):
        with pytest.raises(label_service.StaleVersion):
            write()
    changes = db.scalar(select(func.count()).select_from(LabelChange).where(LabelChange.image_id == image.id))
    assert changes == 2 and image.label_version == 2 and image.excluded_reason is None

    undone = label_service.revert(db, change_id=first.id, expected_version=2, reason="", user_id=None)
    assert (undone.revert.kind, undone.revert.version, undone.revert.reverts_change_id) == ("revert", 3, first.id)
    assert image.label_id == first.old_label_id and image.label_version == 3


def test_every_page_shows_the_same_history(db: Session, as_reviewer) -> None:  # type: ignore[no-untyped-def]
    fixture = make_run(db, label_names=("cat", "dog", "fox"), sizes={"dev": 20}, error_rate=0.6, seed=4)
    db.commit()
    image = next(image for image in fixture.images["dev"] if fixture.predicted[image.id] != image.label_id)
    predicted = next(label.name for label in fixture.labels if label.id == fixture.predicted[image.id])
    relabelled = as_reviewer.post(
        f"/api/images/{image.id}/label",
        json={"label": predicted, "expected_version": 1, "reason": "the model is right"},
    )
    assert relabelled.status_code == 200, relabelled.text
    excluded = as_reviewer.post(f"/api/images/{image.id}/exclude", json={"reason": "blurred", "expected_version": 2})
    assert excluded.status_code == 200, excluded.text
    reverted = as_reviewer.post(f"/api/label-changes/{excluded.json()['change_id']}/revert", json={})
    assert reverted.status_code == 200, reverted.text

    review = as_reviewer.get(f"/api/images/{image.id}/history").json()
    assert [(row["kind"], row["version"]) for row in review] == [
        ("import", 1),
        ("relabel", 2),
        ("ambiguous", 3),
        ("revert", 4),
    ]
    assert review[1]["new_label"] == predicted and review[1]["reason"] == "the model is right"
    assert review[3]["reverts_change_id"] == excluded.json()["change_id"]
    dataset_page = as_reviewer.get(f"/api/images/{image.id}").json()["history"]
    errors_page = as_reviewer.get(f"/api/runs/{fixture.run.id}/errors/{image.id}").json()["history"]
    for page in (dataset_page, errors_page):
        fields = [key for key in SHARED if key in page[0]]
        assert {"kind", "old_label", "new_label", "reason", "user", "created_at"} <= set(fields)
        assert [{key: row[key] for key in fields} for row in page] == [
            {key: row[key] for key in fields} for row in review
        ]
