"""Error analysis arithmetic: sampling dev errors, proportion intervals, ceilings and the label-fix decision.

Pure logic on plain data (numpy arrays, mappings, frozen dataclasses); the services layer loads predictions
and annotations from the database and stores what comes back.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

# Two-sided 95% normal quantile, Phi^-1(0.975).
Z_95 = 1.959963984540054

DEFAULT_SAMPLE_SIZE = 100

# Label fixing pays off once mislabeled examples are at least this share of the errors (see decide_label_fix).
LABEL_SHARE_WORTH_FIXING = 0.30
# Avoidable bias (train error above human-level) from which labels wait: a model this far from learning its
# training set makes errors, and suspicion rankings, that say more about the model than about the labels.
AVOIDABLE_BIAS_FIRST = 0.10

CEILING_CSV_HEADER = (
    "tag",
    "count",
    "share",
    "share_low",
    "share_high",
    "estimated_errors",
    "ceiling_error",
)


@dataclass(frozen=True)
class SampledErrors:
    """A reproducible sample for the review grid.

    ``image_ids`` is in the order the grid shows; ``is_error[i]`` tells whether ``image_ids[i]`` is a
    misclassified example (False marks the correctly classified examples mixed in on request).
    """

    image_ids: tuple[int, ...]
    is_error: tuple[bool, ...]
    total_errors: int
    sampled_errors: int
    sampled_correct: int


def sample_errors(
    *,
    image_ids: npt.ArrayLike,
    labels: npt.ArrayLike,
    predictions: npt.ArrayLike,
    seed: int,
    size: int = DEFAULT_SAMPLE_SIZE,
    true_label: int | None = None,
    predicted_label: int | None = None,
    include_correct: int = 0,
) -> SampledErrors:
    """Draw ``size`` errors uniformly without replacement (all of them when there are fewer).

    ``true_label`` / ``predicted_label`` restrict the pool (errors and, when asked for, correct examples) to
    examples with that given / predicted label; ``total_errors`` counts the errors left after these filters.
    ``include_correct`` adds that many correctly classified examples (fewer if the pool is smaller), placed at
    random positions so reviewers look at them with the same eye as the errors.

    Rows are sorted by image id before drawing, so the sample depends only on the data and the seed, not on
    the order the database returned the rows in. The errors are drawn first from the generator, so asking for
    correct examples changes neither which errors are sampled nor their order.
    """
    ids = np.asarray(image_ids, dtype=np.int64).ravel()
    given = np.asarray(labels, dtype=np.int64).ravel()
    predicted = np.asarray(predictions, dtype=np.int64).ravel()
    if not (ids.shape == given.shape == predicted.shape):
        raise ValueError("image_ids, labels and predictions must have the same length")
    if size < 0 or include_correct < 0:
        raise ValueError("size and include_correct must not be negative")

    by_id = np.argsort(ids, kind="stable")
    ids, given, predicted = ids[by_id], given[by_id], predicted[by_id]
    if ids.size > 1 and np.any(ids[1:] == ids[:-1]):
        raise ValueError("image_ids must be unique")

    in_pool = np.ones(ids.shape, dtype=bool)
    if true_label is not None:
        in_pool &= given == true_label
    if predicted_label is not None:
        in_pool &= predicted == predicted_label
    error_ids = ids[in_pool & (given != predicted)]
    correct_ids = ids[in_pool & (given == predicted)]

    rng = np.random.Generator(np.random.PCG64(seed))
    picked_errors = rng.choice(error_ids, size=min(size, error_ids.size), replace=False)
    picked_correct = rng.choice(correct_ids, size=min(include_correct, correct_ids.size), replace=False)

    picked, correct_slot = mix_in_at_random_slots(rng, picked_errors, picked_correct)

    return SampledErrors(
        image_ids=tuple(int(image_id) for image_id in picked),
        is_error=tuple(not slot for slot in correct_slot.tolist()),
        total_errors=int(error_ids.size),
        sampled_errors=int(picked_errors.size),
        sampled_correct=int(picked_correct.size),
    )


def mix_in_at_random_slots(
    rng: np.random.Generator, kept: npt.NDArray[np.int64], mixed_in: npt.NDArray[np.int64]
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.bool_]]:
    """``kept`` in its order with ``mixed_in`` at random slots among it (so a reviewer cannot tell the two apart by
    place); returns the values and which slots hold a mixed-in one."""
    shown = kept.size + mixed_in.size
    mixed_slot = np.zeros(shown, dtype=bool)
    mixed_slot[rng.choice(shown, size=mixed_in.size, replace=False)] = True
    values = np.empty(shown, dtype=np.int64)
    values[~mixed_slot] = kept
    values[mixed_slot] = mixed_in
    return values, mixed_slot


def wilson_interval(successes: int, trials: int, *, z: float = Z_95) -> tuple[float, float]:
    """Wilson score interval for a proportion ``successes / trials`` (95% by default).

    With no trials nothing is known, so the interval is the whole of [0, 1].
    """
    if trials < 0 or not 0 <= successes <= trials:
        raise ValueError(f"need 0 <= successes <= trials, got {successes} of {trials}")
    if trials == 0:
        return 0.0, 1.0
    share = successes / trials
    z_squared = z * z
    denominator = 1.0 + z_squared / trials
    centre = (share + z_squared / (2 * trials)) / denominator
    half_width = z * math.sqrt(share * (1 - share) / trials + z_squared / (4 * trials * trials)) / denominator
    # At k = 0 and k = n one bound is exactly 0 or 1; the subtraction above only gets there up to rounding.
    low = 0.0 if successes == 0 else centre - half_width
    high = 1.0 if successes == trials else centre + half_width
    return low, high


@dataclass(frozen=True)
class CeilingRow:
    """One error category: its share among reviewed errors and the best error reachable by fixing it all."""

    tag: str
    count: int
    share: float
    share_low: float
    share_high: float
    estimated_errors: float
    ceiling_error: float


def ceiling_table(
    *,
    subset_error: float,
    total_errors: int,
    reviewed: int,
    tag_counts: Mapping[str, int],
) -> list[CeilingRow]:
    """Per tag: the share of the ``reviewed`` errors carrying it, its Wilson interval, the estimated number of
    such errors in the whole subset (``share * total_errors``) and the ceiling ``subset_error * (1 - share)``:
    the error rate left if that category were fixed completely and nothing else changed.

    An example can carry several tags, so the shares need not add up to 1. Rows are sorted by share, largest
    first, then by tag name.
    """
    if not 0.0 <= subset_error <= 1.0:
        raise ValueError(f"subset_error must be a rate in [0, 1], got {subset_error}")
    if total_errors < 0 or reviewed < 0:
        raise ValueError("total_errors and reviewed must not be negative")
    rows = []
    for tag, count in tag_counts.items():
        if not 0 <= count <= reviewed:
            raise ValueError(f"tag {tag!r}: count {count} is not between 0 and reviewed={reviewed}")
        share = count / reviewed if reviewed else 0.0
        share_low, share_high = wilson_interval(count, reviewed)
        rows.append(
            CeilingRow(
                tag=tag,
                count=count,
                share=share,
                share_low=share_low,
                share_high=share_high,
                estimated_errors=share * total_errors,
                ceiling_error=subset_error * (1.0 - share),
            )
        )
    rows.sort(key=lambda row: (-row.share, row.tag))
    return rows


def describe_ceiling(row: CeilingRow, *, subset_error: float, subset: str = "dev") -> str:
    """The sentence a ceiling row stands for, e.g. "Fixing blurry completely brings dev error from 10.0% to at
    best 8.0%."."""
    if subset_error == 0:
        return f"No {subset} errors: there is nothing to gain."
    if row.count == 0:
        return f"None of the reviewed {subset} errors is {row.tag} so far: no measurable gain yet."
    return (
        f"Fixing {row.tag} completely brings {subset} error from {format_percent(subset_error)} "
        f"to at best {format_percent(row.ceiling_error)}."
    )


def neutralise_csv_cell(text: str) -> str:
    """Prefix an apostrophe to text a spreadsheet would run as a formula (OWASP CSV injection guidance: cells
    starting with = + - @, tab or carriage return)."""
    return "'" + text if text.startswith(("=", "+", "-", "@", "\t", "\r")) else text


def ceiling_csv_rows(rows: Sequence[CeilingRow]) -> list[list[str]]:
    """Header plus one row per category, ready for ``csv.writer``; user-typed tag names are neutralised."""
    body = [
        [
            neutralise_csv_cell(row.tag),
            str(row.count),
            f"{row.share:.4f}",
            f"{row.share_low:.4f}",
            f"{row.share_high:.4f}",
            f"{row.estimated_errors:.1f}",
            f"{row.ceiling_error:.4f}",
        ]
        for row in rows
    ]
    return [list(CEILING_CSV_HEADER), *body]


@dataclass(frozen=True)
class LabelFixDecision:
    """Whether fixing dev/test labels is worth it, with the numbers behind the verdict.

    Rates are absolute fractions of the dev set (``label_error = dev_error * mislabeled_share``). ``settled``
    is False when the verdict would flip somewhere inside the 95% interval of the mislabeled share, i.e. more
    errors should be reviewed before relying on it.
    """

    dev_error: float
    reviewed: int
    mislabeled: int
    mislabeled_share: float
    share_low: float
    share_high: float
    label_error: float
    label_error_low: float
    label_error_high: float
    other_error: float
    smallest_run_gap: float | None
    worth_fixing: bool
    settled: bool
    explanation: str
    avoidable_bias: float | None = None
    bias_first: bool = False  # avoidable bias is large: reduce it before spending time on labels


def decide_label_fix(
    *,
    dev_error: float,
    mislabeled: int,
    reviewed: int,
    smallest_run_gap: float | None = None,
    avoidable_bias: float | None = None,
) -> LabelFixDecision:
    """Decide whether correcting dev/test labels is worth the effort.

    Rule: it is worth it when mislabeled examples make up at least 30% of the reviewed dev errors (label
    errors are then a large part of what is left to fix), or when the dev errors of the runs being compared
    differ by less than the error that wrong labels alone cause (``smallest_run_gap < dev_error * share``):
    the dev set can then no longer tell those runs apart. Otherwise other causes dominate and the time is
    better spent on them (neural networks are also fairly robust to a few random label errors).

    The verdict uses the point estimate of the share; it is also evaluated at both ends of the share's Wilson
    95% interval, and ``settled`` says whether all three agree. Whatever the share, an ``avoidable_bias`` (train
    error minus human-level error) of at least AVOIDABLE_BIAS_FIRST means bias comes first (``bias_first``).
    """
    if not 0.0 <= dev_error <= 1.0:
        raise ValueError(f"dev_error must be a rate in [0, 1], got {dev_error}")
    if smallest_run_gap is not None and smallest_run_gap < 0:
        raise ValueError("smallest_run_gap must not be negative")
    share_low, share_high = wilson_interval(mislabeled, reviewed)
    share = mislabeled / reviewed if reviewed else 0.0
    label_error = dev_error * share
    large_share = share >= LABEL_SHARE_WORTH_FIXING
    small_gap = smallest_run_gap is not None and smallest_run_gap < label_error

    def verdict_at(at_share: float) -> bool:
        gap_below_labels = smallest_run_gap is not None and smallest_run_gap < dev_error * at_share
        return at_share >= LABEL_SHARE_WORTH_FIXING or gap_below_labels

    bias_first = avoidable_bias is not None and avoidable_bias >= AVOIDABLE_BIAS_FIRST
    worth_fixing = reviewed > 0 and (large_share or small_gap) and not bias_first
    settled = bias_first or (reviewed > 0 and verdict_at(share_low) == worth_fixing == verdict_at(share_high))

    explanation = _label_fix_explanation(
        dev_error=dev_error,
        mislabeled=mislabeled,
        reviewed=reviewed,
        interval=(share_low, share_high),
        smallest_run_gap=smallest_run_gap,
        avoidable_bias=avoidable_bias if bias_first else None,
        large_share=large_share,
        small_gap=small_gap,
        settled=settled,
    )

    return LabelFixDecision(
        dev_error=dev_error,
        reviewed=reviewed,
        mislabeled=mislabeled,
        mislabeled_share=share,
        share_low=share_low,
        share_high=share_high,
        label_error=label_error,
        label_error_low=dev_error * share_low,
        label_error_high=dev_error * share_high,
        other_error=dev_error - label_error,
        smallest_run_gap=smallest_run_gap,
        worth_fixing=worth_fixing,
        settled=settled,
        explanation=explanation,
        avoidable_bias=avoidable_bias,
        bias_first=bias_first,
    )


def _label_fix_explanation(
    *,
    dev_error: float,
    mislabeled: int,
    reviewed: int,
    interval: tuple[float, float],
    smallest_run_gap: float | None,
    avoidable_bias: float | None,
    large_share: bool,
    small_gap: bool,
    settled: bool,
) -> str:
    """The words of `decide_label_fix`'s verdict: the figures, the rule, the verdict and how sure it is.
    `avoidable_bias` is given only when bias comes first."""
    rule = (
        f"Rule: fixing labels is worth it when mislabeled examples are at least "
        f"{LABEL_SHARE_WORTH_FIXING:.0%} of the dev errors, or when the runs you compare differ in dev error "
        f"by less than the error wrong labels cause."
    )
    if reviewed == 0:
        explanation = f"No dev errors have been reviewed yet, so there is no estimate. {rule}"
        return explanation if avoidable_bias is None else f"{explanation} {_bias_first_verdict(avoidable_bias)}"
    share = mislabeled / reviewed
    label_error = dev_error * share
    share_low, share_high = interval
    numbers = (
        f"Dev error is {format_percent(dev_error)}. {mislabeled} of {reviewed} reviewed errors are "
        f"mislabeled ({format_percent(share)}, 95% interval {format_percent(share_low)} to "
        f"{format_percent(share_high)}), so wrong labels account for about {format_percent(label_error)} "
        f"of dev error and other causes for {format_percent(dev_error - label_error)}."
    )
    if avoidable_bias is not None:
        verdict = _bias_first_verdict(avoidable_bias)
    elif large_share:
        verdict = "Worth fixing: label errors are a large part of the remaining error."
    elif small_gap:
        verdict = (
            f"Worth fixing: the runs you compare differ by only {format_percent(smallest_run_gap or 0.0)}"
            f" in dev error, less than the {format_percent(label_error)} that wrong labels cause, so the"
            f" dev set cannot rank them reliably."
        )
    else:
        verdict = "Not worth it for now: other causes dominate; work on them first."
    caveat = (
        ""
        if settled
        else " The sample is too small to be sure: within the interval the verdict could go either way; "
        "review more errors."
    )
    return f"{numbers} {rule} {verdict}{caveat}"


def _bias_first_verdict(avoidable_bias: float) -> str:
    return (
        f"Fix bias first: train error is {format_percent(avoidable_bias)} above human-level error (avoidable bias, "
        f"at least {format_percent(AVOIDABLE_BIAS_FIRST)} here), so the model has not learned the training set yet. "
        "Its dev errors and the suspicion ranking then mostly reflect the model, not wrong labels: train a bigger "
        "model, train longer or try a better architecture, then come back to the labels."
    )


def format_percent(rate: float) -> str:
    """A rate as a percentage with one decimal, or two below 1% so small label-error rates stay readable."""
    percent = 100.0 * rate
    return f"{percent:.2f}%" if 0 < abs(percent) < 1 else f"{percent:.1f}%"
