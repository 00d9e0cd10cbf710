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

import numpy as np

from app.ml.split_rows import (
    Assignment,
    Rows,
    round_half_up,
    rows_in_id_order,
    run_starts,
    stable_order,
    warning,
)
from app.ml.split_summary import summarize
from app.ml.split_types import (
    DEV,
    MIN_CLASS_IMAGES_FOR_DEV_AND_TEST,
    RANDOM_KEY_BITS,
    SUBSETS,
    TEST,
    TRAIN,
    TRAIN_DEV,
    UNASSIGNED,
    BoolArray,
    Int64Array,
    PreviousAssignment,
    SplitInput,
    SplitParams,
    SplitResult,
    SplitSummary,
    SplitWarning,
    check_codes,
    encode_categories,
    imported_subset_codes,
    validate_params,
)

# The split's public face: its types live in split_types.py, the row helpers in split_rows.py, the summary and
# its warnings in split_summary.py; this module holds the assignment itself.
__all__ = [
    "DEV",
    "MIN_CLASS_IMAGES_FOR_DEV_AND_TEST",
    "SUBSETS",
    "TEST",
    "TRAIN",
    "TRAIN_DEV",
    "UNASSIGNED",
    "PreviousAssignment",
    "SplitInput",
    "SplitParams",
    "SplitResult",
    "SplitSummary",
    "SplitWarning",
    "compute_split",
    "encode_categories",
    "extend_split",
    "imported_subset_codes",
    "preview_split",
    "validate_params",
]


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
    return summarize(rows, assignment, params)


def _split_result(data: SplitInput, params: SplitParams, previous: PreviousAssignment | None) -> SplitResult:
    rows, assignment, rng = _assign_rows(data, params, previous)
    # The shuffle is drawn last, after every assignment decision (the seed's warning).
    shuffle_key = _random_keys(rng, rows.size)
    kept = assignment.kept_rank >= 0
    within_subset = np.where(kept, assignment.kept_rank, assignment.kept_rank.max(initial=-1) + 1 + shuffle_key)
    order = stable_order(assignment.subsets * (within_subset.max(initial=0) + 1) + within_subset)
    ordered_subsets = assignment.subsets[order]
    subset_starts = np.searchsorted(ordered_subsets, np.arange(len(SUBSETS)))
    return SplitResult(
        image_ids=rows.image_ids[order],
        subsets=ordered_subsets.astype(np.int8),
        positions=np.arange(rows.size, dtype=np.int64) - subset_starts[ordered_subsets],
        newly_assigned=~kept[order],
        summary=summarize(rows, assignment, params),
    )


def _assign_rows(
    data: SplitInput, params: SplitParams, previous: PreviousAssignment | None
) -> tuple[Rows, Assignment, np.random.Generator]:
    errors = validate_params(params)
    if errors:
        raise ValueError("; ".join(errors))
    rows = rows_in_id_order(data)
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
                warning(
                    "imported_subset_missing",
                    f"{without_subset} images had no imported subset; they were placed by the split rules.",
                )
            )
    rng = np.random.Generator(np.random.PCG64(params.seed))
    return rows, _assign(rows, params, fixed, kept_rank, rng, warnings), rng


def _match_previous(rows: Rows, previous: PreviousAssignment) -> tuple[Int64Array, Int64Array, Int64Array]:
    """Rows of `rows` that `previous` assigned, their rank in the stored order, and their subsets."""
    previous_ids = np.asarray(previous.image_ids, dtype=np.int64)
    previous_subsets = np.asarray(previous.subsets, dtype=np.int64)
    if previous_ids.shape != previous_subsets.shape or previous_ids.ndim != 1:
        raise ValueError("previous image_ids and subsets must be 1-D arrays of the same length")
    check_codes("previous subsets", previous_subsets, 0, len(SUBSETS))
    ranks = stable_order(previous_ids)
    sorted_ids = previous_ids[ranks]
    if np.any(sorted_ids[1:] == sorted_ids[:-1]):
        raise ValueError("previous image_ids must be unique")
    # Sorted queries keep searchsorted cache-friendly.
    candidate_rows = np.minimum(np.searchsorted(rows.image_ids, sorted_ids), max(rows.size - 1, 0))
    still_present = rows.image_ids[candidate_rows] == sorted_ids if rows.size else np.zeros(sorted_ids.size, dtype=bool)
    return candidate_rows[still_present], ranks[still_present], previous_subsets[ranks[still_present]]


def _target_rows(rows: Rows, params: SplitParams) -> tuple[BoolArray, bool, list[SplitWarning]]:
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
        return np.zeros(rows.size, dtype=bool), False, [warning("target_source_missing", message)]
    if present_sources.size == 1:
        return np.ones(rows.size, dtype=bool), False, []
    return rows.sources == target_code, True, []


def _assign(
    rows: Rows,
    params: SplitParams,
    fixed: Int64Array,
    kept_rank: Int64Array,
    rng: np.random.Generator,
    warnings: list[SplitWarning],
) -> Assignment:
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
                warning(
                    "target_images_held_in_train",
                    f"{held_in_train} target images are duplicates of other-source images and stay in train.",
                )
            )
    group_subset[open_groups & mixed_groups] = TRAIN

    dev_ratio, test_ratio = ((1.0 - params.target_train_fraction) / 2,) * 2 if target_mode else params.small_ratios[1:]
    target_count = int(np.count_nonzero(is_target))
    dev_quota = max(0, min(round_half_up(dev_ratio * target_count), params.dev_cap) - _count(subsets, DEV))
    test_quota = max(0, min(round_half_up(test_ratio * target_count), params.test_cap) - _count(subsets, TEST))
    holdout_pool = np.flatnonzero(open_groups & ~mixed_groups)
    group_subset[holdout_pool] = _place_holdout(
        rows, holdout_pool, holdout_key[holdout_pool], dev_quota, test_quota, subsets, is_target
    )

    train_pool = np.flatnonzero(open_groups & (group_subset == TRAIN))
    train_total = int(np.count_nonzero((subsets == TRAIN) | (subsets == TRAIN_DEV)))
    train_total += int(rows.group_sizes[train_pool].sum())
    train_dev_quota = max(0, round_half_up(params.train_dev_fraction * train_total) - _count(subsets, TRAIN_DEV))
    if train_dev_quota:
        group_subset[train_pool] = _place_train_dev(rows, train_pool, train_dev_key[train_pool], train_dev_quota)

    subsets = np.where(subsets != UNASSIGNED, subsets, group_subset[rows.group_index])
    return Assignment(subsets, kept_rank, is_target, target_mode, warnings)


def _count(subsets: Int64Array, subset: int) -> int:
    return int(np.count_nonzero(subsets == subset))


def _random_keys(rng: np.random.Generator, count: int) -> Int64Array:
    """Seeded random sort keys; far cheaper than a permutation, and equal keys keep image-id order."""
    return rng.integers(0, 1 << RANDOM_KEY_BITS, size=count, dtype=np.int64)


def _order_within_strata(strata: Int64Array, random_key: Int64Array) -> Int64Array:
    """Group positions sorted by stratum, in seeded random order inside each stratum."""
    return stable_order((strata << RANDOM_KEY_BITS) | random_key)


def _place_holdout(
    rows: Rows,
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


def _place_train_dev(rows: Rows, pool: Int64Array, random_key: Int64Array, quota: int) -> Int64Array:
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
    starts_stratum = run_starts(strata)
    first_rows = np.flatnonzero(starts_stratum)
    run_index = np.cumsum(starts_stratum) - 1
    before_in_stratum = before - before[first_rows][run_index]
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
