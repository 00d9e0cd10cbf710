"""Error-analysis answers read from the service's views by attribute, where the view's names differ from the
JSON's: the list shows the filtered items (not the whole sample), and its counts are the sample's."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from pydantic import BaseModel

from app.error_analysis.schemas import AnalysisOut, ErrorListOut
from app.error_analysis.service import ErrorAnalysis, ErrorItem, ErrorSampleView
from app.ml.error_analysis import ceiling_table


def _answer(schema: type[BaseModel], view: Any) -> dict[str, Any]:
    dumped = schema.model_validate(view).model_dump(mode="json", by_alias=True)
    assert schema.model_validate(dumped).model_dump(mode="json") == dumped  # what FastAPI does with a returned model
    return dumped


def _item(image_id: int, *, label: str, is_error: bool) -> ErrorItem:
    return ErrorItem(
        image_id=image_id,
        label=label,
        predicted="dog",
        confidence=0.75,
        is_error=is_error,
        sampled_as_error=is_error,
        excluded=False,
        tags=("blurry",),
        tag_ids=frozenset({2}),
        note="",
        tagged_by=None,
        tagged_at=None,
        image_version="abc",
    )


def _sample(items: list[ErrorItem], shown: list[ErrorItem], stored: Any) -> ErrorSampleView:
    return ErrorSampleView(
        run=None,  # type: ignore[arg-type]
        subset="dev",
        seed=4,
        size=100,
        include_correct=1,
        stored=stored,
        subset_size=50,
        total_errors=9,
        matching_errors=6,
        items=items,
        shown=shown,
        label_filter="cat",
        predicted_filter=None,
    )


def test_the_list_shows_the_filtered_items_and_counts_the_whole_sample() -> None:
    items = [
        _item(1, label="cat", is_error=True),
        _item(2, label="bird", is_error=True),
        _item(3, label="cat", is_error=False),
    ]
    body = _answer(ErrorListOut, _sample(items, shown=[items[0], items[2]], stored=SimpleNamespace(id=12)))
    assert {key: value for key, value in body.items() if key != "items"} == {
        "subset": "dev",
        "seed": 4,
        "total_errors": 9,
        "sample_size": 2,
        "correct_in_sample": 1,
        "matching_errors": 6,
        "stored_sample_id": 12,
    }
    assert [item["image_id"] for item in body["items"]] == [1, 3]
    assert body["items"][0] == {
        "image_id": 1,
        "label": "cat",
        "predicted": "dog",
        "confidence": 0.75,
        "tags": ["blurry"],
        "is_error": True,
        "note": "",
        "tagged_by": None,
        "tagged_at": None,
    }
    assert _answer(ErrorListOut, _sample(items, shown=[], stored=None))["stored_sample_id"] is None


def test_the_analysis_lists_each_category_with_its_colour_and_sentence() -> None:
    rows = ceiling_table(subset_error=0.2, total_errors=10, reviewed=4, tag_counts={"blurry": 3, "mislabeled": 1})
    analysis = ErrorAnalysis(
        run_id=1,
        subset="train_dev",
        subset_size=50,
        total_errors=10,
        subset_error=0.2,
        sampled_errors=4,
        reviewed=4,
        rows=rows,
        colors={"blurry": "#3b82f6"},
    )
    body = _answer(AnalysisOut, analysis)
    assert [(c["tag"], c["color"], c["count"]) for c in body["categories"]] == [
        ("blurry", "#3b82f6", 3),
        ("mislabeled", "", 1),
    ]
    assert body["categories"][0]["description"] == analysis.sentence(rows[0]) and "train-dev" in analysis.sentence(
        rows[0]
    )
    assert body["categories"][0]["ceiling_error"] == rows[0].ceiling_error
    assert (body["subset"], body["subset_size"], body["reviewed"]) == ("train_dev", 50, 4)
