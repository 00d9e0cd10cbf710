"""The one query behind a similar-images answer's rows: label and subsets of each found image."""

from __future__ import annotations

from sqlalchemy.orm import Session

from app.embeddings import repository
from app.models import Image, Split, SplitAssignment
from tests.factories import make_run


def test_facts_of_gives_labels_and_ready_splits_subsets_newest_first(db: Session) -> None:
    fixture = make_run(db, sizes={"train": 3, "dev": 2}, seed=21)
    train, dev = fixture.images["train"], fixture.images["dev"]
    newer = Split(dataset_id=fixture.dataset.id, version=2, status="ready", params={})
    building = Split(dataset_id=fixture.dataset.id, version=3, status="building", params={})
    db.add_all([newer, building])
    db.flush()
    db.add(SplitAssignment(split_id=newer.id, image_id=train[0].id, subset="test"))
    db.add(SplitAssignment(split_id=building.id, image_id=train[0].id, subset="dev"))  # not ready: not shown
    unlabelled = Image(
        dataset_id=fixture.dataset.id, sha256="f" * 64, filename="late.jpg", source="phone", width=8, height=8
    )
    db.add(unlabelled)
    db.flush()
    other = make_run(db, sizes={"train": 1}, seed=22)  # another dataset's ready split says nothing about these

    facts = repository.facts_of(db, [train[0].id, dev[1].id, unlabelled.id, other.images["train"][0].id])

    names = {label.id: label.name for label in fixture.labels}
    assert facts[train[0].id] == (names[train[0].label_id], ["test", "train"])  # split v2, then v1
    assert facts[dev[1].id] == (names[dev[1].label_id], ["dev"])
    assert facts[unlabelled.id] == ("", [])  # added after the splits, no label
    assert facts[other.images["train"][0].id][1] == ["train"]
