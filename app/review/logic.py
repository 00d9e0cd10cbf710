"""Label review rules on plain data: which examples a campaign shows, what undoing a label change does to its
item, and whether dev and test are being reviewed at the same pace.

No database here: the service loads rows, calls these functions and stores what comes back.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from app.labels.logic import Effect
from app.ml.error_analysis import mix_in_at_random_slots
from app.ml.suspicion import rank_suspicious

SUSPICIOUS = "suspicious"
CORRECT_SAMPLE = "correct_sample"
PICKED = "picked"  # added by hand (a map selection, a grid of neighbours): not the ranking's pick

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
    rows, correct_slot = mix_in_at_random_slots(rng, picked_suspicious, picked_correct)
    return [
        SelectedExample(
            image_id=int(ranked.image_ids[row]),
            selection=CORRECT_SAMPLE if is_correct else SUSPICIOUS,
            rank=position + 1,
            suspicion=float(ranked.scores[row]),
        )
        for position, (row, is_correct) in enumerate(zip(rows.tolist(), correct_slot.tolist(), strict=True))
    ]


# --- what undoing a label change does to a campaign item ------------------------------------------------------


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


# --- two-reviewer agreement ---------------------------------------------------------------------------------------

# An item whose relabel waits for a second reviewer; it is not done yet.
PROPOSED = "proposed"
UNDECIDED = (PENDING, PROPOSED)
# States of a proposal.
CONFIRMED = "confirmed"
REJECTED = "rejected"
PROPOSAL_STATES = (PROPOSED, CONFIRMED, REJECTED)


def requires_agreement(subsets: Sequence[str], *, asked: bool | None) -> bool:
    """Whether a campaign's relabels need a second reviewer: as asked, else whenever it touches test (the set whose
    labels decide what gets reported)."""
    return asked if asked is not None else "test" in subsets


@dataclass(frozen=True)
class ProposalOutcome:
    """A decided or open proposal, as far as agreement is concerned (ids of who proposed and who decided)."""

    state: str
    proposed_by: int | None
    decided_by: int | None


@dataclass(frozen=True)
class AgreementStats:
    open: int
    confirmed: int
    disagreements: int  # rejected by another reviewer
    withdrawn: int  # rejected by the proposer: a change of mind, not a disagreement

    @property
    def decided(self) -> int:
        return self.confirmed + self.disagreements

    @property
    def rate(self) -> float | None:
        """Share of proposals a second reviewer decided on that they confirmed; None before any."""
        return self.confirmed / self.decided if self.decided else None


def agreement_stats(proposals: Sequence[ProposalOutcome]) -> AgreementStats:
    counts = {"open": 0, "confirmed": 0, "disagreements": 0, "withdrawn": 0}
    for proposal in proposals:
        if proposal.state == PROPOSED:
            counts["open"] += 1
        elif proposal.state == CONFIRMED:
            counts["confirmed"] += 1
        elif proposal.proposed_by is not None and proposal.proposed_by == proposal.decided_by:
            counts["withdrawn"] += 1
        else:
            counts["disagreements"] += 1
    return AgreementStats(**counts)


# --- campaign honesty: how good the ranking is, and how many label errors are left --------------------------------

REVIEWED = (KEPT, RELABELED)  # items with a verdict on their label (ambiguous ones have none)


@dataclass(frozen=True)
class CampaignItem:
    """A campaign item as the honesty figures see it: ``suspicion`` is the score it was selected with."""

    subset: str
    selection: str
    status: str
    suspicion: float


@dataclass(frozen=True)
class FlagPrecision:
    """Among the campaign's suspicious picks: ``errors`` of ``reviewed`` were relabeled (real label errors)."""

    subset: str  # "all" for the campaign as a whole
    reviewed: int
    errors: int
    ambiguous: int
    awaiting: int  # not reviewed yet, or waiting for a second reviewer

    @property
    def precision(self) -> float | None:
        return self.errors / self.reviewed if self.reviewed else None


def flag_precision(items: Sequence[CampaignItem], subsets: Sequence[str]) -> list[FlagPrecision]:
    """Per subset, then "all": the live precision of the suspicion ranking among reviewed suspicious picks."""
    rows = []
    for subset in [*subsets, "all"]:
        picked = [i for i in items if i.selection == SUSPICIOUS and (subset == "all" or i.subset == subset)]
        rows.append(
            FlagPrecision(
                subset=subset,
                reviewed=sum(i.status in REVIEWED for i in picked),
                errors=sum(i.status == RELABELED for i in picked),
                ambiguous=sum(i.status == AMBIGUOUS for i in picked),
                awaiting=sum(i.status in UNDECIDED for i in picked),
            )
        )
    return rows


@dataclass(frozen=True)
class ErrorRates:
    """What reviewers found so far, pooled over the campaign's subsets (one run, one distribution).

    ``calibration`` scales the model's doubt (its suspicion score) of the images it disagrees with into expected
    label errors: errors found among reviewed suspicious picks over the sum of their suspicion scores.
    ``agreeing_rate`` is the share of the reviewed random sample of correctly classified images that was wrong.
    Either is None until reviewers have looked at such items.
    """

    calibration: float | None
    flagged_reviewed: int
    agreeing_rate: float | None
    agreeing_errors: int
    agreeing_reviewed: int


def error_rates(items: Sequence[CampaignItem]) -> ErrorRates:
    flagged = [i for i in items if i.selection == SUSPICIOUS and i.status in REVIEWED]
    sampled = [i for i in items if i.selection == CORRECT_SAMPLE and i.status in REVIEWED]
    doubt = sum(i.suspicion for i in flagged)
    found = sum(i.status == RELABELED for i in flagged)
    wrong_samples = sum(i.status == RELABELED for i in sampled)
    return ErrorRates(
        calibration=found / doubt if doubt > 0 else None,
        flagged_reviewed=len(flagged),
        agreeing_rate=wrong_samples / len(sampled) if sampled else None,
        agreeing_errors=wrong_samples,
        agreeing_reviewed=len(sampled),
    )


@dataclass(frozen=True)
class ErrorsLeft:
    """Estimated label errors still in a subset's unreviewed images: ``flagged`` from the images the model doubts
    (misclassified ones, and the campaign's unreviewed suspicious picks), ``agreeing`` from the rest; a part is
    None when reviewers have not looked at enough items to estimate it."""

    subset: str
    unreviewed: int
    doubted: int  # unreviewed images in the flagged part
    flagged: float | None
    agreeing: float | None

    @property
    def total(self) -> float | None:
        if self.flagged is None or self.agreeing is None:
            return None
        return self.flagged + self.agreeing


def errors_left(*, subset: str, suspicion: npt.ArrayLike, doubted: npt.ArrayLike, rates: ErrorRates) -> ErrorsLeft:
    """Estimate for one subset from its unreviewed images: their suspicion scores and whether each is in the
    doubted part. An image counts for at most one error, however high its calibrated doubt."""
    scores = np.asarray(suspicion, dtype=np.float64).ravel()
    in_doubt = np.asarray(doubted, dtype=bool).ravel()
    if scores.size != in_doubt.size:
        raise ValueError("suspicion and doubted must have the same length")
    flagged = None
    if rates.calibration is not None:
        flagged = float(np.minimum(scores[in_doubt] * rates.calibration, 1.0).sum())
    agreeing = None if rates.agreeing_rate is None else rates.agreeing_rate * int((~in_doubt).sum())
    return ErrorsLeft(
        subset=subset, unreviewed=int(scores.size), doubted=int(in_doubt.sum()), flagged=flagged, agreeing=agreeing
    )


def self_doubt(probs: bytes, column: int) -> float:
    """1 - the run's probability of an image's label (its probability column; -1: a label the run never saw)."""
    vector = np.frombuffer(probs, dtype=np.float32)
    return 1.0 - float(vector[column]) if 0 <= column < vector.size else 1.0
