"""Review answers read from the service's views by attribute: each JSON field comes from the right attribute,
and the JSON read back (as FastAPI does with a returned model) gives the same answer."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from app.review.agreement import AgreementView
from app.review.honesty import HonestyView
from app.review.logic import AgreementStats, ErrorRates, ErrorsLeft, FlagPrecision
from app.review.schemas import AgreementOut, HonestyOut, SuspicionOut
from app.review.suspicion import SubsetSuspicionSummary, SuspiciousExample


def _answer(schema: type[BaseModel], view: Any) -> dict[str, Any]:
    out = schema.model_validate(view)
    dumped = out.model_dump(mode="json", by_alias=True)
    assert schema.model_validate(dumped).model_dump(mode="json") == dumped
    return dumped


def test_agreement_counts_come_from_the_stats() -> None:
    stats = AgreementStats(open=4, confirmed=3, disagreements=1, withdrawn=2)
    view = AgreementView(review=None, required=True, open=[], disagreements=[], stats=stats)  # type: ignore[arg-type]
    assert _answer(AgreementOut, view) == {
        "required": True,
        "open": [],
        "disagreements": [],
        "confirmed": 3,
        "rejected": 1,
        "withdrawn": 2,
        "rate": 0.75,
    }


def test_honesty_reads_the_rates_and_the_errors_left() -> None:
    rates = ErrorRates(calibration=0.5, flagged_reviewed=4, agreeing_rate=0.25, agreeing_errors=1, agreeing_reviewed=4)
    view = HonestyView(
        review=None,  # type: ignore[arg-type]
        precision=[FlagPrecision(subset="all", reviewed=4, errors=2, ambiguous=1, awaiting=3)],
        rates=rates,
        left=[ErrorsLeft(subset="dev", unreviewed=10, doubted=2, flagged=1.5, agreeing=2.0)],
    )
    assert _answer(HonestyOut, view) == {
        "precision": [{"subset": "all", "reviewed": 4, "errors": 2, "ambiguous": 1, "awaiting": 3, "precision": 0.5}],
        "calibration": 0.5,
        "agreeing_rate": 0.25,
        "errors_left": [
            {"subset": "dev", "unreviewed": 10, "doubted": 2, "flagged": 1.5, "agreeing": 2.0, "total": 3.5}
        ],
    }


def test_suspicion_items_are_the_top_examples() -> None:
    top = [SuspiciousExample(image_id=7, label="cat", suggested="dog", suspicion=0.9, flagged=True)]
    summary = SubsetSuspicionSummary(subset="dev", size=20, flagged=3, top=top, disagreements=5)
    assert _answer(SuspicionOut, summary) == {
        "subset": "dev",
        "size": 20,
        "flagged": 3,
        "items": [{"image_id": 7, "label": "cat", "suggested": "dog", "suspicion": 0.9, "flagged": True}],
    }
