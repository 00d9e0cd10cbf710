"""The batch classifier of ingest, on plain data: what becomes of each file, and why."""

from __future__ import annotations

from app.ml.image_stats import ImageStats
from app.ml.images import Rejection
from app.uploads.logic import (
    BatchFile,
    DecodedImage,
    KnownImage,
    LabelPlan,
    classify_batch,
    entry_updates,
    labels_needed,
)
from app.uploads.states import EntryOutcome

IMAGE = DecodedImage(
    width=64,
    height=48,
    format="JPEG",
    notes=(),
    thumbnail=b"jpeg",
    dhash=7,
    stats=ImageStats(brightness=0.5, contrast=0.1, sharpness=0.01, entropy=4.0, colourfulness=0.2),
)


def file(entry_id: int, sha: str, label: str | None = "cat", *, result=IMAGE, problem=None) -> BatchFile:  # type: ignore[no-untyped-def]
    plan = LabelPlan(label=label, subset=None, source="web", problem=problem)
    return BatchFile(entry_id=entry_id, name=f"{label}/{entry_id}.jpg", sha256=sha, plan=plan, result=result)


def test_rejections_name_the_content_problem_first_then_the_label_problem() -> None:
    broken = Rejection("not_image", "not an image")
    files = [
        file(1, "a", None, result=broken, problem="no label: put it in a class folder"),
        file(2, "b", None, problem="no label: the labels CSV has no usable row for it"),
        file(3, "c", result=broken),
        file(4, "d", result=None),
    ]
    plan = classify_batch(files, labels={}, stored={})
    assert [(r.entry_id, r.reason) for r in plan.rejected] == [
        (1, "not an image; no label: put it in a class folder"),
        (2, "no label: the labels CSV has no usable row for it"),
        (3, "not an image"),
        (4, "could not be read"),
    ]
    assert plan.new == [] and plan.matches == []
    assert labels_needed(files) == []  # a rejected file creates no label


def test_copies_within_a_batch_are_duplicates_or_conflicts_of_the_first() -> None:
    files = [file(1, "a", "cat"), file(2, "a", "cat"), file(3, "a", "dog"), file(4, "b", "dog")]
    plan = classify_batch(files, labels={"cat": "cat", "dog": "dog"}, stored={})
    assert [new.file.entry_id for new in plan.new] == [1, 4]
    assert [(m.entry_id, m.outcome) for m in plan.matches] == [
        (2, EntryOutcome.DUPLICATE),
        (3, EntryOutcome.CONFLICT),
    ]
    assert labels_needed(files) == ["cat", "dog"]  # in the order they first appear
    updates = {row["id"]: row for row in entry_updates(plan, {"a": 10, "b": 11})}
    assert updates[1] == {"id": 1, "outcome": "accepted", "reason": None, "image_id": 10, "label": "cat"}
    assert updates[2]["reason"] == "same content as cat/1.jpg (image 10)"
    assert updates[3]["image_id"] == 10
    assert updates[3]["reason"] == "same content as cat/1.jpg (image 10), which is labelled 'cat'; this file says 'dog'"


def test_a_stored_image_is_matched_through_merged_label_names() -> None:
    stored = {"a": KnownImage(image_id=5, label="feline", filename="old/a.jpg")}
    files = [file(1, "a", "kitty"), file(2, "a", "dog")]
    plan = classify_batch(files, labels={"kitty": "feline", "dog": "dog"}, stored=stored)
    assert plan.new == []
    assert [(m.entry_id, m.outcome, m.label) for m in plan.matches] == [
        (1, EntryOutcome.DUPLICATE, "feline"),
        (2, EntryOutcome.CONFLICT, "dog"),
    ]
    assert plan.count(EntryOutcome.DUPLICATE) == plan.count(EntryOutcome.CONFLICT) == 1
    updates = {row["id"]: row for row in entry_updates(plan, {})}  # nothing new: no ids needed
    assert updates[1]["reason"] == "same content as old/a.jpg (image 5)"
    assert updates[2]["reason"].endswith("which is labelled 'feline'; this file says 'dog'")


def test_a_new_image_takes_the_label_merges_lead_to_and_keeps_its_notes() -> None:
    noted = DecodedImage(64, 48, "JPEG", ("extension .png does not match the content, which is JPEG",), b"", 0)
    plan = classify_batch([file(1, "a", "kitty", result=noted)], labels={"kitty": "feline"}, stored={})
    (new,) = plan.new
    assert new.label == "feline"
    (update,) = entry_updates(plan, {"a": 3})
    assert update["label"] == "kitty"  # the entry records what the file said
    assert update["reason"] == "extension .png does not match the content, which is JPEG"
