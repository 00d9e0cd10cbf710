"""A campaign's honesty figures: how often the suspicion ranking was right about the items reviewed so far, and
how many label errors are probably still in dev and test (the maths is in ``logic``)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sqlalchemy.orm import Session

from app.core.lookup import get_or_404
from app.labels import service as label_service
from app.models import Review, Run
from app.review import campaigns, logic, repository
from app.review.suspicion import REVIEWED_SUBSETS, rank


@dataclass(frozen=True)
class HonestyView:
    review: Review
    precision: list[logic.FlagPrecision]  # per subset of the campaign, then "all"
    rates: logic.ErrorRates
    left: list[logic.ErrorsLeft]  # dev, then test

    @property
    def overall(self) -> logic.FlagPrecision:
        return self.precision[-1]


def honesty_view(session: Session, *, review_id: int) -> HonestyView:
    review = campaigns.get_review(session, review_id)
    run = get_or_404(session, Run, review.run_id)
    labels = label_service.names(session, dataset_id=review.dataset_id)
    rows = repository.campaign_items(session, review_id=review.id)
    items = [logic.CampaignItem(subset, selection, status, score) for _, subset, selection, status, score in rows]
    # Train (reviewed only on request) is scored in-sample: it would skew the rates that dev and test share.
    rates = logic.error_rates([item for item in items if item.subset in REVIEWED_SUBSETS])
    left = []
    for subset in REVIEWED_SUBSETS:
        reviewed = [image_id for image_id, s, _, status, _ in rows if s == subset and status in logic.REVIEWED]
        picked = [image_id for image_id, s, selection, _, _ in rows if s == subset and selection == logic.SUSPICIOUS]
        ranked, _ = rank(session, run=run, subset=subset, labels=labels)
        unreviewed = ~np.isin(ranked.image_ids, reviewed)
        doubted = ~ranked.correctly_classified | np.isin(ranked.image_ids, picked)
        left.append(
            logic.errors_left(
                subset=subset, suspicion=ranked.scores[unreviewed], doubted=doubted[unreviewed], rates=rates
            )
        )
    return HonestyView(
        review=review, precision=logic.flag_precision(items, review.subsets.split(",")), rates=rates, left=left
    )
