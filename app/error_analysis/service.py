"""Error analysis of a finished run: the pages and API answers, composed from its parts.

- ``predictions``: every prediction of a subset against current labels (the per-process cache review shares);
- ``samples``: the stored sample of a subset's errors a team reviews, or one drawn on the fly;
- ``annotations``: one example's categories and note, and its large view;
- ``tags``: the dataset's error categories;
- here: the ceiling table over the sample's reviewed errors, and the error page that shows both.

Other domains and the routes import this module only.
"""

from __future__ import annotations

import csv
import io
from dataclasses import asdict, dataclass

from sqlalchemy.orm import Session

from app.core.lookup import get_or_404
from app.error_analysis.annotations import (
    ErrorDetail,
    error_detail,
    error_item,
    set_annotation,
    set_note,
    tag_images,
    toggle_tag,
)
from app.error_analysis.logic import ANALYSED_SUBSETS, MISLABELED, normalise_subset
from app.error_analysis.predictions import SubsetState, subset_state
from app.error_analysis.runs import finished_run, label_map
from app.error_analysis.samples import (
    ErrorItem,
    ErrorSampleView,
    correct_examples_for,
    error_sample,
    new_sample,
    sample_view,
)
from app.error_analysis.tags import (
    TagView,
    add_tag,
    dataset_tags,
    ensure_tags,
    merge_tag,
    next_color,
    tag_views,
    update_tag,
)
from app.ml.error_analysis import CeilingRow, ceiling_csv_rows, ceiling_table, describe_ceiling
from app.models import Dataset

__all__ = [
    "ANALYSED_SUBSETS",
    "MISLABELED",
    "Category",
    "ErrorAnalysis",
    "ErrorDetail",
    "ErrorItem",
    "ErrorPage",
    "ErrorSampleView",
    "SubsetState",
    "TagView",
    "add_tag",
    "analyse",
    "ceiling_csv",
    "correct_examples_for",
    "dataset_tags",
    "error_detail",
    "error_item",
    "error_page",
    "error_sample",
    "merge_tag",
    "new_sample",
    "next_color",
    "set_annotation",
    "set_note",
    "subset_state",
    "tag_images",
    "toggle_tag",
    "update_tag",
]


@dataclass(frozen=True)
class Category(CeilingRow):
    """One row of the ceiling table as the API gives it: the figures, the category's colour and a sentence."""

    color: str
    description: str


@dataclass(frozen=True)
class ErrorAnalysis:
    run_id: int
    subset: str
    subset_size: int
    total_errors: int
    subset_error: float
    sampled_errors: int
    reviewed: int
    rows: list[CeilingRow]
    colors: dict[str, str]

    @property
    def share_percentages(self) -> list[tuple[str, float]]:
        return [(row.tag, 100.0 * row.share) for row in self.rows]

    def sentence(self, row: CeilingRow) -> str:
        return describe_ceiling(row, subset_error=self.subset_error, subset=self.subset.replace("_", "-"))

    @property
    def categories(self) -> list[Category]:
        return [
            Category(**asdict(row), color=self.colors.get(row.tag, ""), description=self.sentence(row))
            for row in self.rows
        ]


@dataclass(frozen=True)
class ErrorPage:
    dataset: Dataset
    sample: ErrorSampleView
    analysis: ErrorAnalysis
    tags: list[TagView]
    label_names: list[str]


def _analysis(*, sample: ErrorSampleView, tags: list[TagView]) -> ErrorAnalysis:
    """Shares among the reviewed errors of the sample: the errors (by current label) carrying at least one tag."""
    reviewed = [item for item in sample.items if item.is_error and item.tag_ids]
    counts = {tag.name: sum(tag.id in item.tag_ids for item in reviewed) for tag in tags}
    subset_error = sample.total_errors / sample.subset_size if sample.subset_size else 0.0
    rows = ceiling_table(
        subset_error=subset_error, total_errors=sample.total_errors, reviewed=len(reviewed), tag_counts=counts
    )
    return ErrorAnalysis(
        run_id=sample.run.id,
        subset=sample.subset,
        subset_size=sample.subset_size,
        total_errors=sample.total_errors,
        subset_error=subset_error,
        sampled_errors=sample.sampled_errors,
        reviewed=len(reviewed),
        rows=rows,
        colors={tag.name: tag.color for tag in tags},
    )


def analyse(session: Session, *, run_id: int, subset: str = "dev") -> ErrorAnalysis:
    """The ceiling table of the subset's current sample."""
    return error_page(session, run_id=run_id, subset=subset).analysis


def ceiling_csv(analysis: ErrorAnalysis) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows(ceiling_csv_rows(analysis.rows))
    return buffer.getvalue()


def error_page(
    session: Session, *, run_id: int, subset: str = "dev", label: str | None = None, predicted: str | None = None
) -> ErrorPage:
    """Everything the error page shows, sharing one load of the sample between the grid and the table."""
    run = finished_run(session, run_id=run_id)
    subset = normalise_subset(subset)
    dataset = get_or_404(session, Dataset, run.dataset_id)
    labels = label_map(session, dataset_id=run.dataset_id)
    tags = tag_views(ensure_tags(session, dataset_id=run.dataset_id))
    sample = sample_view(session, run=run, subset=subset, label=label, predicted=predicted, labels=labels, tags=tags)
    return ErrorPage(
        dataset=dataset,
        sample=sample,
        analysis=_analysis(sample=sample, tags=tags),
        tags=tags,
        label_names=labels.offered,
    )
