"""What an analysis is of: a run that finished training, and the dataset's labels as they stand now."""

from __future__ import annotations

from sqlalchemy.orm import Session

from app.core.errors import Conflict
from app.core.lookup import get_or_404
from app.labels import service as label_service
from app.labels.service import LabelMap
from app.models import Run
from app.training.states import RunStatus

__all__ = ["LabelMap", "finished_run", "label_map"]


def finished_run(session: Session, *, run_id: int) -> Run:
    run = get_or_404(session, Run, run_id)
    if run.status != RunStatus.SUCCEEDED:
        raise Conflict(f"run {run_id} is {run.status}; error analysis needs a run that finished training")
    return run


def label_map(session: Session, *, dataset_id: int) -> LabelMap:
    return label_service.label_map(session, dataset_id=dataset_id)
