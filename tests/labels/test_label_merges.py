"""Merging labels and undoing a merge (issue 15.2): the undo moves back exactly the images the merge moved,
through versioned updates, and refuses (409, naming them) when any was relabelled since."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.models import Image, LabelChange
from tests.datasets.conftest import Ingest, noisy_jpeg


def _images(ingest: Ingest, dataset: int) -> dict[str, dict[str, Any]]:
    items = ingest.viewer.get(f"/api/datasets/{dataset}/images", params={"limit": 100}).json()["items"]
    return {item["filename"].rsplit("/", 1)[-1]: item for item in items}


def _merged_banana(ingest: Ingest) -> tuple[int, dict[str, int]]:
    dataset = ingest.create_dataset()
    files = [("apple/a.jpg", noisy_jpeg(1)), ("banana/b1.jpg", noisy_jpeg(2)), ("banana/b2.jpg", noisy_jpeg(3))]
    ingest.upload(dataset, [*files, ("cherry/c.jpg", noisy_jpeg(4))])
    labels = {label["name"]: label["id"] for label in ingest.viewer.get(f"/api/datasets/{dataset}/labels").json()}
    merged = ingest.reviewer.post(
        f"/api/datasets/{dataset}/labels/{labels['banana']}/merge", json={"into_label_id": labels["apple"]}
    )
    assert merged.status_code == 200, merged.text
    assert merged.json()["moved"] == 2
    return dataset, labels


def _latest_event(ingest: Ingest, dataset: int) -> dict[str, Any]:
    events = ingest.viewer.get(f"/api/datasets/{dataset}/label-events").json()
    return dict(events[0])


def test_undo_of_a_merge_moves_back_exactly_the_images_it_moved(ingest: Ingest) -> None:
    dataset, labels = _merged_banana(ingest)
    event = _latest_event(ingest, dataset)
    assert event["kind"] == "merge" and event["undoable"] is True and isinstance(event["id"], int)
    assert (event["details"]["from"], event["details"]["into"], event["details"]["images"]) == ("banana", "apple", 2)

    # After the merge, "banana" as the one label for every file lands in apple, and the report says why.
    later = ingest.upload(dataset, [("b3.jpg", noisy_jpeg(5))], label="banana")
    assert later["accepted"] == 1
    page = ingest.viewer.get(f"/uploads/{later['id']}")
    assert "banana was merged: it is now an alias of" in page.text and "stored as apple" in page.text
    assert ingest.viewer.get(f"/api/datasets/{dataset}").json()["labels"] == {"apple": 4, "cherry": 1}

    assert ingest.viewer.post(f"/api/datasets/{dataset}/label-events/{event['id']}/revert").status_code == 403
    undone = ingest.reviewer.post(f"/api/datasets/{dataset}/label-events/{event['id']}/revert")
    assert undone.status_code == 200, undone.text
    assert undone.json()["moved"] == 2 and undone.json()["label"]["name"] == "banana"
    images = _images(ingest, dataset)
    # The two images the merge moved are banana again; the file uploaded as the alias stays apple.
    assert {name: item["label"] for name, item in images.items()} == {
        "a.jpg": "apple",
        "b1.jpg": "banana",
        "b2.jpg": "banana",
        "b3.jpg": "apple",
        "c.jpg": "cherry",
    }
    assert ingest.viewer.get(f"/api/datasets/{dataset}").json()["labels"] == {"apple": 2, "banana": 2, "cherry": 1}
    history = ingest.viewer.get(f"/api/images/{images['b1.jpg']['id']}").json()["history"]
    assert [(h["kind"], h["old_label"], h["new_label"], h["version"]) for h in history] == [
        ("import", None, "banana", 1),
        ("merge", "banana", "apple", 2),
        ("revert", "apple", "banana", 3),
    ]
    events = ingest.viewer.get(f"/api/datasets/{dataset}/label-events").json()
    assert (events[0]["kind"], events[0]["details"]["images"], events[1]["undoable"]) == ("unmerge", 2, False)
    again = ingest.reviewer.post(f"/api/datasets/{dataset}/label-events/{event['id']}/revert")
    assert again.status_code == 409 and "already undone" in again.json()["detail"]
    not_a_merge = ingest.reviewer.post(f"/api/datasets/{dataset}/label-events/{events[0]['id']}/revert")
    assert not_a_merge.status_code == 422
    assert ingest.reviewer.post(f"/api/datasets/{dataset}/label-events/999999/revert").status_code == 404


def test_undo_is_refused_with_the_images_relabelled_since_and_changes_nothing(ingest: Ingest) -> None:
    dataset, labels = _merged_banana(ingest)
    event = _latest_event(ingest, dataset)
    images = _images(ingest, dataset)
    b2 = images["b2.jpg"]
    state = ingest.viewer.get(f"/api/images/{b2['id']}").json()
    relabel = ingest.reviewer.post(
        f"/api/images/{b2['id']}/label", json={"label": "cherry", "expected_version": state["label_version"]}
    )
    assert relabel.status_code == 200, relabel.text

    refused = ingest.reviewer.post(f"/api/datasets/{dataset}/label-events/{event['id']}/revert")
    assert refused.status_code == 409, refused.text
    assert refused.json()["images"] == [b2["id"]]
    assert "1 of the 2 images" in refused.json()["detail"]
    # Nothing moved, no history written, the merged label still retired.
    assert ingest.viewer.get(f"/api/datasets/{dataset}").json()["labels"] == {"apple": 2, "cherry": 2}
    with Session(ingest.engine) as session:
        kinds = session.scalars(select(LabelChange.kind).join(Image).where(Image.dataset_id == dataset)).all()
        assert sorted(kinds) == ["import"] * 4 + ["merge", "merge", "relabel"]
    assert _latest_event(ingest, dataset)["undoable"] is True
