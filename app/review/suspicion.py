"""Suspicion: a finished run's examples ranked by how likely their given label is wrong (from the run's stored
probabilities), the ranking every campaign selects from and the honesty figures score."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sqlalchemy.orm import Session

from app.core.errors import Conflict, Invalid, check_between
from app.core.lookup import get_or_404
from app.labels import service as label_service
from app.models import Run
from app.review import logic, repository
from app.training.states import RunStatus

REVIEWED_SUBSETS = ("dev", "test")
TRAIN = "train"
MAX_PER_SUBSET = 1_000


@dataclass(frozen=True)
class SuspiciousExample:
    image_id: int
    label: str
    suggested: str | None
    suspicion: float
    flagged: bool


@dataclass(frozen=True)
class SubsetSuspicionSummary:
    subset: str
    size: int
    flagged: int
    top: list[SuspiciousExample]
    disagreements: int = 0  # images whose most probable class is not their label


def finished_run(session: Session, run_id: int) -> Run:
    run = get_or_404(session, Run, run_id)
    if run.status != RunStatus.SUCCEEDED:
        raise Conflict(f"run {run_id} is {run.status}; label review needs a run that finished training")
    return run


def ordered_labels(run: Run, labels: dict[int, str]) -> list[str]:
    """Key order: the run's classes (its probability columns) first, then labels added after it trained."""
    names = [str(name) for name in run.label_names]
    return names + sorted(name for name in labels.values() if name not in names)


def rank(
    session: Session, *, run: Run, subset: str, labels: dict[int, str]
) -> tuple[logic.SubsetSuspicion, dict[int, int]]:
    """The subset ranked by suspicion, and each ranked image's current label id."""
    rows = repository.subset_rows(session, run_id=run.id, subset=subset)
    columns = {str(name): index for index, name in enumerate(run.label_names)}
    width = len(columns)
    probs = np.zeros((len(rows), width), dtype=np.float64)
    for index, row in enumerate(rows):
        vector = np.frombuffer(row.probs, dtype=np.float32)[:width]
        probs[index, : vector.size] = vector
    ranked = logic.rank_subset(
        image_ids=[row.image_id for row in rows],
        probs=probs,
        labels=[columns.get(labels.get(row.label_id, ""), -1) for row in rows],
    )
    return ranked, {row.image_id: row.label_id for row in rows}


def suspicious_examples(session: Session, *, run_id: int, subset: str, limit: int = 50) -> SubsetSuspicionSummary:
    """The subset's examples ranked by how likely their given label is wrong (from the run's probabilities)."""
    if subset not in (*REVIEWED_SUBSETS, TRAIN):
        raise Invalid(f"subset must be dev, test or train; got {subset!r}")
    check_between(limit, 1, MAX_PER_SUBSET, f"limit must be between 1 and {MAX_PER_SUBSET}")
    run = finished_run(session, run_id)
    labels = label_service.names(session, dataset_id=run.dataset_id)
    known_names = set(labels.values())
    ranked, label_of = rank(session, run=run, subset=subset, labels=labels)
    names = [str(name) for name in run.label_names]
    top = []
    for row in ranked.order[:limit].tolist():
        image_id = int(ranked.image_ids[row])
        column = int(ranked.suggested[row])
        top.append(
            SuspiciousExample(
                image_id=image_id,
                label=labels.get(label_of[image_id], "?"),
                suggested=names[column] if 0 <= column < len(names) and names[column] in known_names else None,
                suspicion=float(ranked.scores[row]),
                flagged=bool(ranked.flagged[row]),
            )
        )
    size, flagged, agreed = ranked.image_ids.size, int(ranked.flagged.sum()), int(ranked.correctly_classified.sum())
    return SubsetSuspicionSummary(subset=subset, size=size, flagged=flagged, top=top, disagreements=size - agreed)
