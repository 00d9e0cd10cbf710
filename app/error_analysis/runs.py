"""What an analysis is of: a run that finished training, and the dataset's labels as they stand now."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.orm import Session

from app.core.errors import Conflict, Invalid
from app.core.lookup import get_or_404
from app.datasets import repository as datasets_repository
from app.error_analysis.logic import follow_merges
from app.models import Run


def finished_run(session: Session, *, run_id: int) -> Run:
    run = get_or_404(session, Run, run_id)
    if run.status != "succeeded":
        raise Conflict(f"run {run_id} is {run.status}; error analysis needs a run that finished training")
    return run


@dataclass(frozen=True)
class LabelMap:
    """A dataset's labels as they stand now. A merged label keeps its row (old predictions point at it) and stands
    for the label it was merged into, so predicting it for an image of that label is not an error."""

    names: dict[int, str]  # any label id -> the name of the label it stands for
    merged: dict[int, int]  # merged label id -> the label it stands for (merges followed to the end)
    offered: list[str]  # names of the labels that still exist, for the filters

    def resolve(self, label_id: int) -> int:
        return self.merged.get(label_id, label_id)

    def id_of(self, name: str | None) -> int | None:
        if not name:
            return None
        for label_id, label_name in self.names.items():
            if label_name == name and label_id not in self.merged:
                return label_id
        raise Invalid(f"this dataset has no label {name!r}")


def label_map(session: Session, *, dataset_id: int) -> LabelMap:
    labels = datasets_repository.labels_of(session, dataset_id, include_merged=True)
    own_names = {label.id: label.name for label in labels}
    merged = follow_merges({label.id: label.merged_into_id for label in labels if label.merged_into_id is not None})
    return LabelMap(
        names={label_id: own_names[merged.get(label_id, label_id)] for label_id in own_names},
        merged=merged,
        offered=sorted(name for label_id, name in own_names.items() if label_id not in merged),
    )
