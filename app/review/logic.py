"""Label review rules on plain data: which examples a campaign shows, how a label change is undone, and whether
dev and test are being reviewed at the same pace.

No database here: the service loads rows, calls these functions and stores what comes back.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from app.ml.suspicion import rank_suspicious

SUSPICIOUS = "suspicious"
CORRECT_SAMPLE = "correct_sample"

# Item statuses of a campaign; everything but "pending" counts as done.
PENDING = "pending"
KEPT = "kept"
RELABELED = "relabeled"
AMBIGUOUS = "ambiguous"

# Dev and test "drift apart" when their done shares differ by more than this and the lagging subset is behind
# by at least DRIFT_MIN_ITEMS items (so a campaign of a few items does not flicker between flagged and not).
DRIFT_TOLERANCE = 0.15
DRIFT_MIN_ITEMS = 3


@dataclass(frozen=True, eq=False)
class SubsetSuspicion:
    """A subset ranked by how likely each given label is wrong; arrays are in image id order.

    ``order`` lists row indices from most to least suspicious; ``scores`` are in [0, 1]; ``flagged`` marks the
    estimated label issues; ``suggested`` is the most plausible other label as a column index (-1 when unknown);
    ``correctly_classified`` marks rows whose most probable class is the given label.
    """

    image_ids: npt.NDArray[np.int64]
    order: npt.NDArray[np.intp]
    scores: npt.NDArray[np.float64]
    flagged: npt.NDArray[np.bool_]
    suggested: npt.NDArray[np.intp]
    correctly_classified: npt.NDArray[np.bool_]


def rank_subset(*, image_ids: npt.ArrayLike, probs: npt.ArrayLike, labels: npt.ArrayLike) -> SubsetSuspicion:
    """Rank a subset's examples by suspicion (``app.ml.suspicion.rank_suspicious``).

    ``probs`` are the run's out-of-sample probabilities (rows in ``image_ids`` order), ``labels`` the current
    label as a column index of ``probs``, or -1 for a label the run never saw: its probability is unknown, so it
    counts as certainly suspicious and comes first. Rows are ordered by image id first, so the result depends only
    on the data, never on the order the database returned the rows in.
    """
    ids = np.asarray(image_ids, dtype=np.int64).ravel()
    given = np.asarray(labels, dtype=np.int64).ravel()
    probabilities = np.asarray(probs, dtype=np.float64)
    if probabilities.ndim != 2 or probabilities.shape[0] != ids.size or given.size != ids.size:
        raise ValueError("image_ids, probs rows and labels must have the same length")
    by_id = np.argsort(ids, kind="stable")
    ids, given, probabilities = ids[by_id], given[by_id], probabilities[by_id]
    if ids.size > 1 and np.any(ids[1:] == ids[:-1]):
        raise ValueError("image_ids must be unique")

    scores = np.ones(ids.size, dtype=np.float64)
    flagged = ~(given >= 0)
    suggested = np.full(ids.size, -1, dtype=np.intp)
    known_rows = np.flatnonzero(given >= 0)
    known_order = known_rows
    if known_rows.size:
        ranking = rank_suspicious(probabilities[known_rows], given[known_rows])
        scores[known_rows] = ranking.scores
        flagged[known_rows] = ranking.flagged
        suggested[known_rows] = ranking.suggested_labels
        known_order = known_rows[ranking.order]
    if probabilities.shape[1]:
        suggested[given < 0] = probabilities[given < 0].argmax(axis=1)
        correctly_classified = (given >= 0) & (probabilities.argmax(axis=1) == given)
    else:
        correctly_classified = np.zeros(ids.size, dtype=bool)
    return SubsetSuspicion(
        image_ids=ids,
        order=np.concatenate([np.flatnonzero(given < 0), known_order]).astype(np.intp),
        scores=scores,
        flagged=flagged,
        suggested=suggested,
        correctly_classified=correctly_classified,
    )


@dataclass(frozen=True)
class SelectedExample:
    """One example a campaign shows: ``rank`` is its 1-based place in its subset's review order."""

    image_id: int
    selection: str  # SUSPICIOUS or CORRECT_SAMPLE
    rank: int
    suspicion: float


def select_for_review(
    ranked: SubsetSuspicion, *, suspicious: int, correct: int, seed: int, subset: str
) -> list[SelectedExample]:
    """The campaign rule for one subset: the ``suspicious`` examples whose given label looks most likely wrong,
    plus a random sample of ``correct`` correctly classified ones placed at random positions among them (so a
    reviewer looks at both with the same eye and cannot tell them apart by place). The draw depends only on the
    ranking, the seed and the subset name.
    """
    if suspicious < 0 or correct < 0:
        raise ValueError("suspicious and correct must not be negative")
    picked_suspicious = ranked.order[: min(suspicious, ranked.order.size)]
    in_pool = ranked.correctly_classified.copy()
    in_pool[picked_suspicious] = False
    pool = np.flatnonzero(in_pool)
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, zlib.crc32(subset.encode())])))
    picked_correct = rng.choice(pool, size=min(correct, pool.size), replace=False)

    shown = picked_suspicious.size + picked_correct.size
    correct_slot = np.zeros(shown, dtype=bool)
    correct_slot[rng.choice(shown, size=picked_correct.size, replace=False)] = True
    rows = np.empty(shown, dtype=np.int64)
    rows[~correct_slot] = picked_suspicious
    rows[correct_slot] = picked_correct
    return [
        SelectedExample(
            image_id=int(ranked.image_ids[row]),
            selection=CORRECT_SAMPLE if is_correct else SUSPICIOUS,
            rank=position + 1,
            suspicion=float(ranked.scores[row]),
        )
        for position, (row, is_correct) in enumerate(zip(rows.tolist(), correct_slot.tolist(), strict=True))
    ]


# --- undoing label changes -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ChangeRecord:
    """A row of the label history, as far as reverting it is concerned."""

    id: int
    kind: str  # import, relabel, merge, ambiguous, revert, ...
    old_label_id: int | None
    new_label_id: int | None
    reason: str
    reverts_change_id: int | None


@dataclass(frozen=True)
class Effect:
    """What a change did to one field of an image: ``label`` (label ids) or ``exclusion`` (the reason, or None
    when the image is scored)."""

    field: str
    before: int | str | None
    after: int | str | None
    undoes: bool  # True when the change takes an earlier change back (an odd number of reverts deep)
    base_kind: str  # the kind of the original change at the bottom of a chain of reverts

    def inverse(self) -> Effect:
        return Effect(self.field, self.after, self.before, not self.undoes, self.base_kind)


class NotRevertible(ValueError):
    """The change cannot be taken back (an import, or a kind this module does not know)."""


def effect_of(change_id: int, changes: Mapping[int, ChangeRecord]) -> Effect:
    """What ``change_id`` did; a revert does the inverse of the change it reverts, so reverting a revert redoes
    the original change. ``changes`` must hold the change and every change its chain of reverts points to."""
    seen: set[int] = set()
    depth = 0
    current = changes.get(change_id)
    while current is not None and current.kind == "revert":
        if current.id in seen or current.reverts_change_id is None:
            raise NotRevertible(f"change {change_id} has a broken chain of reverts")
        seen.add(current.id)
        depth += 1
        current = changes.get(current.reverts_change_id)
    if current is None:
        raise NotRevertible(f"change {change_id} or a change it reverts is missing")
    if current.kind in ("relabel", "merge"):
        effect = Effect("label", current.old_label_id, current.new_label_id, False, current.kind)
    elif current.kind == "ambiguous":
        effect = Effect("exclusion", None, current.reason, False, current.kind)
    else:
        raise NotRevertible(f"a change of kind {current.kind!r} cannot be reverted")
    return effect.inverse() if depth % 2 else effect


def item_status_for(effect: Effect) -> str:
    """The status a campaign item gets from a change with this effect: taking a change back leaves the item to
    be decided again; redoing it restores the decision."""
    if effect.undoes:
        return PENDING
    return AMBIGUOUS if effect.field == "exclusion" else RELABELED


# --- progress ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SubsetProgress:
    subset: str
    done: int
    total: int
    relabeled: int = 0
    ambiguous: int = 0

    @property
    def fraction(self) -> float:
        return self.done / self.total if self.total else 0.0


def drift_warning(progress: Sequence[SubsetProgress]) -> str | None:
    """A sentence when dev and test are not being reviewed at the same pace, else None.

    Both must go through the same process to stay one distribution, so a campaign whose dev items are done while
    its test items wait is flagged.
    """
    by_subset = {row.subset: row for row in progress}
    dev, test = by_subset.get("dev"), by_subset.get("test")
    if dev is None or test is None or not dev.total or not test.total:
        return None
    ahead, behind = (dev, test) if dev.fraction >= test.fraction else (test, dev)
    gap = ahead.fraction - behind.fraction
    items_behind = ahead.fraction * behind.total - behind.done
    if gap <= DRIFT_TOLERANCE or items_behind < DRIFT_MIN_ITEMS:
        return None
    return (
        f"{ahead.subset} is {ahead.fraction:.0%} reviewed but {behind.subset} only {behind.fraction:.0%}: "
        f"review {behind.subset} items next, so both sets get the same corrections and stay one distribution."
    )
