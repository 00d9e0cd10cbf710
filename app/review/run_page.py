"""A run's review page: is fixing labels worth it, the suspicious examples of dev and test, the dataset's campaigns
with their progress, and its finished runs re-scored against the current labels."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session

from app.core.lookup import get_or_404
from app.ml.error_analysis import LabelFixDecision
from app.models import Dataset, Review, Run
from app.review import logic, repository
from app.review.campaigns import progress
from app.review.rescoring import label_fix_decision, rescored_metrics
from app.review.suspicion import REVIEWED_SUBSETS, SubsetSuspicionSummary, finished_run, suspicious_examples


@dataclass(frozen=True)
class RescoredRun:
    run: Run
    metrics: dict[str, dict[str, Any]]


@dataclass(frozen=True)
class RunReviewPage:
    run: Run
    dataset: Dataset
    decision: LabelFixDecision
    sample_reviewed: bool  # whether the run's dev errors have a current error-analysis sample at all
    suspicion: list[SubsetSuspicionSummary]
    reviews: list[tuple[Review, list[logic.SubsetProgress]]]
    rescored: list[RescoredRun]


def run_review_page(session: Session, *, run_id: int) -> RunReviewPage:
    run = finished_run(session, run_id)
    dataset = get_or_404(session, Dataset, run.dataset_id)
    decision, sampled = label_fix_decision(session, run=run)
    reviews = [
        (review, progress(session, review)) for review in repository.reviews_of_dataset(session, dataset_id=dataset.id)
    ]
    return RunReviewPage(
        run=run,
        dataset=dataset,
        decision=decision,
        sample_reviewed=sampled,
        suspicion=[suspicious_examples(session, run_id=run.id, subset=subset, limit=8) for subset in REVIEWED_SUBSETS],
        reviews=reviews,
        rescored=[
            RescoredRun(run=other, metrics=rescored_metrics(session, run_id=other.id))
            for other in repository.finished_runs_of_dataset(session, dataset_id=dataset.id)
        ],
    )
