"""Samples of a subset's errors: the stored one a team reviews, or one drawn on the fly for an API caller.

An example is an error when the run's prediction differs from the image's *current* label (so corrected labels
count) and the image is not excluded from scoring. The sample a team reviews is stored, so it stays the same across
reloads and reviewers until someone draws a new one; the drawing itself is ``app.ml.error_analysis.sample_errors``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime

from sqlalchemy.orm import Session

from app.core.db import prepare_to_write
from app.core.errors import check_between
from app.error_analysis import predictions, repository
from app.error_analysis.logic import normalise_subset
from app.error_analysis.predictions import SubsetSnapshot
from app.error_analysis.repository import ItemRow
from app.error_analysis.runs import LabelMap, finished_run, label_map
from app.error_analysis.tags import TagView, ensure_tags, tag_views
from app.ml.error_analysis import DEFAULT_SAMPLE_SIZE, SampledErrors, sample_errors
from app.models import ErrorSample, Run, User

MAX_SAMPLE_SIZE = 2_000
# Error samples are drawn with numpy's Generator, which takes any non-negative 64-bit seed (the training seeds of
# app.core.limits are 32-bit).
MAX_SAMPLE_SEED = 2**63 - 1
# "A small random sample of correctly classified examples": a tenth of the sample size.
CORRECT_SHARE = 0.1


@dataclass(frozen=True)
class ErrorItem:
    """One example of the grid, judged by its current label."""

    image_id: int
    label: str
    predicted: str
    confidence: float
    is_error: bool
    sampled_as_error: bool
    excluded: bool
    tags: tuple[str, ...]
    tag_ids: frozenset[int]
    note: str
    tagged_by: str | None
    tagged_at: datetime | None
    image_version: str  # content address of the thumbnail, so its URL can be cached as immutable


@dataclass(frozen=True)
class ErrorSampleView:
    run: Run
    subset: str
    seed: int
    size: int
    include_correct: int
    stored: ErrorSample | None  # None when an API caller asked for another seed or size than the stored sample
    subset_size: int
    total_errors: int
    matching_errors: int  # errors of the whole subset that pass the label filters
    items: list[ErrorItem]  # the whole sample, in drawn order
    shown: list[ErrorItem]  # the items that pass the label filters
    label_filter: str | None
    predicted_filter: str | None

    @property
    def sampled_errors(self) -> int:
        return sum(item.is_error for item in self.items)

    @property
    def sampled_correct(self) -> int:
        return len(self.items) - self.sampled_errors

    @property
    def stored_sample_id(self) -> int | None:
        return self.stored.id if self.stored is not None else None


def _check_sample_params(*, size: int, seed: int, include_correct: int) -> None:
    check_between(size, 1, MAX_SAMPLE_SIZE, f"the sample size must be between 1 and {MAX_SAMPLE_SIZE}; got {size}")
    check_between(seed, 0, MAX_SAMPLE_SEED, f"the seed must be a whole number from 0 to {MAX_SAMPLE_SEED}; got {seed}")
    check_between(
        include_correct, 0, MAX_SAMPLE_SIZE, f"the number of correct examples must be between 0 and {MAX_SAMPLE_SIZE}"
    )


def correct_examples_for(size: int) -> int:
    """How many correctly classified examples the "mix in correct examples" toggle adds to a sample of ``size``."""
    return max(1, round(size * CORRECT_SHARE))


def _draw(snapshot: SubsetSnapshot, *, seed: int, size: int, include_correct: int) -> SampledErrors:
    return sample_errors(
        image_ids=snapshot.image_ids,
        labels=snapshot.labels,
        predictions=snapshot.predicted,
        seed=seed,
        size=size,
        include_correct=include_correct,
    )


def _store_sample(
    session: Session,
    *,
    run: Run,
    subset: str,
    snapshot: SubsetSnapshot,
    seed: int,
    size: int,
    include_correct: int,
    created_by_id: int | None,
) -> ErrorSample:
    drawn = _draw(snapshot, seed=seed, size=size, include_correct=include_correct)
    sample = ErrorSample(
        run_id=run.id,
        subset=subset,
        seed=seed,
        size=size,
        include_correct=include_correct,
        total_errors=drawn.total_errors,
        is_current=True,
        created_by_id=created_by_id,
    )
    return repository.add_sample(session, sample=sample, image_ids=drawn.image_ids, is_error=drawn.is_error)


def _current_sample(session: Session, *, run: Run, subset: str, snapshot: SubsetSnapshot) -> ErrorSample:
    """The stored sample everybody reviews; the first look at a subset draws the default one (seed 0)."""
    stored = repository.current_sample(session, run_id=run.id, subset=subset)
    if stored is not None:
        return stored
    prepare_to_write(session)  # a GET draws it: it must not fail on SQLite while others write
    stored = repository.current_sample(session, run_id=run.id, subset=subset)
    if stored is not None:  # drawn by a concurrent request meanwhile
        return stored
    return _store_sample(
        session,
        run=run,
        subset=subset,
        snapshot=snapshot,
        seed=0,
        size=DEFAULT_SAMPLE_SIZE,
        include_correct=0,
        created_by_id=None,
    )


def new_sample(
    session: Session,
    *,
    run_id: int,
    subset: str,
    size: int = DEFAULT_SAMPLE_SIZE,
    seed: int | None = None,
    include_correct: int = 0,
    actor: User,
) -> ErrorSample:
    """Replace the subset's current sample. Without a seed the next unused one is taken, so it differs."""
    run = finished_run(session, run_id=run_id)
    subset = normalise_subset(subset)
    if seed is None:
        latest = repository.latest_seed(session, run_id=run.id, subset=subset)
        seed = 0 if latest is None else latest + 1
    _check_sample_params(size=size, seed=seed, include_correct=include_correct)
    snapshot = predictions.snapshot(
        session, run=run, subset=subset, merged=label_map(session, dataset_id=run.dataset_id).merged
    )
    return _store_sample(
        session,
        run=run,
        subset=subset,
        snapshot=snapshot,
        seed=seed,
        size=size,
        include_correct=include_correct,
        created_by_id=actor.id,
    )


def items_of(session: Session, *, rows: Sequence[ItemRow], labels: LabelMap, tags: list[TagView]) -> list[ErrorItem]:
    """The grid's view of these examples, judged by their current labels."""
    annotation_ids = [row.annotation_id for row in rows if row.annotation_id is not None]
    tag_sets = repository.annotation_tag_ids(session, annotation_ids=annotation_ids)
    tag_names = [(tag.id, tag.name) for tag in tags]
    items = []
    for row in rows:
        tag_ids = frozenset(tag_sets.get(row.annotation_id, ())) if row.annotation_id is not None else frozenset()
        excluded = row.excluded_reason is not None
        is_error = labels.resolve(row.label_id) != labels.resolve(row.predicted_label_id) and not excluded
        items.append(
            ErrorItem(
                image_id=row.image_id,
                label=labels.names.get(row.label_id, "?"),
                predicted=labels.names.get(row.predicted_label_id, "?"),
                confidence=row.confidence,
                is_error=is_error,
                sampled_as_error=is_error if row.sampled_as_error is None else row.sampled_as_error,
                excluded=excluded,
                tags=tuple(name for tag_id, name in tag_names if tag_id in tag_ids) if tag_ids else (),
                tag_ids=tag_ids,
                note=row.note or "",
                tagged_by=row.tagged_by,
                tagged_at=row.tagged_at if row.annotation_id is not None else None,
                image_version=(row.thumb_sha256 or row.sha256)[:16],
            )
        )
    return items


def error_sample(
    session: Session,
    *,
    run_id: int,
    subset: str = "dev",
    size: int | None = None,
    seed: int | None = None,
    include_correct: int | None = None,
    label: str | None = None,
    predicted: str | None = None,
) -> ErrorSampleView:
    """The subset's sample of errors. Without ``size``/``seed``/``include_correct`` (or with the stored values) it
    is the stored sample the grid shows; other values draw a sample on the fly, the same one for the same values.

    ``label`` and ``predicted`` filter what is shown; they never change which examples were sampled, so the
    sample stays uniform over all errors and the ceiling table stays valid.
    """
    run = finished_run(session, run_id=run_id)
    subset = normalise_subset(subset)
    labels = label_map(session, dataset_id=run.dataset_id)
    tags = tag_views(ensure_tags(session, dataset_id=run.dataset_id))
    return sample_view(
        session,
        run=run,
        subset=subset,
        size=size,
        seed=seed,
        include_correct=include_correct,
        label=label,
        predicted=predicted,
        labels=labels,
        tags=tags,
    )


def sample_view(
    session: Session,
    *,
    run: Run,
    subset: str,
    labels: LabelMap,
    tags: list[TagView],
    size: int | None = None,
    seed: int | None = None,
    include_correct: int | None = None,
    label: str | None = None,
    predicted: str | None = None,
) -> ErrorSampleView:
    """The sample of a run (finished) and subset (normalised) with the dataset's labels and categories loaded."""
    label_id, predicted_id = labels.id_of(label), labels.id_of(predicted)
    snapshot = predictions.snapshot(session, run=run, subset=subset, merged=labels.merged)
    current = _current_sample(session, run=run, subset=subset, snapshot=snapshot)
    seed = current.seed if seed is None else seed
    size = current.size if size is None else size
    include_correct = current.include_correct if include_correct is None else include_correct
    _check_sample_params(size=size, seed=seed, include_correct=include_correct)
    stored: ErrorSample | None = current
    if (seed, size, include_correct) == (current.seed, current.size, current.include_correct):
        rows = repository.sample_item_rows(session, run_id=run.id, sample_id=current.id)
    else:
        drawn = _draw(snapshot, seed=seed, size=size, include_correct=include_correct)
        found = repository.item_rows(session, run_id=run.id, image_ids=drawn.image_ids)
        rows = [
            replace(found[image_id], sampled_as_error=was_error)
            for image_id, was_error in zip(drawn.image_ids, drawn.is_error, strict=True)
            if image_id in found
        ]
        stored = None
    items = items_of(session, rows=rows, labels=labels, tags=tags)
    shown = [
        item
        for item in items
        if (label_id is None or item.label == label) and (predicted_id is None or item.predicted == predicted)
    ]
    return ErrorSampleView(
        run=run,
        subset=subset,
        seed=seed,
        size=size,
        include_correct=include_correct,
        stored=stored,
        subset_size=snapshot.size,
        total_errors=snapshot.errors,
        matching_errors=snapshot.errors_matching(label_id=label_id, predicted_id=predicted_id),
        items=items,
        shown=shown,
        label_filter=label if label_id is not None else None,
        predicted_filter=predicted if predicted_id is not None else None,
    )
