"""Prediction state: every prediction of a finished run's subset against the images' current labels.

The error grid, the ceiling table and review's re-scoring all read it. Loading a subset joins its predictions with
the images table, so the state is kept per process and brought up to date by re-reading only the images whose
label changed since (every label or exclusion change leaves a ``label_changes`` row, numbered in order).
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass, replace

import numpy as np
import numpy.typing as npt
from sqlalchemy.orm import Session

from app.error_analysis import repository
from app.models import Run
from app.training.states import RunStatus

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
    if run.status != RunStatus.SUCCEEDED:  # its predictions are written as it succeeds: nothing to keep yet
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


def snapshot(session: Session, *, run: Run, subset: str, merged: dict[int, int]) -> SubsetSnapshot:
    """The scored examples of the subset, with merged labels standing for the label they were merged into."""
    return subset_state(session, run=run, subset=subset).snapshot(merged)
