"""Error analysis of a finished run: a stable sample of a subset's errors, tags on them, and the ceiling table.

An example is an error when the run's prediction differs from the image's *current* label (so corrected labels
count) and the image is not excluded from scoring. The sample a team reviews is stored, so it stays the same across
reloads and reviewers until someone draws a new one; the drawing itself is ``app.ml.error_analysis.sample_errors``.
"""

from __future__ import annotations

import csv
import io
import re
import threading
import time
import unicodedata
from collections import OrderedDict
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime

import numpy as np
import numpy.typing as npt
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.core.db import prepare_to_write
from app.core.errors import Conflict, Invalid, NotFound
from app.errors import repository
from app.errors.repository import ItemRow
from app.labels import service as label_service
from app.labels.repository import HistoryRow
from app.labels.service import LabelMap
from app.ml.error_analysis import (
    DEFAULT_SAMPLE_SIZE,
    CeilingRow,
    ceiling_csv_rows,
    ceiling_table,
    describe_ceiling,
    sample_errors,
)
from app.models import Dataset, ErrorSample, Run, Tag, User, utcnow
from app.web.charts import CATEGORY_PALETTE

ANALYSED_SUBSETS = ("dev", "test", "train_dev")
SUBSET_ALIASES = {"train-dev": "train_dev"}
MAX_SAMPLE_SIZE = 2_000
MAX_NOTE_CHARS = 1_000
MAX_TAG_CHARS = 40
MAX_SEED = 2**63 - 1
# "A small random sample of correctly classified examples": a tenth of the sample size.
CORRECT_SHARE = 0.1
MISLABELED = "mislabeled"
MISLABELED_COLOR = "#dc2626"
COLOR_PATTERN = re.compile(r"#[0-9a-fA-F]{6}")
# A cached subset is read again in full after this long: the backstop should a label change commit out of id order
# (Postgres hands out ids before commit) later than UNSEEN_SECONDS after a higher id was read.
SNAPSHOT_MAX_AGE_SECONDS = 300.0
# Change ids below the newest one that were not there yet are looked for again for this long.
UNSEEN_SECONDS = 60.0
# How far below the newest change a full load looks for ids not committed yet.
UNSEEN_LOOKBACK = 1_000
# More label changes than this since a cached subset state was read: read the subset again instead of patching.
PATCH_MAX_CHANGES = 2_000


@dataclass(frozen=True)
class SubsetSnapshot:
    """Every scored example of a run's subset, by image id: current label and prediction (label ids)."""

    image_ids: npt.NDArray[np.int64]
    labels: npt.NDArray[np.int64]
    predicted: npt.NDArray[np.int64]
    errors: int

    @property
    def size(self) -> int:
        return int(self.image_ids.size)

    def errors_matching(self, *, label_id: int | None, predicted_id: int | None) -> int:
        selected = self.labels != self.predicted
        if label_id is not None:
            selected &= self.labels == label_id
        if predicted_id is not None:
            selected &= self.predicted == predicted_id
        return int(np.count_nonzero(selected))


@dataclass(frozen=True)
class SubsetState:
    """Every prediction of a run's subset as the database had it at label watermark ``watermark``, sorted by image
    id: the image's current label and whether it is excluded from scoring, the predicted label and the label the
    run was scored with (raw label ids, merges not applied)."""

    image_ids: npt.NDArray[np.int64]
    labels: npt.NDArray[np.int64]
    excluded: npt.NDArray[np.bool_]
    predicted: npt.NDArray[np.int64]
    labels_at_prediction: npt.NDArray[np.int64]
    watermark: int
    loaded_at: float  # time.monotonic() of the full load this state descends from
    # Change ids up to the watermark not seen yet, with when they were first missed: on Postgres an id is taken at
    # INSERT, so a transaction may commit a lower one after a higher one was read. They are looked for again.
    unseen: tuple[tuple[int, float], ...] = ()

    def snapshot(self, merged: dict[int, int]) -> SubsetSnapshot:
        scored = ~self.excluded
        ids, given, predicted = self.image_ids[scored], self.labels[scored], self.predicted[scored]
        if merged:
            given, predicted = given.copy(), predicted.copy()
            for merged_id, into_id in merged.items():
                given[self.labels[scored] == merged_id] = into_id
                predicted[self.predicted[scored] == merged_id] = into_id
        return SubsetSnapshot(
            image_ids=ids, labels=given, predicted=predicted, errors=int(np.count_nonzero(given != predicted))
        )


class SnapshotCache:
    """Subset states keyed by (run, subset). Loading a 10,000-example subset joins it with the images table
    (~50-200 ms at a million images); afterwards a label change only costs reading the changed images, and the
    first request after an expiry loads while concurrent ones wait for it instead of loading too. Bounded,
    thread-safe."""

    def __init__(self, *, max_entries: int = 64, max_age_seconds: float = SNAPSHOT_MAX_AGE_SECONDS) -> None:
        self._entries: OrderedDict[Hashable, SubsetState] = OrderedDict()
        self._loading: dict[Hashable, threading.Lock] = {}
        self._lock = threading.Lock()
        self._max_entries = max_entries
        self._max_age = max_age_seconds

    def loading(self, key: Hashable) -> threading.Lock:
        """Held while one request loads or patches ``key``."""
        with self._lock:
            return self._loading.setdefault(key, threading.Lock())

    def get(self, key: Hashable) -> SubsetState | None:
        with self._lock:
            state = self._entries.get(key)
            if state is None or time.monotonic() - state.loaded_at > self._max_age:
                return None
            self._entries.move_to_end(key)
            return state

    def put(self, key: Hashable, state: SubsetState) -> None:
        with self._lock:
            self._entries[key] = state
            self._entries.move_to_end(key)
            while len(self._entries) > self._max_entries:
                evicted, _ = self._entries.popitem(last=False)
                self._loading.pop(evicted, None)


_snapshots = SnapshotCache()


@dataclass(frozen=True)
class TagView:
    """A category as pages and items read it: plain attributes, cheap to read a hundred times per page."""

    id: int
    name: str
    color: str


def _tag_views(tags: Sequence[Tag]) -> list[TagView]:
    return [TagView(id=tag.id, name=tag.name, color=tag.color) for tag in tags]


def _label_map(session: Session, *, dataset_id: int) -> LabelMap:
    return label_service.label_map(session, dataset_id=dataset_id)


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


@dataclass(frozen=True)
class ErrorPage:
    dataset: Dataset
    sample: ErrorSampleView
    analysis: ErrorAnalysis
    tags: list[TagView]
    label_names: list[str]


@dataclass(frozen=True)
class TopClass:
    label: str
    probability: float


@dataclass(frozen=True)
class ErrorDetail:
    run: Run
    subset: str
    item: ErrorItem
    filename: str
    width: int
    height: int
    top: list[TopClass]
    history: list[HistoryRow]
    tags: list[TagView]


# --- runs and subsets -------------------------------------------------------------------------------------------


def finished_run(session: Session, *, run_id: int) -> Run:
    run = repository.get_run(session, run_id)
    if run is None:
        raise NotFound(f"run {run_id} does not exist")
    if run.status != "succeeded":
        raise Conflict(f"run {run_id} is {run.status}; error analysis needs a run that finished training")
    return run


def normalise_subset(subset: str) -> str:
    name = SUBSET_ALIASES.get(subset, subset)
    if name not in ANALYSED_SUBSETS:
        raise Invalid(f"subset must be one of {', '.join(ANALYSED_SUBSETS)}; got {subset!r}")
    return name


def _unseen_below(watermark: int, seen: set[int], *, since: int, now: float) -> list[tuple[int, float]]:
    return [(change_id, now) for change_id in range(since + 1, watermark + 1) if change_id not in seen]


def _load_state(session: Session, *, run_id: int, subset: str, watermark: int) -> SubsetState:
    now = time.monotonic()
    since = max(0, watermark - UNSEEN_LOOKBACK)
    # The changes committed so far, read before the labels: whatever is not among them is looked for again later.
    recent = {change_id for change_id, _ in repository.label_changes_between(session, after=since, upto=watermark)}
    rows = np.array(repository.subset_predictions(session, run_id=run_id, subset=subset), dtype=np.int64)
    rows = rows.reshape(-1, 4)
    rows = rows[np.argsort(rows[:, 0], kind="stable")]
    return SubsetState(
        image_ids=rows[:, 0].copy(),
        labels=np.abs(rows[:, 1]),
        excluded=rows[:, 1] < 0,
        predicted=rows[:, 2].copy(),
        labels_at_prediction=rows[:, 3].copy(),
        watermark=watermark,
        loaded_at=now,
        unseen=tuple(_unseen_below(watermark, recent, since=since, now=now)),
    )


def _refreshed_state(session: Session, *, state: SubsetState, watermark: int) -> SubsetState | None:
    """The state brought up to ``watermark`` (and to the changes it had not seen) by re-reading only the images
    changed since; None when so many changed (an import, a label merge) that loading it all again is cheaper."""
    now = time.monotonic()
    unseen = [(change_id, missed) for change_id, missed in state.unseen if now - missed < UNSEEN_SECONDS]
    if watermark <= state.watermark and not unseen:
        return state if len(unseen) == len(state.unseen) else replace(state, unseen=())
    if watermark - state.watermark > PATCH_MAX_CHANGES:
        return None
    upto = max(watermark, state.watermark)
    found = repository.label_changes_between(
        session, after=state.watermark, upto=upto, also=[change_id for change_id, _ in unseen]
    )
    seen = {change_id for change_id, _ in found}
    still_unseen = [(change_id, missed) for change_id, missed in unseen if change_id not in seen]
    still_unseen += _unseen_below(upto, seen, since=state.watermark, now=now)
    changed = np.unique(np.array([image_id for _, image_id in found], dtype=np.int64))
    ours = np.intersect1d(changed, state.image_ids)
    labels, excluded = state.labels, state.excluded
    if ours.size:
        labels, excluded = labels.copy(), excluded.copy()
        for image_id, label_id, is_excluded in repository.current_labels(session, image_ids=ours.tolist()):
            at = np.searchsorted(state.image_ids, image_id)
            labels[at], excluded[at] = label_id, is_excluded
    return replace(state, labels=labels, excluded=excluded, watermark=upto, unseen=tuple(still_unseen))


def subset_state(session: Session, *, run: Run, subset: str) -> SubsetState:
    """The run's predictions on the subset against the current labels. For a finished run (whose predictions no
    longer change) from a per-process cache that a label change anywhere brings up to date by reading only what
    changed."""
    # created_at guards against a deleted run's id being reused (SQLite reuses the highest rowid). Every label or
    # exclusion change leaves a label_changes row, so the newest one tells whether the cached state is current.
    watermark = repository.label_watermark(session)
    if run.status != "succeeded":  # its predictions are written as it succeeds: nothing to keep yet
        return _load_state(session, run_id=run.id, subset=subset, watermark=watermark)
    key = (run.id, run.created_at, subset)
    with _snapshots.loading(key):
        cached = _snapshots.get(key)
        state = None if cached is None else _refreshed_state(session, state=cached, watermark=watermark)
        # A watermark behind the cached one is a request whose transaction began before the newest change: the
        # newer state serves it as well.
        if state is None:
            state = _load_state(session, run_id=run.id, subset=subset, watermark=watermark)
        if state is not cached:
            _snapshots.put(key, state)
    return state


def _snapshot(session: Session, *, run: Run, subset: str, labels: LabelMap) -> SubsetSnapshot:
    return subset_state(session, run=run, subset=subset).snapshot(labels.merged)


# --- samples ------------------------------------------------------------------------------------------------------


def _check_sample_params(*, size: int, seed: int, include_correct: int) -> None:
    if not 1 <= size <= MAX_SAMPLE_SIZE:
        raise Invalid(f"the sample size must be between 1 and {MAX_SAMPLE_SIZE}; got {size}")
    if not 0 <= seed <= MAX_SEED:
        raise Invalid(f"the seed must be a whole number from 0 to {MAX_SEED}; got {seed}")
    if not 0 <= include_correct <= MAX_SAMPLE_SIZE:
        raise Invalid(f"the number of correct examples must be between 0 and {MAX_SAMPLE_SIZE}")


def correct_examples_for(size: int) -> int:
    """How many correctly classified examples the "mix in correct examples" toggle adds to a sample of ``size``."""
    return max(1, round(size * CORRECT_SHARE))


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
    drawn = sample_errors(
        image_ids=snapshot.image_ids,
        labels=snapshot.labels,
        predictions=snapshot.predicted,
        seed=seed,
        size=size,
        include_correct=include_correct,
    )
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
    snapshot = _snapshot(session, run=run, subset=subset, labels=_label_map(session, dataset_id=run.dataset_id))
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


def _items(session: Session, *, rows: Sequence[ItemRow], labels: LabelMap, tags: list[TagView]) -> list[ErrorItem]:
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
    labels = _label_map(session, dataset_id=run.dataset_id)
    tags = _tag_views(_ensure_tags(session, dataset_id=run.dataset_id))
    return _sample_view(
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


def _sample_view(
    session: Session,
    *,
    run: Run,
    subset: str,
    size: int | None,
    seed: int | None,
    include_correct: int | None,
    label: str | None,
    predicted: str | None,
    labels: LabelMap,
    tags: list[TagView],
) -> ErrorSampleView:
    label_id, predicted_id = labels.id_of(label), labels.id_of(predicted)
    snapshot = _snapshot(session, run=run, subset=subset, labels=labels)
    current = _current_sample(session, run=run, subset=subset, snapshot=snapshot)
    seed = current.seed if seed is None else seed
    size = current.size if size is None else size
    include_correct = current.include_correct if include_correct is None else include_correct
    _check_sample_params(size=size, seed=seed, include_correct=include_correct)
    stored: ErrorSample | None = current
    if (seed, size, include_correct) == (current.seed, current.size, current.include_correct):
        rows = repository.sample_item_rows(session, run_id=run.id, sample_id=current.id)
    else:
        drawn = sample_errors(
            image_ids=snapshot.image_ids,
            labels=snapshot.labels,
            predictions=snapshot.predicted,
            seed=seed,
            size=size,
            include_correct=include_correct,
        )
        found = repository.item_rows(session, run_id=run.id, image_ids=drawn.image_ids)
        rows = [
            replace(found[image_id], sampled_as_error=was_error)
            for image_id, was_error in zip(drawn.image_ids, drawn.is_error, strict=True)
            if image_id in found
        ]
        stored = None
    items = _items(session, rows=rows, labels=labels, tags=tags)
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


# --- the ceiling table -------------------------------------------------------------------------------------------


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
    run = finished_run(session, run_id=run_id)
    subset = normalise_subset(subset)
    labels = _label_map(session, dataset_id=run.dataset_id)
    tags = _tag_views(_ensure_tags(session, dataset_id=run.dataset_id))
    sample = _sample_view(
        session,
        run=run,
        subset=subset,
        size=None,
        seed=None,
        include_correct=None,
        label=None,
        predicted=None,
        labels=labels,
        tags=tags,
    )
    return _analysis(sample=sample, tags=tags)


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
    dataset = repository.get_dataset(session, run.dataset_id)
    assert dataset is not None  # runs cascade with their dataset
    labels = _label_map(session, dataset_id=run.dataset_id)
    tags = _tag_views(_ensure_tags(session, dataset_id=run.dataset_id))
    sample = _sample_view(
        session,
        run=run,
        subset=subset,
        size=None,
        seed=None,
        include_correct=None,
        label=label,
        predicted=predicted,
        labels=labels,
        tags=tags,
    )
    return ErrorPage(
        dataset=dataset,
        sample=sample,
        analysis=_analysis(sample=sample, tags=tags),
        tags=tags,
        label_names=labels.offered,
    )


# --- one example: its card, its large view, its tags and note -----------------------------------------------------


def _predicted_example(session: Session, *, run_id: int, image_id: int) -> tuple[Run, str]:
    run = finished_run(session, run_id=run_id)
    row = repository.prediction(session, run_id=run.id, image_id=image_id)
    if row is None:
        raise NotFound(f"image {image_id} has no prediction in run {run_id}")
    return run, row.subset


def error_item(session: Session, *, run_id: int, image_id: int) -> ErrorItem:
    run, _ = _predicted_example(session, run_id=run_id, image_id=image_id)
    labels = _label_map(session, dataset_id=run.dataset_id)
    tags = _tag_views(_ensure_tags(session, dataset_id=run.dataset_id))
    rows = list(repository.item_rows(session, run_id=run.id, image_ids=[image_id]).values())
    (item,) = _items(session, rows=rows, labels=labels, tags=tags)
    return item


def error_detail(session: Session, *, run_id: int, image_id: int) -> ErrorDetail:
    """The large view: top-5 class probabilities (in the run's label order) and the label history."""
    run, subset = _predicted_example(session, run_id=run_id, image_id=image_id)
    prediction = repository.prediction(session, run_id=run.id, image_id=image_id)
    image = repository.get_image(session, image_id)
    assert prediction is not None and image is not None
    probs = np.frombuffer(prediction.probs, dtype=np.float32)
    names = list(run.label_names)
    order = np.argsort(-probs, kind="stable")[:5]
    top = [TopClass(label=str(names[i]) if i < len(names) else f"#{i}", probability=float(probs[i])) for i in order]
    return ErrorDetail(
        run=run,
        subset=subset,
        item=error_item(session, run_id=run_id, image_id=image_id),
        filename=image.filename,
        width=image.width,
        height=image.height,
        top=top,
        history=label_service.history(session, image_id=image_id),
        tags=_tag_views(_ensure_tags(session, dataset_id=run.dataset_id)),
    )


def _clean_note(note: str) -> str:
    cleaned = note.strip()
    if len(cleaned) > MAX_NOTE_CHARS:
        raise Invalid(f"a note can be at most {MAX_NOTE_CHARS} characters; this one has {len(cleaned)}")
    return cleaned


def _write_annotation(
    session: Session,
    *,
    run: Run,
    image_id: int,
    tag_ids: set[int] | None,
    note: str | None,
    actor: User,
    toggle_tag_id: int | None = None,
) -> None:
    # The annotation row is locked before its tags are read, so two reviewers writing the same example at once
    # are applied one after the other (on Postgres, reading first would let the second undo half of the first);
    # a savepoint lets the loser of a race to create the row carry on with the winner's.
    annotation = repository.annotation(session, run_id=run.id, image_id=image_id, for_update=True)
    if annotation is None:
        try:
            with session.begin_nested():
                annotation = repository.add_annotation(session, run_id=run.id, image_id=image_id)
        except IntegrityError:
            annotation = repository.annotation(session, run_id=run.id, image_id=image_id, for_update=True)
    assert annotation is not None
    if toggle_tag_id is not None:
        current = repository.annotation_tag_ids(session, annotation_ids=[annotation.id]).get(annotation.id, set())
        tag_ids = current ^ {toggle_tag_id}
    if tag_ids is not None:
        repository.set_annotation_tags(session, annotation_id=annotation.id, tag_ids=tag_ids)
    if note is not None:
        annotation.note = note
    annotation.updated_by_id = actor.id
    annotation.updated_at = utcnow()
    session.flush()


def set_annotation(
    session: Session,
    *,
    run_id: int,
    image_id: int,
    tags: Sequence[str] | None,
    note: str | None,
    actor: User,
) -> ErrorItem:
    """Replace an example's tags (by name) and/or note; ``None`` leaves that part as it is."""
    run, _ = _predicted_example(session, run_id=run_id, image_id=image_id)
    tag_ids = None
    if tags is not None:
        known = {tag.name.casefold(): tag.id for tag in _ensure_tags(session, dataset_id=run.dataset_id)}
        unknown = sorted({name for name in tags if name.strip().casefold() not in known})
        if unknown:
            raise Invalid(
                f"unknown categories for this dataset: {', '.join(unknown)}; add them first",
                extra={"unknown": unknown},
            )
        tag_ids = {known[name.strip().casefold()] for name in tags}
    cleaned_note = None if note is None else _clean_note(note)
    _write_annotation(session, run=run, image_id=image_id, tag_ids=tag_ids, note=cleaned_note, actor=actor)
    return error_item(session, run_id=run_id, image_id=image_id)


def toggle_tag(session: Session, *, run_id: int, image_id: int, tag_id: int, actor: User) -> ErrorItem:
    """Add the tag to the example, or take it off if it is there (what a digit key does)."""
    run, _ = _predicted_example(session, run_id=run_id, image_id=image_id)
    tags = _ensure_tags(session, dataset_id=run.dataset_id)
    if tag_id not in {tag.id for tag in tags}:
        raise NotFound(f"category {tag_id} does not belong to this run's dataset")
    _write_annotation(session, run=run, image_id=image_id, tag_ids=None, note=None, actor=actor, toggle_tag_id=tag_id)
    return error_item(session, run_id=run_id, image_id=image_id)


def set_note(session: Session, *, run_id: int, image_id: int, note: str, actor: User) -> ErrorItem:
    return set_annotation(session, run_id=run_id, image_id=image_id, tags=None, note=note, actor=actor)


# --- error categories (tags), per dataset ---------------------------------------------------------------------------


def _ensure_tags(session: Session, *, dataset_id: int) -> list[Tag]:
    """The dataset's categories in key order; ``mislabeled`` always exists and comes first."""
    tags = repository.tags_of(session, dataset_id=dataset_id)
    if any(tag.name == MISLABELED for tag in tags):
        return tags
    prepare_to_write(session)  # the first look at a dataset's categories may be a GET
    tags = repository.tags_of(session, dataset_id=dataset_id)
    if any(tag.name == MISLABELED for tag in tags):
        return tags
    try:
        with session.begin_nested():
            repository.add_tag(session, dataset_id=dataset_id, name=MISLABELED, color=MISLABELED_COLOR, position=0)
    except IntegrityError:
        pass  # created by a concurrent request
    return repository.tags_of(session, dataset_id=dataset_id)


def _dataset(session: Session, dataset_id: int) -> Dataset:
    dataset = repository.get_dataset(session, dataset_id)
    if dataset is None:
        raise NotFound(f"dataset {dataset_id} does not exist")
    return dataset


def _clean_tag_name(name: str) -> str:
    cleaned = " ".join(name.split())
    if not cleaned:
        raise Invalid("a category needs a name")
    if len(cleaned) > MAX_TAG_CHARS:
        raise Invalid(f"a category name can be at most {MAX_TAG_CHARS} characters")
    if any(unicodedata.category(char).startswith("C") for char in cleaned):
        raise Invalid("a category name cannot contain control characters")
    return cleaned


def _clean_color(color: str) -> str:
    if not COLOR_PATTERN.fullmatch(color):
        raise Invalid(f"a colour is written #rrggbb, e.g. #3b82f6; got {color!r}")
    return color.lower()


def _check_name_free(tags: list[Tag], name: str, *, except_id: int | None = None) -> None:
    for tag in tags:
        if tag.id != except_id and tag.name.casefold() == name.casefold():
            raise Conflict(f"this dataset already has a category named {tag.name!r}")


def dataset_tags(session: Session, *, dataset_id: int) -> list[Tag]:
    _dataset(session, dataset_id)
    return _ensure_tags(session, dataset_id=dataset_id)


def add_tag(session: Session, *, dataset_id: int, name: str, color: str | None = None) -> Tag:
    _dataset(session, dataset_id)
    tags = _ensure_tags(session, dataset_id=dataset_id)
    cleaned = _clean_tag_name(name)
    _check_name_free(tags, cleaned)
    colour = _clean_color(color) if color else CATEGORY_PALETTE[len(tags) % len(CATEGORY_PALETTE)]
    position = max((tag.position for tag in tags), default=0) + 1
    try:
        with session.begin_nested():
            return repository.add_tag(session, dataset_id=dataset_id, name=cleaned, color=colour, position=position)
    except IntegrityError as exc:
        raise Conflict(f"this dataset already has a category named {cleaned!r}") from exc


def _tag_of(tags: list[Tag], tag_id: int, dataset_id: int) -> Tag:
    for tag in tags:
        if tag.id == tag_id:
            return tag
    raise NotFound(f"dataset {dataset_id} has no category {tag_id}")


def update_tag(
    session: Session, *, dataset_id: int, tag_id: int, name: str | None = None, color: str | None = None
) -> Tag:
    """Rename and/or recolour a category (``mislabeled`` keeps its name: label review depends on it)."""
    _dataset(session, dataset_id)
    tags = _ensure_tags(session, dataset_id=dataset_id)
    tag = _tag_of(tags, tag_id, dataset_id)
    if name is not None:
        cleaned = _clean_tag_name(name)
        if cleaned != tag.name:
            if tag.name == MISLABELED:
                raise Conflict(f"{MISLABELED!r} always exists and cannot be renamed")
            _check_name_free(tags, cleaned, except_id=tag.id)
            tag.name = cleaned
    if color:
        tag.color = _clean_color(color)
    try:
        with session.begin_nested():
            session.flush()
    except IntegrityError as exc:
        raise Conflict(f"this dataset already has a category named {tag.name!r}") from exc
    return tag


def merge_tag(session: Session, *, dataset_id: int, tag_id: int, into_id: int) -> Tag:
    """Fold one category into another: every example tagged with it gets the other one; it disappears."""
    _dataset(session, dataset_id)
    tags = _ensure_tags(session, dataset_id=dataset_id)
    source, target = _tag_of(tags, tag_id, dataset_id), _tag_of(tags, into_id, dataset_id)
    if source.id == target.id:
        raise Invalid("a category cannot be merged into itself")
    if source.name == MISLABELED:
        raise Conflict(f"{MISLABELED!r} always exists; merge other categories into it instead")
    repository.merge_tag(session, source=source, target=target)
    return target
