"""Split rules as properties over random datasets (1-4 sources, 1-50 skewed classes, duplicate groups)."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.ml.splitting import (
    DEV,
    MIN_CLASS_IMAGES_FOR_DEV_AND_TEST,
    SUBSETS,
    TEST,
    TRAIN,
    TRAIN_DEV,
    UNASSIGNED,
    PreviousAssignment,
    SplitInput,
    SplitParams,
    SplitResult,
    compute_split,
    encode_categories,
    extend_split,
    imported_subset_codes,
    preview_split,
    validate_params,
)


def make_input(
    *, size: int, source_count: int, label_count: int, skew: float, duplicate_share: float, data_seed: int
) -> SplitInput:
    rng = np.random.default_rng(data_seed)
    image_ids = rng.choice(10 * size + 10, size=size, replace=False).astype(np.int64) + 1
    sources = rng.choice(source_count, size=size, p=rng.dirichlet(np.ones(source_count)))
    label_weights = rng.permutation(1.0 / (np.arange(label_count) + 1.0) ** skew)
    labels = rng.choice(label_count, size=size, p=label_weights / label_weights.sum())
    linked_to = np.arange(size)
    duplicated = np.flatnonzero(rng.random(size) < duplicate_share)
    duplicated = duplicated[duplicated > 0]  # row 0 has no earlier row to copy
    linked_to[duplicated] = rng.integers(0, duplicated)  # link to an earlier row: chains, never cycles
    while not np.array_equal(linked_to[linked_to], linked_to):  # follow chains so every row names its root
        linked_to = linked_to[linked_to]
    return SplitInput(
        image_ids=image_ids,
        source_codes=sources,
        source_names=tuple(f"source{code}" for code in range(source_count)),
        label_codes=labels,
        label_names=tuple(f"class{code}" for code in range(label_count)),
        group_ids=image_ids[linked_to],  # any integers work as group ids; here the root image's id
    )


@st.composite
def split_inputs(draw: st.DrawFn, max_size: int = 3_000) -> SplitInput:
    return make_input(
        size=draw(st.integers(0, max_size)),
        source_count=draw(st.integers(1, 4)),
        label_count=draw(st.integers(1, 50)),
        skew=draw(st.sampled_from([0.0, 1.0, 2.5])),
        duplicate_share=draw(st.sampled_from([0.0, 0.0, 0.05, 0.3])),
        data_seed=draw(st.integers(0, 2**32 - 1)),
    )


@st.composite
def split_params(draw: st.DrawFn, source_count: int = 4) -> SplitParams:
    caps = draw(st.sampled_from([(10_000, 10_000), (50, 50), (300, 300), (40, 120)]))
    return SplitParams(
        seed=draw(st.integers(0, 2**32 - 1)),
        target_source=draw(st.sampled_from([None, "absent", *(f"source{code}" for code in range(source_count))])),
        target_train_fraction=draw(st.sampled_from([0.8, 0.5, 0.95])),
        train_dev_fraction=draw(st.sampled_from([0.0, 0.0, 0.05, 0.2])),
        dev_cap=caps[0],
        test_cap=caps[1],
        small_ratios=draw(st.sampled_from([(0.6, 0.2, 0.2), (0.8, 0.1, 0.1), (0.7, 0.2, 0.1)])),
    )


@dataclass(frozen=True)
class Facts:
    """What the rules say about a dataset, worked out independently of the implementation."""

    target_mode: bool
    is_target: np.ndarray
    dev_goal: int
    test_goal: int


def facts_for(data: SplitInput, params: SplitParams) -> Facts:
    present = set(np.unique(data.source_codes).tolist())
    names = list(data.source_names)
    target_code = names.index(params.target_source) if params.target_source in names else None
    if params.target_source is None or present == {target_code}:
        is_target = np.ones(len(data.image_ids), dtype=bool)
        ratios = params.small_ratios[1:]
    elif target_code not in present:
        return Facts(False, np.zeros(len(data.image_ids), dtype=bool), 0, 0)
    else:
        is_target = np.asarray(data.source_codes) == target_code
        ratios = ((1 - params.target_train_fraction) / 2,) * 2
    target_count = int(is_target.sum())
    dev_goal = min(math.floor(ratios[0] * target_count + 0.5), params.dev_cap)
    test_goal = min(math.floor(ratios[1] * target_count + 0.5), params.test_cap)
    return Facts(target_code is not None and len(present) > 1, is_target, dev_goal, test_goal)


def subsets_of_input_rows(data: SplitInput, result: SplitResult) -> np.ndarray:
    order = np.argsort(result.image_ids)
    return result.subsets[order][np.searchsorted(result.image_ids[order], data.image_ids)].astype(np.int64)


def group_sizes_of_rows(data: SplitInput) -> np.ndarray:
    assert data.group_ids is not None
    _, inverse, counts = np.unique(data.group_ids, return_inverse=True, return_counts=True)
    return counts[inverse]


def check_split_invariants(data: SplitInput, params: SplitParams, result: SplitResult) -> np.ndarray:
    """Checks shared by every split; returns the subset of each input row."""
    assert np.array_equal(np.sort(result.image_ids), np.sort(data.image_ids))
    assert np.all(np.diff(result.subsets) >= 0), "rows are ordered by subset"
    for subset in range(len(SUBSETS)):
        positions = result.positions[result.subsets == subset]
        assert np.array_equal(positions, np.arange(positions.size))
    subsets = subsets_of_input_rows(data, result)
    summary = result.summary
    assert summary.table.sum() == len(data.image_ids)
    for code, name in enumerate(SUBSETS):
        assert summary.counts[name]["total"] == np.count_nonzero(subsets == code)
        assert sum(summary.counts[name]["by_label"].values()) == summary.counts[name]["total"]
        assert sum(summary.counts[name]["by_source"].values()) == summary.counts[name]["total"]
    assert sum(int(row["count"]) for row in summary.table_rows()) == len(data.image_ids)
    assert all({"code", "message"} <= set(warning) for warning in summary.warnings)
    return subsets


def groups_straddling(data: SplitInput, subsets: np.ndarray) -> int:
    pairs = np.unique(np.stack([np.asarray(data.group_ids), subsets]), axis=1)
    return pairs.shape[1] - np.unique(np.asarray(data.group_ids)).size


def warning_codes(result: SplitResult) -> set[str]:
    return {warning["code"] for warning in result.summary.warnings}


@settings(max_examples=70, deadline=None)
@given(data=split_inputs(), params=split_params())
def test_fresh_split_follows_the_rules(data: SplitInput, params: SplitParams) -> None:
    result = compute_split(data, params)
    subsets = check_split_invariants(data, params, result)
    facts = facts_for(data, params)
    in_dev, in_test = subsets == DEV, subsets == TEST
    group_sizes = group_sizes_of_rows(data)

    assert groups_straddling(data, subsets) == 0
    assert result.summary.groups["straddling"] == 0
    assert result.newly_assigned.all()
    assert in_dev.sum() <= facts.dev_goal and in_test.sum() <= facts.test_goal
    assert not np.any((in_dev | in_test) & ~facts.is_target), "dev and test hold target images only"
    if facts.dev_goal == facts.test_goal:
        largest_group = int(group_sizes[in_dev | in_test].max(initial=0))
        assert abs(int(in_dev.sum()) - int(in_test.sum())) <= max(largest_group, 0)
    if group_sizes.max(initial=1) == 1:
        assert (in_dev.sum(), in_test.sum()) == (facts.dev_goal, facts.test_goal)
        train_like = np.count_nonzero((subsets == TRAIN) | (subsets == TRAIN_DEV))
        expected_train_dev = math.floor(params.train_dev_fraction * train_like + 0.5)
        assert np.count_nonzero(subsets == TRAIN_DEV) == expected_train_dev
    if facts.target_mode:
        other_source = ~facts.is_target
        assert np.all(subsets[other_source] != DEV) and np.all(subsets[other_source] != TEST)
    if 0 < in_dev.sum() < params.min_dev_size:
        assert "dev_too_small" in warning_codes(result)


@settings(max_examples=40, deadline=None)
@given(
    data=split_inputs().filter(lambda data: len(data.image_ids) >= 200),
    params=split_params(),
)
def test_dev_and_test_are_stratified_by_source_and_class(data: SplitInput, params: SplitParams) -> None:
    data = replace(data, group_ids=None)  # single images, so that rounding is the only deviation
    params = replace(params, dev_cap=10_000, test_cap=10_000, small_ratios=(0.6, 0.2, 0.2))
    facts = facts_for(data, params)
    subsets = subsets_of_input_rows(data, compute_split(data, params))
    labels, sources = np.asarray(data.label_codes), np.asarray(data.source_codes)
    label_count = len(data.label_names)
    target_by_label = np.bincount(labels[facts.is_target], minlength=label_count)
    enough = target_by_label >= MIN_CLASS_IMAGES_FOR_DEV_AND_TEST
    # Every such class is owed 2 holdout images, which may shrink the proportional share of the others.
    owed_share = 2 * enough.sum() / max(int(facts.is_target.sum()), 1)
    for subset in (DEV, TEST):
        in_subset = subsets == subset
        share = in_subset.sum() / max(int(facts.is_target.sum()), 1)
        for label in range(label_count):
            for source in range(len(data.source_names)):
                stratum = facts.is_target & (labels == label) & (sources == source)
                expected = stratum.sum() * share
                actual = np.count_nonzero(stratum & in_subset)
                assert abs(actual - expected) <= 3 + stratum.sum() * owed_share
    holdout_room = facts.dev_goal + facts.test_goal
    if holdout_room >= 2 * enough.sum():
        for subset in (DEV, TEST):
            present = np.bincount(labels[subsets == subset], minlength=label_count) > 0
            assert np.all(present[enough]), f"every class with enough target images is in {SUBSETS[subset]}"


def test_worked_example_one_thousand_images() -> None:
    data = make_input(size=1_000, source_count=1, label_count=5, skew=1.0, duplicate_share=0.0, data_seed=1)
    counts = compute_split(data, SplitParams()).summary.counts
    assert [counts[name]["total"] for name in SUBSETS] == [600, 0, 200, 200]


def test_worked_example_one_million_images() -> None:
    data = make_input(size=1_000_000, source_count=1, label_count=50, skew=1.0, duplicate_share=0.0, data_seed=2)
    result = compute_split(data, SplitParams())
    counts = result.summary.counts
    assert [counts[name]["total"] for name in SUBSETS] == [980_000, 0, 10_000, 10_000]
    assert "dev_too_small" not in warning_codes(result)


def test_worked_example_target_distribution() -> None:
    target = make_input(size=1_000, source_count=1, label_count=4, skew=0.0, duplicate_share=0.0, data_seed=3)
    codes = np.concatenate([np.zeros(1_000, dtype=np.int64), np.ones(500, dtype=np.int64)])
    data = SplitInput(
        image_ids=np.arange(1_500, dtype=np.int64),
        source_codes=codes,
        source_names=("phone", "web"),
        label_codes=np.concatenate([np.asarray(target.label_codes), np.zeros(500, dtype=np.int64)]),
        label_names=target.label_names,
    )
    result = compute_split(data, SplitParams(target_source="phone"))
    counts = result.summary.counts
    assert [counts[name]["total"] for name in SUBSETS] == [1_300, 0, 100, 100]
    assert counts["dev"]["by_source"] == {"phone": 100, "web": 0}
    assert counts["train"]["by_source"] == {"phone": 800, "web": 500}


@settings(max_examples=25, deadline=None)
@given(data=split_inputs(max_size=1_500), params=split_params())
def test_same_seed_same_split_whatever_the_row_order(data: SplitInput, params: SplitParams) -> None:
    first = compute_split(data, params)
    shuffled_rows = np.random.default_rng(params.seed).permutation(len(data.image_ids))
    reordered = SplitInput(
        image_ids=np.asarray(data.image_ids)[shuffled_rows],
        source_codes=np.asarray(data.source_codes)[shuffled_rows],
        source_names=data.source_names,
        label_codes=np.asarray(data.label_codes)[shuffled_rows],
        label_names=data.label_names,
        group_ids=np.asarray(data.group_ids)[shuffled_rows],
    )
    second = compute_split(reordered, params)
    assert np.array_equal(first.image_ids, second.image_ids)
    assert np.array_equal(first.subsets, second.subsets)
    assert first.summary.warnings == second.summary.warnings


def test_different_seeds_give_different_splits() -> None:
    data = make_input(size=2_000, source_count=2, label_count=10, skew=1.0, duplicate_share=0.05, data_seed=4)
    dev_sets = []
    for seed in range(4):
        result = compute_split(data, SplitParams(seed=seed))
        dev_sets.append(frozenset(result.image_ids[result.subsets == DEV].tolist()))
    assert len(set(dev_sets)) == len(dev_sets)


@settings(max_examples=40, deadline=None)
@given(
    data=split_inputs(max_size=2_000),
    params=split_params(),
    kept_share=st.sampled_from([0.2, 0.6, 0.95]),
    subset_seed=st.integers(0, 2**32 - 1),
)
def test_extend_keeps_assigned_images_and_places_new_ones(
    data: SplitInput, params: SplitParams, kept_share: float, subset_seed: int
) -> None:
    old_rows = np.flatnonzero(np.random.default_rng(subset_seed).random(len(data.image_ids)) < kept_share)
    old_data = SplitInput(
        image_ids=np.asarray(data.image_ids)[old_rows],
        source_codes=np.asarray(data.source_codes)[old_rows],
        source_names=data.source_names,
        label_codes=np.asarray(data.label_codes)[old_rows],
        label_names=data.label_names,
        group_ids=np.asarray(data.group_ids)[old_rows],
    )
    old = compute_split(old_data, params)
    previous = PreviousAssignment(image_ids=old.image_ids, subsets=old.subsets)

    extended = extend_split(data, previous, params)

    subsets = check_split_invariants(data, params, extended)
    ids = np.asarray(data.image_ids)
    is_old = np.isin(ids, old.image_ids)
    assert np.array_equal(subsets[old_rows], subsets_of_input_rows(old_data, old)), "assigned images never move"
    assert np.array_equal(np.sort(extended.image_ids[extended.newly_assigned]), np.sort(ids[~is_old]))
    assert np.all(subsets != UNASSIGNED)
    for subset in range(len(SUBSETS)):
        kept_in_order = extended.image_ids[(extended.subsets == subset) & ~extended.newly_assigned]
        assert np.array_equal(kept_in_order, old.image_ids[old.subsets == subset])
        new_flags = extended.newly_assigned[extended.subsets == subset]
        assert np.all(new_flags[:-1] <= new_flags[1:]), "kept images keep the first positions"
    assert groups_straddling(data, subsets) == 0, "new members join their group's subset"

    facts = facts_for(data, params)
    new_in_holdout = ~is_old & ((subsets == DEV) | (subsets == TEST))
    group_ids = np.asarray(data.group_ids)
    joined_holdout_group = np.isin(group_ids, group_ids[is_old & ((subsets == DEV) | (subsets == TEST))])
    placed_by_rules = new_in_holdout & ~joined_holdout_group
    assert not np.any(placed_by_rules & ~facts.is_target)
    assert np.count_nonzero((subsets == DEV) & (is_old | placed_by_rules)) <= facts.dev_goal
    assert np.count_nonzero((subsets == TEST) & (is_old | placed_by_rules)) <= facts.test_goal
    if group_sizes_of_rows(data).max(initial=1) == 1 and np.count_nonzero(facts.is_target & ~is_old) >= 10:
        assert np.count_nonzero(subsets == DEV) == facts.dev_goal
        assert np.count_nonzero(subsets == TEST) == facts.test_goal


@settings(max_examples=3, deadline=None)
@given(
    data=st.builds(
        make_input,
        size=st.sampled_from([20_000, 50_000]),
        source_count=st.integers(1, 4),
        label_count=st.integers(1, 50),
        skew=st.sampled_from([0.0, 2.5]),
        duplicate_share=st.sampled_from([0.0, 0.3]),
        data_seed=st.integers(0, 2**32 - 1),
    ),
    params=split_params(),
)
def test_large_splits_keep_the_invariants(data: SplitInput, params: SplitParams) -> None:
    result = compute_split(data, params)
    subsets = check_split_invariants(data, params, result)
    facts = facts_for(data, params)
    assert groups_straddling(data, subsets) == 0
    assert np.count_nonzero(subsets == DEV) <= facts.dev_goal
    assert not np.any(((subsets == DEV) | (subsets == TEST)) & ~facts.is_target)


def test_imported_split_is_kept_normalised_and_checked() -> None:
    names = ["train", "val", "valid", "test", None, "dev", "TRAIN", "train", "test", None]
    data = SplitInput(
        image_ids=np.arange(10, dtype=np.int64) + 100,
        source_codes=np.asarray([0, 1, 0, 0, 0, 0, 0, 0, 0, 0]),
        source_names=("phone", "web"),
        label_codes=np.asarray([0, 0, 0, 0, 1, 0, 0, 1, 0, 1]),
        label_names=("cat", "dog"),
        group_ids=np.asarray([1, 2, 3, 4, 5, 6, 6, 7, 8, 5]),  # rows 5 and 6 are duplicates in dev and train
        imported_subsets=imported_subset_codes(names),
    )
    result = compute_split(data, SplitParams(use_imported=True, target_source="phone"))
    subsets = subsets_of_input_rows(data, result)
    assert subsets[:4].tolist() == [TRAIN, DEV, DEV, TEST]
    assert subsets[5:9].tolist() == [DEV, TRAIN, TRAIN, TEST]
    assert subsets[4] == subsets[9], "images without an imported subset are placed with their group"
    codes = warning_codes(result)
    assert {"imported_subset_missing", "group_straddles_subsets", "non_target_in_dev_test"} <= codes
    assert "class_missing_from_dev" in codes or "class_missing_from_test" in codes
    straddling = [group for group in result.summary.groups["listed"] if len(group["subsets"]) > 1]
    assert straddling == [{"group_id": 6, "size": 2, "subsets": ["train", "dev"], "image_ids": [105, 106]}]


def test_unknown_imported_subset_name_is_refused() -> None:
    with pytest.raises(ValueError, match="holdout"):
        imported_subset_codes(["train", "holdout"])


def test_class_warnings_name_rare_and_missing_classes() -> None:
    labels = ["common"] * 400 + ["rare"] * 2
    codes, names = encode_categories(labels)
    data = SplitInput(
        image_ids=np.arange(len(labels), dtype=np.int64),
        source_codes=np.zeros(len(labels), dtype=np.int64),
        source_names=("only",),
        label_codes=codes,
        label_names=names,
    )
    result = compute_split(data, SplitParams())
    by_code = {warning["code"]: warning["message"] for warning in result.summary.warnings}
    assert "rare" in by_code["class_too_rare"]
    missing_somewhere = [by_code.get("class_missing_from_dev", ""), by_code.get("class_missing_from_test", "")]
    assert any("rare" in message for message in missing_somewhere)
    assert "dev_too_small" in by_code


def test_unequal_caps_are_flagged() -> None:
    data = make_input(size=5_000, source_count=1, label_count=3, skew=0.0, duplicate_share=0.0, data_seed=5)
    result = compute_split(data, SplitParams(dev_cap=100, test_cap=1_000))
    assert result.summary.counts["dev"]["total"] == 100
    assert "dev_test_size_mismatch" in warning_codes(result)


def test_missing_target_source_keeps_everything_in_train() -> None:
    data = make_input(size=500, source_count=2, label_count=3, skew=0.0, duplicate_share=0.0, data_seed=6)
    result = compute_split(data, SplitParams(target_source="elsewhere"))
    assert result.summary.counts["train"]["total"] == 500
    assert "target_source_missing" in warning_codes(result)


def test_preview_matches_the_split() -> None:
    data = make_input(size=3_000, source_count=3, label_count=20, skew=1.0, duplicate_share=0.1, data_seed=7)
    params = SplitParams(target_source="source1", train_dev_fraction=0.1, seed=9)
    result = compute_split(data, params)
    preview = preview_split(data, params)
    assert np.array_equal(preview.table, result.summary.table)
    assert preview.warnings == result.summary.warnings
    assert preview.groups == result.summary.groups
    previous = PreviousAssignment(result.image_ids, result.subsets)
    assert np.array_equal(preview_split(data, params, previous=previous).table, result.summary.table)


def test_invalid_params_are_listed_and_refused() -> None:
    bad = SplitParams(
        seed=-1, target_train_fraction=1.5, train_dev_fraction=1.0, dev_cap=-1, small_ratios=(0.5, 0.2, 0.2)
    )
    errors = validate_params(bad)
    assert len(errors) == 5
    assert validate_params(SplitParams()) == []
    data = make_input(size=10, source_count=1, label_count=1, skew=0.0, duplicate_share=0.0, data_seed=8)
    with pytest.raises(ValueError):
        compute_split(data, bad)
    with pytest.raises(ValueError, match="imported"):
        compute_split(data, SplitParams(use_imported=True))


def test_inconsistent_input_is_refused() -> None:
    with pytest.raises(ValueError):
        SplitInput(np.arange(3), np.zeros(2, dtype=np.int64), ("a",), np.zeros(3, dtype=np.int64), ("x",))
    with pytest.raises(ValueError):
        SplitInput(np.arange(3), np.full(3, 2), ("a",), np.zeros(3, dtype=np.int64), ("x",))
    duplicate_ids = SplitInput(
        np.zeros(3, dtype=np.int64), np.zeros(3, dtype=np.int64), ("a",), np.zeros(3, dtype=np.int64), ("x",)
    )
    with pytest.raises(ValueError, match="unique"):
        compute_split(duplicate_ids, SplitParams())


def test_each_listed_group_names_only_its_own_members() -> None:
    # Three pairs of duplicates among six singletons: each listed group holds exactly its pair.
    group_ids = np.asarray([1, 2, 3, 1, 5, 6, 3, 8, 9, 5, 11, 12])
    data = SplitInput(
        image_ids=np.arange(group_ids.size, dtype=np.int64) + 100,
        source_codes=np.zeros(group_ids.size, dtype=np.int64),
        source_names=("web",),
        label_codes=np.zeros(group_ids.size, dtype=np.int64),
        label_names=("cat",),
        group_ids=group_ids,
    )
    listed = compute_split(data, SplitParams()).summary.groups["listed"]
    members = {group["group_id"]: sorted(group["image_ids"]) for group in listed}
    assert members == {1: [100, 103], 3: [102, 106], 5: [104, 109]}
    assert all(group["size"] == len(group["image_ids"]) for group in listed)
