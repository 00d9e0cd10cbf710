"""Issue 15 item 15: empty states read well (no train-dev tab without a train-dev set, no "from 0.0% to at
best 0.0%", no "5.0% → 5.0%" before any label fix, negative gaps explained in one line); item 18's raw timing
keys and "succeeded done" on the run page."""

from __future__ import annotations

import re

from sqlalchemy.orm import Session

from app.error_analysis import service as error_analysis
from app.ml.error_analysis import CeilingRow, describe_ceiling
from tests.factories import RunFixture, make_run


def _scored(db: Session, **options) -> RunFixture:  # type: ignore[no-untyped-def]
    fixture = make_run(db, **options)
    fixture.run.metrics = {
        subset: {"count": len(images), "accuracy": 0.95, "error": 0.05, "loss": 0.2}
        for subset, images in fixture.images.items()
    }
    fixture.run.diagnosis = {
        "human_error": 0.0,
        "gaps": {"avoidable_bias": 0.05, "variance": -0.03, "dev_overfitting": -0.02},
        "largest": "avoidable_bias",
        "advice": "Reduce bias.",
    }
    fixture.run.timings = {"features_s": 1.25, "training_s": 3.5, "extracted_train": 60, "device": "cpu"}
    db.commit()
    return fixture


def test_negative_gaps_are_explained_in_one_line(db, as_viewer) -> None:
    fixture = _scored(db, sizes={"train": 10, "dev": 10, "test": 10})
    page = as_viewer.get(f"/runs/{fixture.run.id}").text
    variance_row = re.search(r"<tr[^>]*>\s*<td>variance</td>.*?</tr>", page, re.S)
    assert variance_row and "-3.0%" in variance_row.group(0)
    assert "below train error" in variance_row.group(0)
    overfitting_row = re.search(r"<tr[^>]*>\s*<td>dev overfitting</td>.*?</tr>", page, re.S)
    assert overfitting_row and "no sign of overfitting" in overfitting_row.group(0)


def test_no_before_and_after_arrow_until_a_label_is_fixed(db, as_viewer) -> None:
    fixture = _scored(db, sizes={"train": 10, "dev": 10, "test": 10})
    page = as_viewer.get(f"/runs/{fixture.run.id}").text
    table = re.search(r"<h2>Error by subset</h2>.*?</table>", page, re.S)
    assert table
    assert "→" not in table.group(0)
    assert "no label fixed yet" in table.group(0)


def test_timings_are_in_words_and_the_status_is_said_once(db, as_viewer) -> None:
    fixture = _scored(db, sizes={"train": 10, "dev": 10, "test": 10})
    page = as_viewer.get(f"/runs/{fixture.run.id}").text
    assert "features s" not in page and "training s" not in page
    assert "Feature extraction: 1.2 s" in page or "Feature extraction: 1.3 s" in page
    assert "Training: 3.5 s" in page


def test_the_error_analysis_offers_only_subsets_the_split_has(db, as_viewer) -> None:
    fixture = _scored(db, sizes={"train": 10, "dev": 10, "test": 10})
    page = as_viewer.get(f"/runs/{fixture.run.id}/errors?subset=dev").text
    assert "subset=test" in page
    assert "subset=train_dev" not in page


def test_ceilings_without_errors_or_without_tagged_errors_say_so() -> None:
    row = CeilingRow(
        tag="blurry", count=0, share=0.0, share_low=0.0, share_high=0.0, estimated_errors=0.0, ceiling_error=0.0
    )
    assert "0.0% to at best 0.0%" not in describe_ceiling(row, subset_error=0.0)
    assert "no dev errors" in describe_ceiling(row, subset_error=0.0).lower()
    untagged = CeilingRow(
        tag="blurry", count=0, share=0.0, share_low=0.0, share_high=0.3, estimated_errors=0.0, ceiling_error=0.1
    )
    assert "at best 10.0%" not in describe_ceiling(untagged, subset_error=0.1)
    assert "none of the reviewed" in describe_ceiling(untagged, subset_error=0.1).lower()


def test_a_run_with_no_dev_errors_has_no_empty_ceiling_sentence(db, as_viewer) -> None:
    fixture = _scored(db, sizes={"train": 10, "dev": 10, "test": 10}, error_rate=0.0)
    error_analysis.add_tag(db, dataset_id=fixture.dataset.id, name="blurry")
    db.commit()
    page = as_viewer.get(f"/runs/{fixture.run.id}/errors?subset=dev").text
    assert "from 0.0% to at best 0.0%" not in page


def test_the_image_grid_offers_no_train_dev_filter_when_the_split_has_none(db, as_viewer) -> None:
    fixture = make_run(db, sizes={"train": 4, "dev": 4, "test": 4})
    fixture.split.counts = {subset: {"total": 4} for subset in ("train", "dev", "test")}
    db.commit()
    page = as_viewer.get(f"/datasets/{fixture.dataset.id}").text
    select = re.search(r'<select name="subset">(.*?)</select>', page, re.S)
    assert select and 'value="dev"' in select.group(1) and 'value="train_dev"' not in select.group(1)
