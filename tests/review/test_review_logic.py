"""The campaign's selection rule, undoing changes, and the dev/test drift flag, on plain data."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.labels.logic import ChangeRecord, NotRevertible, effect_of
from app.review.logic import (
    CORRECT_SAMPLE,
    PENDING,
    RELABELED,
    SUSPICIOUS,
    SubsetProgress,
    drift_warning,
    item_status_for,
    rank_subset,
    select_for_review,
)


def _subset(size: int, classes: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    ids = rng.permutation(np.arange(1000, 1000 + size))
    probs = rng.dirichlet(np.ones(classes), size=size)
    labels = rng.integers(classes, size=size)
    return ids, probs, labels


@settings(max_examples=60, deadline=None)
@given(
    size=st.integers(1, 60),
    classes=st.integers(2, 5),
    seed=st.integers(0, 2**32 - 1),
    suspicious=st.integers(0, 20),
    correct=st.integers(0, 20),
)
def test_selection_takes_the_most_suspicious_and_a_sample_of_correct_ones(
    size: int, classes: int, seed: int, suspicious: int, correct: int
) -> None:
    ids, probs, labels = _subset(size, classes, seed)
    ranked = rank_subset(image_ids=ids, probs=probs, labels=labels)
    chosen = select_for_review(ranked, suspicious=suspicious, correct=correct, seed=seed, subset="dev")

    self_confidence = dict(zip(ids.tolist(), (1 - probs[np.arange(size), labels]).tolist(), strict=True))
    correctly_classified = set(ids[probs.argmax(axis=1) == labels].tolist())
    picked = [c.image_id for c in chosen if c.selection == SUSPICIOUS]
    sampled = [c.image_id for c in chosen if c.selection == CORRECT_SAMPLE]

    assert len(picked) == min(suspicious, size)
    left_out = set(ids.tolist()) - set(picked)
    if picked and left_out:  # nothing left out is more suspicious than what was picked
        assert min(self_confidence[i] for i in picked) >= max(self_confidence[i] for i in left_out) - 1e-12
    assert set(sampled) <= correctly_classified - set(picked)
    assert len(sampled) == min(correct, len(correctly_classified - set(picked)))
    assert sorted(c.rank for c in chosen) == list(range(1, len(chosen) + 1))
    assert all(c.suspicion == pytest.approx(self_confidence[c.image_id]) for c in chosen)


def test_selection_ignores_row_order_and_depends_on_seed_and_subset() -> None:
    ids, probs, labels = _subset(80, 3, 5)
    shuffled = np.random.default_rng(1).permutation(80)

    def chosen(order: np.ndarray, *, seed: int, subset: str) -> list[tuple[int, str]]:
        ranked = rank_subset(image_ids=ids[order], probs=probs[order], labels=labels[order])
        picked = select_for_review(ranked, suspicious=5, correct=6, seed=seed, subset=subset)
        return [(c.image_id, c.selection) for c in picked]

    base = chosen(np.arange(80), seed=3, subset="dev")
    assert chosen(shuffled, seed=3, subset="dev") == base
    assert chosen(np.arange(80), seed=4, subset="dev") != base
    assert chosen(np.arange(80), seed=3, subset="test") != base


def test_a_label_the_run_never_saw_is_most_suspicious() -> None:
    ids, probs, labels = _subset(10, 3, 2)
    labels[4] = -1
    ranked = rank_subset(image_ids=ids, probs=probs, labels=labels)
    chosen = select_for_review(ranked, suspicious=1, correct=0, seed=0, subset="dev")
    assert [(c.image_id, c.suspicion) for c in chosen] == [(int(ids[4]), 1.0)]
    assert bool(ranked.flagged[np.flatnonzero(ranked.image_ids == ids[4])[0]])


def _record(change_id: int, kind: str, old: int | None = None, new: int | None = None, **kw: object) -> ChangeRecord:
    return ChangeRecord(
        id=change_id,
        kind=kind,
        old_label_id=old,
        new_label_id=new,
        reason=str(kw.get("reason", "")),
        reverts_change_id=kw.get("reverts"),  # type: ignore[arg-type]
    )


def test_reverting_a_revert_redoes_the_change() -> None:
    changes = {
        1: _record(1, "import", None, 10),
        2: _record(2, "relabel", 10, 11),
        3: _record(3, "revert", 11, 10, reverts=2),
        4: _record(4, "revert", 10, 11, reverts=3),
        5: _record(5, "ambiguous", 11, 11, reason="two cats"),
        6: _record(6, "revert", 11, 11, reverts=5),
    }
    relabel, undo, redo = effect_of(2, changes), effect_of(3, changes), effect_of(4, changes)
    assert (relabel.field, relabel.before, relabel.after) == ("label", 10, 11)
    assert (undo.before, undo.after, undo.undoes) == (11, 10, True)
    assert (redo.before, redo.after, redo.undoes) == (10, 11, False)
    assert [item_status_for(e) for e in (relabel, undo, redo)] == [RELABELED, PENDING, RELABELED]
    excluded, included = effect_of(5, changes), effect_of(6, changes)
    assert (excluded.field, excluded.before, excluded.after) == ("exclusion", None, "two cats")
    assert (included.before, included.after, item_status_for(included)) == ("two cats", None, PENDING)
    with pytest.raises(NotRevertible):
        effect_of(1, changes)
    with pytest.raises(NotRevertible):
        effect_of(7, {7: _record(7, "revert", reverts=7)})


def test_drift_is_flagged_only_when_dev_and_test_pace_apart() -> None:
    assert drift_warning([SubsetProgress("dev", 10, 20), SubsetProgress("test", 9, 20)]) is None
    assert drift_warning([SubsetProgress("dev", 1, 4), SubsetProgress("test", 0, 4)]) is None  # too few items
    warning = drift_warning([SubsetProgress("dev", 18, 20), SubsetProgress("test", 4, 20)])
    assert warning is not None and warning.startswith("dev is 90% reviewed but test only 20%")
    flipped = drift_warning([SubsetProgress("dev", 0, 30), SubsetProgress("test", 30, 30)])
    assert flipped is not None and "review dev items next" in flipped
    assert drift_warning([SubsetProgress("dev", 5, 10)]) is None
