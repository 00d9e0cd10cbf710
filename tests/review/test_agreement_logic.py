"""The pure maths of two-reviewer agreement and the campaign's honesty figures, on small hand-checked cases."""

from __future__ import annotations

import pytest

from app.review import logic
from app.review.logic import CampaignItem, ProposalOutcome


def test_agreement_is_on_for_campaigns_that_touch_test_unless_asked_otherwise() -> None:
    assert logic.requires_agreement(["dev", "test"], asked=None) is True
    assert logic.requires_agreement(["dev"], asked=None) is False
    assert logic.requires_agreement(["dev", "test"], asked=False) is False
    assert logic.requires_agreement(["dev"], asked=True) is True


def test_agreement_rate_counts_second_reviewer_decisions_only() -> None:
    stats = logic.agreement_stats(
        [
            ProposalOutcome("proposed", 1, None),
            ProposalOutcome("confirmed", 1, 2),
            ProposalOutcome("confirmed", 2, 1),
            ProposalOutcome("rejected", 1, 2),  # a disagreement
            ProposalOutcome("rejected", 3, 3),  # withdrawn by its proposer
        ]
    )
    assert (stats.open, stats.confirmed, stats.disagreements, stats.withdrawn) == (1, 2, 1, 1)
    assert stats.rate == pytest.approx(2 / 3)
    assert logic.agreement_stats([ProposalOutcome("proposed", 1, None)]).rate is None


def _items() -> list[CampaignItem]:
    s, c = logic.SUSPICIOUS, logic.CORRECT_SAMPLE
    return [
        CampaignItem("dev", s, "relabeled", 0.9),
        CampaignItem("dev", s, "kept", 0.6),
        CampaignItem("dev", s, "ambiguous", 0.8),
        CampaignItem("dev", s, "pending", 0.7),
        CampaignItem("test", s, "relabeled", 0.5),
        CampaignItem("test", s, "proposed", 0.4),
        CampaignItem("test", c, "kept", 0.1),
        CampaignItem("dev", c, "relabeled", 0.2),
        CampaignItem("dev", c, "kept", 0.1),
        CampaignItem("test", c, "kept", 0.05),
    ]


def test_flag_precision_counts_relabeled_among_reviewed_suspicious_picks() -> None:
    rows = {row.subset: row for row in logic.flag_precision(_items(), ["dev", "test"])}
    assert (rows["dev"].errors, rows["dev"].reviewed, rows["dev"].ambiguous, rows["dev"].awaiting) == (1, 2, 1, 1)
    assert (rows["test"].errors, rows["test"].reviewed, rows["test"].awaiting) == (1, 1, 1)
    assert (rows["all"].errors, rows["all"].reviewed) == (2, 3) and rows["all"].precision == pytest.approx(2 / 3)
    assert logic.flag_precision([], ["dev"])[0].precision is None


def test_errors_left_scales_the_model_doubt_by_what_reviewers_found() -> None:
    rates = logic.error_rates(_items())
    # Reviewed suspicious picks: 0.9 (error), 0.6 (kept), 0.5 (error): 2 errors over 2.0 of doubt.
    assert rates.calibration == pytest.approx(1.0) and rates.flagged_reviewed == 3
    # Reviewed correct samples: 1 of 4 was wrong.
    assert rates.agreeing_rate == pytest.approx(0.25) and (rates.agreeing_errors, rates.agreeing_reviewed) == (1, 4)
    left = logic.errors_left(
        subset="dev", suspicion=[0.7, 0.3, 0.1, 0.1, 0.2], doubted=[True, True, False, False, False], rates=rates
    )
    assert (left.unreviewed, left.doubted) == (5, 2)
    assert left.flagged == pytest.approx(1.0) and left.agreeing == pytest.approx(0.75)
    assert left.total == pytest.approx(1.75)


def test_an_image_counts_for_at_most_one_error_and_unknown_parts_stay_unknown() -> None:
    sure = logic.ErrorRates(
        calibration=3.0, flagged_reviewed=2, agreeing_rate=None, agreeing_errors=0, agreeing_reviewed=0
    )
    left = logic.errors_left(subset="test", suspicion=[0.9, 0.1], doubted=[True, True], rates=sure)
    assert left.flagged == pytest.approx(1.0 + 0.3)
    assert left.agreeing is None and left.total is None
    nothing = logic.error_rates([])
    assert nothing.calibration is None and nothing.agreeing_rate is None
    with pytest.raises(ValueError):
        logic.errors_left(subset="dev", suspicion=[0.1], doubted=[True, False], rates=nothing)
