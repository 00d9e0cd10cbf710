"""Re-scoring without retraining: a run's dev/test metrics from its stored predictions against the current labels,
and whether fixing labels is worth it at all (the "is it worth it" panel of a run's review page)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from sqlalchemy.orm import Session

from app.core.lookup import get_or_404
from app.error_analysis import service as error_analysis
from app.ml.error_analysis import LabelFixDecision, decide_label_fix
from app.ml.metrics import rescore
from app.models import Run
from app.review import repository
from app.review.suspicion import REVIEWED_SUBSETS


def _rate(value: float) -> float | None:
    return None if math.isnan(value) else value


def rescored_metrics(session: Session, *, run_id: int) -> dict[str, dict[str, Any]]:
    """A run's dev/test metrics from its stored predictions against the current labels (no retraining), next to
    the metrics against the labels it was scored with. Excluded (ambiguous) images are left out of "after".

    Per subset: ``accuracy``, ``error``, ``before_accuracy``, ``before_error`` (None for an empty subset),
    ``count`` (images scored after), ``changed`` (images whose label differs from the one the run saw) and
    ``excluded``.
    """
    run = get_or_404(session, Run, run_id)
    result: dict[str, dict[str, Any]] = {}
    for subset in REVIEWED_SUBSETS:
        # The cached subset (kept current by label changes) rather than a join of the predictions with the images
        # on every campaign page and progress poll.
        state = error_analysis.subset_state(session, run=run, subset=subset)
        if not state.image_ids.size:
            continue
        before = rescore(state.predicted, state.labels_at_prediction, np.zeros(state.image_ids.size, dtype=bool))
        after = rescore(state.predicted, state.labels, state.excluded)
        result[subset] = {
            "accuracy": _rate(after.accuracy),
            "error": _rate(after.error),
            "before_accuracy": _rate(before.accuracy),
            "before_error": _rate(before.error),
            "count": after.count,
            "changed": int(np.count_nonzero(state.labels != state.labels_at_prediction)),
            "excluded": int(np.count_nonzero(state.excluded)),
        }
    return result


def _smallest_run_gap(session: Session, *, run: Run, dev_error: float) -> float | None:
    """How close the nearest other finished run of the same split is in (re-scored) dev error."""
    gaps = []
    for other in repository.finished_runs_of_split(session, split_id=run.split_id):
        if other.id == run.id:
            continue
        other_error = rescored_metrics(session, run_id=other.id).get("dev", {}).get("error")
        if other_error is not None:
            gaps.append(abs(other_error - dev_error))
    return min(gaps) if gaps else None


def label_fix_decision(session: Session, *, run: Run) -> tuple[LabelFixDecision, bool]:
    """Whether fixing labels is worth it, from the ``mislabeled`` share of the run's reviewed dev errors (the error
    analysis' current sample), and whether that sample exists yet."""
    reviewed = mislabeled = 0
    dev = rescored_metrics(session, run_id=run.id).get("dev", {})
    dev_error = dev.get("error") or 0.0
    sampled = repository.has_current_error_sample(session, run_id=run.id, subset="dev")
    if sampled:
        analysis = error_analysis.analyse(session, run_id=run.id, subset="dev")
        dev_error = analysis.subset_error
        reviewed = analysis.reviewed
        mislabeled = next((row.count for row in analysis.rows if row.tag == error_analysis.MISLABELED), 0)
    decision = decide_label_fix(
        dev_error=dev_error,
        mislabeled=mislabeled,
        reviewed=reviewed,
        smallest_run_gap=_smallest_run_gap(session, run=run, dev_error=dev_error),
        avoidable_bias=(run.diagnosis or {}).get("gaps", {}).get("avoidable_bias"),
    )
    return decision, sampled
