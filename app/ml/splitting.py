"""Train / train-dev / dev / test split by the seed's rules: pure logic on columnar numpy data.

Rules (seed, "Preparing the data"):
- Same distribution (no target source chosen, or only one source): dev and test each get
  min(round(ratio * n), cap) images (ratios from `small_ratios`, 60/20/20 by default; caps 10,000 each) and train
  the rest, so 1,000 images give 600/200/200 and 1,000,000 give 980,000/10,000/10,000.
- Different distributions (a target source among several): every other-source image goes to train; of the target
  images, `target_train_fraction` go to train and dev and test share the rest equally (caps apply, the overflow goes
  to train). Dev and test hold target images only.
- Shuffling comes last: the order inside each subset is a seeded shuffle drawn after assignment, so mixing sources
  can never shift the share of other-source images in dev/test.
- Train-dev (optional, `train_dev_fraction`): a random slice of the train data, same distribution as train.
- Stratified: the dev+test quota is shared among classes in proportion to their images (largest remainder), then
  among each class's sources; every class with at least 3 target images gets one image in dev and one in test.
- Leak-free: groups of exact/near duplicates (see near_duplicates.py) are assigned as units, by the stratum of their
  representative (the member with the smallest image id); a group that holds a non-target image stays in train.
  Dev and test are filled by giving each next group to the less filled of the two, so with equal goals their sizes
  differ by at most one group's size.
- Sticky: deterministic for a seed (numpy PCG64 only; rows are first put in image-id order, so the order of the
  input rows does not matter). `extend_split` never moves an assigned image, places a new member of a known group in
  that group's subset, and aims the new images at the same overall goals.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypedDict

import numpy as np
import numpy.typing as npt

from app.ml.near_duplicates import DEFAULT_HAMMING_THRESHOLD, MAX_HAMMING_THRESHOLD

SUBSETS: tuple[str, ...] = ("train", "train_dev", "dev", "test")
TRAIN, TRAIN_DEV, DEV, TEST = range(len(SUBSETS))
UNASSIGNED = -1
IMPORTED_SUBSET_ALIASES: dict[str, int] = {
    "train": TRAIN,
    "train_dev": TRAIN_DEV,
    "train-dev": TRAIN_DEV,
    "dev": DEV,
    "val": DEV,
    "valid": DEV,
    "validation": DEV,
    "test": TEST,
}
MIN_CLASS_IMAGES_FOR_DEV_AND_TEST = 3
# Accuracy assumed when judging whether dev can measure a 1-point difference (see _size_warnings).
TYPICAL_ACCURACY = 0.9
DEV_TEST_MISMATCH_RATIO = 0.1
MAX_LISTED_GROUPS = 200
MAX_LISTED_GROUP_MEMBERS = 20
MAX_NAMED_CLASSES = 20
# Random sort keys of this many bits leave room to pack stratum and row index into one 63-bit sort word.
RANDOM_KEY_BITS = 24

Int64Array = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]


@dataclass(frozen=True)
class SplitParams:
    seed: int = 0
    target_source: str | None = None
    target_train_fraction: float = 0.8
    train_dev_fraction: float = 0.0
    dev_cap: int = 10_000
    test_cap: int = 10_000
    small_ratios: tuple[float, float, float] = (0.6, 0.2, 0.2)
    # Used by the caller to build SplitInput.group_ids (near_duplicates.group_duplicates); stored with the split.
    near_duplicate_threshold: int = DEFAULT_HAMMING_THRESHOLD
    use_imported: bool = False
    # Below 1,000 dev images the standard error of accuracy is about one point or more (see _size_warnings).
    min_dev_size: int = 1_000


@dataclass(frozen=True, eq=False)
class SplitInput:
    """One row per image, in any order. Codes index into the name tuples; equal group ids = one duplicate group
    (any integers, e.g. near_duplicates.group_duplicates(...).group_ids; None = every image alone)."""

    image_ids: npt.NDArray[np.integer]
    source_codes: npt.NDArray[np.integer]
    source_names: tuple[str, ...]
    label_codes: npt.NDArray[np.integer]
    label_names: tuple[str, ...]
    group_ids: npt.NDArray[np.integer] | None = None
    # Codes into SUBSETS, UNASSIGNED where the import named none (see imported_subset_codes).
    imported_subsets: npt.NDArray[np.integer] | None = None
    # Rows a new placement may only put in train: images labelled from the unlabeled pool, chosen by a model's
    # uncertainty, so not a fair sample for dev/test (the caller leaves target-source ones out of this).
    train_only: npt.NDArray[np.bool_] | None = None

    def __post_init__(self) -> None:
        size = np.shape(self.image_ids)
        columns: list[np.ndarray | None] = [self.image_ids, self.source_codes, self.label_codes, self.group_ids]
        columns += [self.imported_subsets, self.train_only]
        if len(size) != 1 or any(column is not None and np.shape(column) != size for column in columns):
            raise ValueError("all SplitInput columns must be 1-D arrays of the same length")
        _check_codes("source_codes", self.source_codes, 0, len(self.source_names))
        _check_codes("label_codes", self.label_codes, 0, len(self.label_names))
        if self.imported_subsets is not None:
            _check_codes("imported_subsets", self.imported_subsets, UNASSIGNED, len(SUBSETS))


@dataclass(frozen=True, eq=False)
class PreviousAssignment:
    """A stored split. Within each subset the rows must come in their stored order (ORDER BY position)."""

    image_ids: npt.NDArray[np.integer]
    subsets: npt.NDArray[np.integer]


class SplitWarning(TypedDict):
    code: str
    message: str


class SubsetCounts(TypedDict):
    total: int
    by_source: dict[str, int]
    by_label: dict[str, int]


class GroupEntry(TypedDict):
    group_id: int
    size: int
    subsets: list[str]
    image_ids: list[int]


class GroupSummary(TypedDict):
    count: int
    straddling: int
    listed: list[GroupEntry]


@dataclass(frozen=True, eq=False)
class SplitSummary:
    """Counts per subset x source x label (`table`, shape (4, sources, labels)), warnings, duplicate groups."""

    table: Int64Array
    source_names: tuple[str, ...]
    label_names: tuple[str, ...]
    counts: dict[str, SubsetCounts]
    warnings: list[SplitWarning]
    groups: GroupSummary

    def table_rows(self) -> list[dict[str, str | int]]:
        """Non-empty cells of `table` as {"subset", "source", "label", "count"} rows."""
        return [
            {
                "subset": SUBSETS[subset],
                "source": self.source_names[source],
                "label": self.label_names[label],
                "count": int(self.table[subset, source, label]),
            }
            for subset, source, label in zip(*np.nonzero(self.table), strict=True)
        ]


@dataclass(frozen=True, eq=False)
class SplitResult:
    """Rows ordered by subset, then by position (the seeded shuffle); subsets are codes into SUBSETS."""

    image_ids: Int64Array
    subsets: npt.NDArray[np.int8]
    positions: Int64Array
    newly_assigned: BoolArray
    summary: SplitSummary


def validate_params(params: SplitParams) -> list[str]:
    """Human-readable problems with the parameters; empty when they can be used."""
    errors: list[str] = []
    if params.seed < 0:
        errors.append("seed must be 0 or more")
    if params.target_source is not None and not params.target_source.strip():
        errors.append("target_source must be a source name or empty")
    if not 0.0 <= params.target_train_fraction <= 1.0:
        errors.append("target_train_fraction must be between 0 and 1")
    if not 0.0 <= params.train_dev_fraction < 1.0:
        errors.append("train_dev_fraction must be at least 0 and below 1")
    if params.dev_cap < 0 or params.test_cap < 0:
        errors.append("dev_cap and test_cap must be 0 or more")
    if len(params.small_ratios) != 3 or any(not 0.0 <= ratio <= 1.0 for ratio in params.small_ratios):
        errors.append("small_ratios must be three fractions (train, dev, test) between 0 and 1")
    elif not math.isclose(sum(params.small_ratios), 1.0, abs_tol=1e-6):
        errors.append("small_ratios must add up to 1")
    if not 0 <= params.near_duplicate_threshold <= MAX_HAMMING_THRESHOLD:
        errors.append(f"near_duplicate_threshold must be between 0 and {MAX_HAMMING_THRESHOLD} bits")
    if params.min_dev_size < 0:
        errors.append("min_dev_size must be 0 or more")
    return errors


def encode_categories(values: Sequence[str]) -> tuple[Int64Array, tuple[str, ...]]:
    """Codes and sorted names for a column of category names (sources or labels)."""
    names = tuple(sorted(set(values)))
    code_of_name = {name: code for code, name in enumerate(names)}
    codes = np.fromiter((code_of_name[value] for value in values), dtype=np.int64, count=len(values))
    return codes, names


def imported_subset_codes(names: Sequence[str | None]) -> npt.NDArray[np.int8]:
    """Codes into SUBSETS for imported subset names (val/valid/validation mean dev); None or "" = UNASSIGNED."""
    code_of_name: dict[str | None, int] = {None: UNASSIGNED}
    codes = np.empty(len(names), dtype=np.int8)
    for row, name in enumerate(names):
        if name not in code_of_name:
            normalised = name.strip().lower() if name is not None else ""
            if normalised and normalised not in IMPORTED_SUBSET_ALIASES:
                raise ValueError(f"unknown imported subset {name!r}; expected one of {sorted(IMPORTED_SUBSET_ALIASES)}")
            code_of_name[name] = IMPORTED_SUBSET_ALIASES.get(normalised, UNASSIGNED)
        codes[row] = code_of_name[name]
    return codes


def compute_split(data: SplitInput, params: SplitParams) -> SplitResult:
    """A fresh split by the rules, or, with params.use_imported, the imported split checked and completed."""
    return _split_result(data, params, previous=None)


def extend_split(data: SplitInput, previous: PreviousAssignment, params: SplitParams) -> SplitResult:
    """Keep every image of `previous` where it is (and in its stored order); place only the new images.

    Images of `previous` that are no longer in `data` are ignored. A new image whose duplicate group already has
    an assigned member joins that member's subset even when that puts an other-source image in dev/test: a leak
    would be worse, and the summary warns (non_target_in_dev_test).
    """
    return _split_result(data, params, previous=previous)


def preview_split(data: SplitInput, params: SplitParams, *, previous: PreviousAssignment | None = None) -> SplitSummary:
    """What compute_split (or extend_split, given `previous`) would produce, without ordering the rows."""
    rows, assignment, _ = _assign_rows(data, params, previous)
    return _summarize(rows, assignment, params)


@dataclass(frozen=True, eq=False)
class _Rows:
    """The input rows in image-id order, with duplicate groups numbered 0..G-1."""

    image_ids: Int64Array
    sources: Int64Array
    labels: Int64Array
    group_index: Int64Array
    group_keys: Int64Array
    group_sizes: Int64Array
    # Class and stratum (class * sources + source) of each group's representative, its smallest image id.
    group_labels: Int64Array
    group_strata: Int64Array
    imported: Int64Array | None
    source_names: tuple[str, ...]
    label_names: tuple[str, ...]
    train_only: BoolArray

    @property
    def size(self) -> int:
        return self.image_ids.size

    @property
    def group_count(self) -> int:
        return self.group_sizes.size


@dataclass(frozen=True, eq=False)
class _Assignment:
    subsets: Int64Array
    kept_rank: Int64Array  # rank in the previous stored order; -1 for rows placed by this run
    is_target: BoolArray
    target_mode: bool
    warnings: list[SplitWarning]


def _check_codes(name: str, codes: npt.NDArray[np.integer], lowest: int, end: int) -> None:
    values = np.asarray(codes)
    if values.size and (values.dtype.kind not in "iu" or values.min() < lowest or values.max() >= end):
        raise ValueError(f"{name} must be integers from {lowest} to {end - 1}")


def _round_half_up(value: float) -> int:
    return math.floor(value + 0.5)


def _warning(code: str, message: str) -> SplitWarning:
    return {"code": code, "message": message}


def _stable_order(keys: Int64Array) -> Int64Array:
    """np.argsort(keys, kind="stable"), faster when (key, row) pairs pack into one 63-bit word: one plain sort."""
    row_bits = max(1, (keys.size - 1).bit_length())
    if keys.size and keys.min() >= 0 and int(keys.max()) < 1 << (63 - row_bits):
        packed = np.sort((keys << row_bits) | np.arange(keys.size, dtype=np.int64))
        return packed & ((1 << row_bits) - 1)
    return np.argsort(keys, kind="stable")


def _run_starts(sorted_values: Int64Array) -> BoolArray:
    """True where a run of equal values starts."""
    starts = np.ones(sorted_values.size, dtype=bool)
    np.not_equal(sorted_values[1:], sorted_values[:-1], out=starts[1:])
    return starts


def _rows_in_id_order(data: SplitInput) -> _Rows:
    input_ids = np.asarray(data.image_ids, dtype=np.int64)
    order = _stable_order(input_ids)
    image_ids = input_ids[order]
    if np.any(image_ids[1:] == image_ids[:-1]):
        raise ValueError("image_ids must be unique")
    if data.group_ids is None:
        group_index = np.arange(image_ids.size, dtype=np.int64)
        group_keys, group_first_row = image_ids, group_index
    else:
        group_ids = np.asarray(data.group_ids, dtype=np.int64)[order]
        rows_by_group = _stable_order(group_ids)
        sorted_ids = group_ids[rows_by_group]
        starts_group = _run_starts(sorted_ids)
        group_keys = sorted_ids[starts_group]
        group_first_row = rows_by_group[starts_group]
        group_index = np.empty(image_ids.size, dtype=np.int64)
        group_index[rows_by_group] = np.cumsum(starts_group) - 1
    sources = np.asarray(data.source_codes, dtype=np.int64)[order]
    labels = np.asarray(data.label_codes, dtype=np.int64)[order]
    imported = None if data.imported_subsets is None else np.asarray(data.imported_subsets, dtype=np.int64)[order]
    train_only = np.zeros(image_ids.size, dtype=bool) if data.train_only is None else np.asarray(data.train_only)[order]
    return _Rows(
        image_ids=image_ids,
        sources=sources,
        labels=labels,
        group_index=group_index,
        group_keys=group_keys,
        group_sizes=np.bincount(group_index, minlength=group_keys.size).astype(np.int64),
        group_labels=labels[group_first_row],
        group_strata=labels[group_first_row] * len(data.source_names) + sources[group_first_row],
        imported=imported,
        source_names=tuple(data.source_names),
        label_names=tuple(data.label_names),
        train_only=train_only.astype(bool),
    )


def _split_result(data: SplitInput, params: SplitParams, previous: PreviousAssignment | None) -> SplitResult:
    rows, assignment, rng = _assign_rows(data, params, previous)
    # The shuffle is drawn last, after every assignment decision (the seed's warning).
    shuffle_key = _random_keys(rng, rows.size)
    kept = assignment.kept_rank >= 0
    within_subset = np.where(kept, assignment.kept_rank, assignment.kept_rank.max(initial=-1) + 1 + shuffle_key)
    order = _stable_order(assignment.subsets * (within_subset.max(initial=0) + 1) + within_subset)
    ordered_subsets = assignment.subsets[order]
    subset_starts = np.searchsorted(ordered_subsets, np.arange(len(SUBSETS)))
    return SplitResult(
        image_ids=rows.image_ids[order],
        subsets=ordered_subsets.astype(np.int8),
        positions=np.arange(rows.size, dtype=np.int64) - subset_starts[ordered_subsets],
        newly_assigned=~kept[order],
        summary=_summarize(rows, assignment, params),
    )


def _assign_rows(
    data: SplitInput, params: SplitParams, previous: PreviousAssignment | None
) -> tuple[_Rows, _Assignment, np.random.Generator]:
    errors = validate_params(params)
    if errors:
        raise ValueError("; ".join(errors))
    rows = _rows_in_id_order(data)
    fixed = np.full(rows.size, UNASSIGNED, dtype=np.int64)
    kept_rank = np.full(rows.size, -1, dtype=np.int64)
    warnings: list[SplitWarning] = []
    if params.use_imported:
        if rows.imported is None:
            raise ValueError("use_imported is set but the data carries no imported subsets")
        fixed[:] = rows.imported
    if previous is not None:
        previous_rows, previous_ranks, previous_subsets = _match_previous(rows, previous)
        fixed[previous_rows] = previous_subsets
        kept_rank[previous_rows] = previous_ranks
    if params.use_imported:
        without_subset = int(np.count_nonzero(fixed == UNASSIGNED))
        if without_subset:
            warnings.append(
                _warning(
                    "imported_subset_missing",
                    f"{without_subset} images had no imported subset; they were placed by the split rules.",
                )
            )
    rng = np.random.Generator(np.random.PCG64(params.seed))
    return rows, _assign(rows, params, fixed, kept_rank, rng, warnings), rng


def _match_previous(rows: _Rows, previous: PreviousAssignment) -> tuple[Int64Array, Int64Array, Int64Array]:
    """Rows of `rows` that `previous` assigned, their rank in the stored order, and their subsets."""
    previous_ids = np.asarray(previous.image_ids, dtype=np.int64)
    previous_subsets = np.asarray(previous.subsets, dtype=np.int64)
    if previous_ids.shape != previous_subsets.shape or previous_ids.ndim != 1:
        raise ValueError("previous image_ids and subsets must be 1-D arrays of the same length")
    _check_codes("previous subsets", previous_subsets, 0, len(SUBSETS))
    ranks = _stable_order(previous_ids)
    sorted_ids = previous_ids[ranks]
    if np.any(sorted_ids[1:] == sorted_ids[:-1]):
        raise ValueError("previous image_ids must be unique")
    # Sorted queries keep searchsorted cache-friendly.
    candidate_rows = np.minimum(np.searchsorted(rows.image_ids, sorted_ids), max(rows.size - 1, 0))
    still_present = rows.image_ids[candidate_rows] == sorted_ids if rows.size else np.zeros(sorted_ids.size, dtype=bool)
    return candidate_rows[still_present], ranks[still_present], previous_subsets[ranks[still_present]]


def _target_rows(rows: _Rows, params: SplitParams) -> tuple[BoolArray, bool, list[SplitWarning]]:
    """Which rows count as target images, whether the different-distributions rule applies, and warnings."""
    if params.target_source is None:
        return np.ones(rows.size, dtype=bool), False, []
    present_sources = np.flatnonzero(np.bincount(rows.sources, minlength=len(rows.source_names)))
    if params.target_source not in rows.source_names:
        target_code = -1
    else:
        target_code = rows.source_names.index(params.target_source)
    if target_code not in present_sources:
        message = f"The target source {params.target_source!r} has no images; dev and test stay empty."
        return np.zeros(rows.size, dtype=bool), False, [_warning("target_source_missing", message)]
    if present_sources.size == 1:
        return np.ones(rows.size, dtype=bool), False, []
    return rows.sources == target_code, True, []


def _assign(
    rows: _Rows,
    params: SplitParams,
    fixed: Int64Array,
    kept_rank: Int64Array,
    rng: np.random.Generator,
    warnings: list[SplitWarning],
) -> _Assignment:
    holdout_key = _random_keys(rng, rows.group_count)
    train_dev_key = _random_keys(rng, rows.group_count)
    # A group with an assigned member keeps all its members there (first assigned member in image-id order).
    group_subset = np.full(rows.group_count, UNASSIGNED, dtype=np.int64)
    fixed_rows = np.flatnonzero(fixed != UNASSIGNED)
    fixed_groups, first_fixed = np.unique(rows.group_index[fixed_rows], return_index=True)
    group_subset[fixed_groups] = fixed[fixed_rows[first_fixed]]
    subsets = np.where(fixed != UNASSIGNED, fixed, group_subset[rows.group_index])
    open_groups = group_subset == UNASSIGNED

    is_target, target_mode, target_warnings = _target_rows(rows, params)
    is_target = is_target & ~rows.train_only  # placed like other-source images: in train, with their groups
    warnings.extend(target_warnings)
    mixed_groups = np.bincount(rows.group_index[~is_target], minlength=rows.group_count) > 0
    if target_mode:
        held_in_train = int(np.count_nonzero(is_target & mixed_groups[rows.group_index] & (subsets == UNASSIGNED)))
        if held_in_train:
            warnings.append(
                _warning(
                    "target_images_held_in_train",
                    f"{held_in_train} target images are duplicates of other-source images and stay in train.",
                )
            )
    group_subset[open_groups & mixed_groups] = TRAIN

    dev_ratio, test_ratio = ((1.0 - params.target_train_fraction) / 2,) * 2 if target_mode else params.small_ratios[1:]
    target_count = int(np.count_nonzero(is_target))
    dev_quota = max(0, min(_round_half_up(dev_ratio * target_count), params.dev_cap) - _count(subsets, DEV))
    test_quota = max(0, min(_round_half_up(test_ratio * target_count), params.test_cap) - _count(subsets, TEST))
    holdout_pool = np.flatnonzero(open_groups & ~mixed_groups)
    group_subset[holdout_pool] = _place_holdout(
        rows, holdout_pool, holdout_key[holdout_pool], dev_quota, test_quota, subsets, is_target
    )

    train_pool = np.flatnonzero(open_groups & (group_subset == TRAIN))
    train_total = int(np.count_nonzero((subsets == TRAIN) | (subsets == TRAIN_DEV)))
    train_total += int(rows.group_sizes[train_pool].sum())
    train_dev_quota = max(0, _round_half_up(params.train_dev_fraction * train_total) - _count(subsets, TRAIN_DEV))
    if train_dev_quota:
        group_subset[train_pool] = _place_train_dev(rows, train_pool, train_dev_key[train_pool], train_dev_quota)

    subsets = np.where(subsets != UNASSIGNED, subsets, group_subset[rows.group_index])
    return _Assignment(subsets, kept_rank, is_target, target_mode, warnings)


def _count(subsets: Int64Array, subset: int) -> int:
    return int(np.count_nonzero(subsets == subset))


def _random_keys(rng: np.random.Generator, count: int) -> Int64Array:
    """Seeded random sort keys; far cheaper than a permutation, and equal keys keep image-id order."""
    return rng.integers(0, 1 << RANDOM_KEY_BITS, size=count, dtype=np.int64)


def _order_within_strata(strata: Int64Array, random_key: Int64Array) -> Int64Array:
    """Group positions sorted by stratum, in seeded random order inside each stratum."""
    return _stable_order((strata << RANDOM_KEY_BITS) | random_key)


def _place_holdout(
    rows: _Rows,
    pool: Int64Array,
    random_key: Int64Array,
    dev_quota: int,
    test_quota: int,
    subsets: Int64Array,
    is_target: BoolArray,
) -> Int64Array:
    """Subset (DEV, TEST or TRAIN) for each pool group, stratified by class and then source."""
    label_count, source_count = len(rows.label_names), len(rows.source_names)
    labels, strata, sizes = rows.group_labels[pool], rows.group_strata[pool], rows.group_sizes[pool]
    available = np.bincount(strata, weights=sizes, minlength=label_count * source_count).astype(np.int64)
    available_by_label = available.reshape(label_count, source_count).sum(axis=1)
    dev_by_label = np.bincount(rows.labels[subsets == DEV], minlength=label_count)
    test_by_label = np.bincount(rows.labels[subsets == TEST], minlength=label_count)
    target_by_label = np.bincount(rows.labels[is_target], minlength=label_count)
    # Classes with enough target images need one image in each of dev and test that lacks the class.
    needed = (dev_by_label == 0).astype(np.int64) + (test_by_label == 0)
    needed[target_by_label < MIN_CLASS_IMAGES_FOR_DEV_AND_TEST] = 0
    label_quota = _allocate(dev_quota + test_quota, available_by_label, np.minimum(needed, available_by_label))
    stratum_quota = _share_within(label_quota, available, np.arange(available.size) // source_count)
    order = _order_within_strata(strata, random_key)
    chosen = order[_take_prefixes(strata[order], sizes[order], stratum_quota)]
    placement = np.full(pool.size, TRAIN, dtype=np.int64)
    placement[chosen] = _share_dev_test(
        sizes[chosen].tolist(),
        labels[chosen].tolist(),
        dev_quota,
        test_quota,
        dev_by_label.tolist(),
        test_by_label.tolist(),
    )
    return placement


def _place_train_dev(rows: _Rows, pool: Int64Array, random_key: Int64Array, quota: int) -> Int64Array:
    """Subset (TRAIN_DEV or TRAIN) for each group newly put in train, stratified like train."""
    strata, sizes = rows.group_strata[pool], rows.group_sizes[pool]
    available = np.bincount(strata, weights=sizes, minlength=len(rows.label_names) * len(rows.source_names)).astype(
        np.int64
    )
    total = np.array([min(quota, int(available.sum()))], dtype=np.int64)
    stratum_quota = _share_within(total, available, np.zeros(available.size, dtype=np.int64))
    order = _order_within_strata(strata, random_key)
    placement = np.full(pool.size, TRAIN, dtype=np.int64)
    placement[order[_take_prefixes(strata[order], sizes[order], stratum_quota)]] = TRAIN_DEV
    return placement


def _allocate(total: int, available: Int64Array, minimums: Int64Array) -> Int64Array:
    """Integer shares of `total` proportional to `available`, each within [minimum, available].

    The scale s with sum(clip(s * available, minimum, available)) = total is found by bisection, then the shares
    are rounded by largest remainder. Minimums are dropped when together they exceed the total.
    """
    total = min(total, int(available.sum()))
    if total <= 0:
        return np.zeros(available.size, dtype=np.int64)
    floors = minimums if int(minimums.sum()) <= total else np.zeros_like(minimums)
    weights = available.astype(np.float64)
    low, high = 0.0, 1.0
    for _ in range(64):
        middle = (low + high) / 2
        if np.clip(middle * weights, floors, weights).sum() < total:
            low = middle
        else:
            high = middle
    exact = np.clip(low * weights, floors, weights)
    shares = np.floor(exact).astype(np.int64)
    with_room = np.flatnonzero(shares < available)
    by_remainder = with_room[np.argsort(shares[with_room] - exact[with_room], kind="stable")]
    shares[by_remainder[: total - int(shares.sum())]] += 1
    return shares


def _share_within(totals: Int64Array, weights: Int64Array, owner: Int64Array) -> Int64Array:
    """Share totals[o] among the entries owned by o, in proportion to their weights (largest remainder).

    Each total must not exceed the summed weights of its entries, so no share exceeds its weight.
    """
    owner_weight = np.maximum(np.bincount(owner, weights=weights, minlength=totals.size).astype(np.int64), 1)
    exact = totals[owner] * weights
    shares = exact // owner_weight[owner]
    remainders = exact % owner_weight[owner]
    leftover = totals - np.bincount(owner, weights=shares, minlength=totals.size).astype(np.int64)
    order = np.lexsort((-remainders, owner))
    owner_starts = np.searchsorted(owner[order], np.arange(totals.size))
    rank_in_owner = np.arange(order.size) - owner_starts[owner[order]]
    shares[order[rank_in_owner < leftover[owner[order]]]] += 1
    return shares


def _take_prefixes(strata: Int64Array, sizes: Int64Array, quota: Int64Array) -> BoolArray:
    """For groups sorted by stratum: take each stratum's leading groups whose midpoint falls within its quota.

    With single images this takes exactly the quota; a larger group is taken when at least half of it fits.
    """
    before = np.cumsum(sizes) - sizes
    starts_stratum = _run_starts(strata)
    run_starts = np.flatnonzero(starts_stratum)
    run_index = np.cumsum(starts_stratum) - 1
    before_in_stratum = before - before[run_starts][run_index]
    return np.asarray(2 * before_in_stratum + sizes < 2 * quota[strata])


def _share_dev_test(
    sizes: list[int],
    labels: list[int],
    dev_quota: int,
    test_quota: int,
    dev_by_label: list[int],
    test_by_label: list[int],
) -> list[int]:
    """DEV, TEST or TRAIN for each chosen group, in order.

    Each group goes to the less filled subset (relative to its quota), ties to the subset with fewer images of the
    group's class; a group that fits in neither quota overflows to train. With equal quotas this is "add to the
    smaller", which keeps |dev - test| within the largest group size.
    """
    placed_dev = placed_test = 0
    placement: list[int] = []
    for size, label in zip(sizes, labels, strict=True):
        dev_fill, test_fill = placed_dev * test_quota, placed_test * dev_quota
        prefer_dev = dev_fill < test_fill if dev_fill != test_fill else dev_by_label[label] <= test_by_label[label]
        dev_fits, test_fits = placed_dev + size <= dev_quota, placed_test + size <= test_quota
        if dev_fits and (prefer_dev or not test_fits):
            placement.append(DEV)
            placed_dev += size
            dev_by_label[label] += size
        elif test_fits:
            placement.append(TEST)
            placed_test += size
            test_by_label[label] += size
        else:
            placement.append(TRAIN)
    return placement


def _summarize(rows: _Rows, assignment: _Assignment, params: SplitParams) -> SplitSummary:
    source_count, label_count = len(rows.source_names), len(rows.label_names)
    cells = (assignment.subsets * source_count + rows.sources) * label_count + rows.labels
    table = np.bincount(cells, minlength=len(SUBSETS) * source_count * label_count).astype(np.int64)
    table = table.reshape(len(SUBSETS), source_count, label_count)
    counts: dict[str, SubsetCounts] = {
        name: {
            "total": int(table[subset].sum()),
            "by_source": dict(zip(rows.source_names, table[subset].sum(axis=1).tolist(), strict=True)),
            "by_label": dict(zip(rows.label_names, table[subset].sum(axis=0).tolist(), strict=True)),
        }
        for subset, name in enumerate(SUBSETS)
    }
    groups = _group_summary(rows, assignment.subsets)
    warnings = list(assignment.warnings)
    warnings.extend(_size_warnings(counts["dev"]["total"], counts["test"]["total"], params))
    target_by_label = np.bincount(rows.labels[assignment.is_target], minlength=label_count)
    warnings.extend(_class_warnings(table, target_by_label, rows.label_names))
    if groups["straddling"]:
        warnings.append(
            _warning(
                "group_straddles_subsets",
                f"{groups['straddling']} duplicate groups have members in more than one subset, so near-identical"
                " images are both trained on and evaluated.",
            )
        )
    if assignment.target_mode:
        in_holdout = (assignment.subsets == DEV) | (assignment.subsets == TEST)
        non_target = int(np.count_nonzero(in_holdout & ~assignment.is_target))
        if non_target:
            warnings.append(
                _warning(
                    "non_target_in_dev_test",
                    f"{non_target} dev/test images are not from the target source {params.target_source!r};"
                    " dev and test should hold target images only.",
                )
            )
    return SplitSummary(table, rows.source_names, rows.label_names, counts, warnings, groups)


def _size_warnings(dev_total: int, test_total: int, params: SplitParams) -> list[SplitWarning]:
    """Dev too small to measure a 1-point accuracy difference, and dev/test sizes far apart.

    The standard error of an accuracy p measured on n images is sqrt(p (1 - p) / n): at p = 0.9 it is one point
    at n = 900, so below `min_dev_size` (1,000 by default) a 1-point difference between two models is within
    one standard error and cannot be told apart from noise.
    """
    warnings: list[SplitWarning] = []
    if dev_total < params.min_dev_size:
        if dev_total:
            error_points = 100 * math.sqrt(TYPICAL_ACCURACY * (1 - TYPICAL_ACCURACY) / dev_total)
            detail = (
                f"at {TYPICAL_ACCURACY:.0%} accuracy its standard error is about {error_points:.1f} points, so a"
                " 1-point accuracy difference cannot be measured reliably."
            )
        else:
            detail = "no accuracy can be measured."
        warnings.append(
            _warning("dev_too_small", f"Dev has {dev_total} images (fewer than {params.min_dev_size}); {detail}")
        )
    larger = max(dev_total, test_total)
    if abs(dev_total - test_total) > max(1, DEV_TEST_MISMATCH_RATIO * larger):
        warnings.append(
            _warning(
                "dev_test_size_mismatch",
                f"Dev has {dev_total} images and test {test_total}; they differ by more than"
                f" {DEV_TEST_MISMATCH_RATIO:.0%}.",
            )
        )
    return warnings


def _named(names: list[str]) -> str:
    shown = ", ".join(names[:MAX_NAMED_CLASSES])
    return shown if len(names) <= MAX_NAMED_CLASSES else f"{shown} and {len(names) - MAX_NAMED_CLASSES} more"


def _class_warnings(table: Int64Array, target_by_label: Int64Array, label_names: tuple[str, ...]) -> list[SplitWarning]:
    warnings: list[SplitWarning] = []
    rare = np.flatnonzero((target_by_label > 0) & (target_by_label < MIN_CLASS_IMAGES_FOR_DEV_AND_TEST))
    if rare.size:
        warnings.append(
            _warning(
                "class_too_rare",
                f"{rare.size} classes have fewer than {MIN_CLASS_IMAGES_FOR_DEV_AND_TEST} target images, too few"
                f" for train, dev and test each: {_named([label_names[label] for label in rare])}.",
            )
        )
    for subset in (DEV, TEST):
        by_label = table[subset].sum(axis=0)
        if not by_label.sum():
            continue
        missing = np.flatnonzero((target_by_label > 0) & (by_label == 0))
        if missing.size:
            warnings.append(
                _warning(
                    f"class_missing_from_{SUBSETS[subset]}",
                    f"{missing.size} classes with target images have none in {SUBSETS[subset]}:"
                    f" {_named([label_names[label] for label in missing])}.",
                )
            )
    return warnings


def _group_summary(rows: _Rows, subsets: Int64Array) -> GroupSummary:
    """Groups with more than one member: how many, how many straddle subsets, and the first few listed."""
    multi = np.flatnonzero(rows.group_sizes > 1)
    if not multi.size:
        return {"count": 0, "straddling": 0, "listed": []}
    cells = np.bincount(rows.group_index * len(SUBSETS) + subsets, minlength=rows.group_count * len(SUBSETS))
    presence = cells.reshape(rows.group_count, len(SUBSETS))[multi] > 0
    straddles = presence.sum(axis=1) > 1
    # Straddling groups first (they are problems), then the largest.
    # Group numbers follow the caller's group ids, so ties fall back to those.
    ranking = np.lexsort((-rows.group_sizes[multi], ~straddles))[:MAX_LISTED_GROUPS]
    listed_groups = multi[ranking]
    member_rows = np.flatnonzero(np.isin(rows.group_index, listed_groups))
    member_rows = member_rows[_stable_order(rows.group_index[member_rows])]
    member_groups = rows.group_index[member_rows]
    listed: list[GroupEntry] = []
    for group, present in zip(listed_groups.tolist(), presence[ranking].tolist(), strict=True):
        start = int(np.searchsorted(member_groups, group))
        # Only this group's rows: the next group's members follow right after them.
        members = member_rows[start : start + min(int(rows.group_sizes[group]), MAX_LISTED_GROUP_MEMBERS)]
        listed.append(
            {
                "group_id": int(rows.group_keys[group]),
                "size": int(rows.group_sizes[group]),
                "subsets": [name for name, is_present in zip(SUBSETS, present, strict=True) if is_present],
                "image_ids": rows.image_ids[members].tolist(),
            }
        )
    return {"count": int(multi.size), "straddling": int(np.count_nonzero(straddles)), "listed": listed}
