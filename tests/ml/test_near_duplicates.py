"""Duplicate grouping: exact against a brute-force reference, and bounded on large or degenerate inputs."""

from __future__ import annotations

import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.ml.near_duplicates import (
    DEFAULT_HAMMING_THRESHOLD,
    group_duplicates,
    group_exact_duplicates,
    group_near_duplicates,
    merge_groupings,
)


def reference_partition(item_count: int, linked: list[tuple[int, int]]) -> list[int]:
    """Group ids 0.. in order of first appearance, by a plain Python union-find over the linked pairs."""
    parent = list(range(item_count))

    def root(item: int) -> int:
        while parent[item] != item:
            parent[item] = parent[parent[item]]
            item = parent[item]
        return item

    for first, second in linked:
        parent[root(first)] = root(second)
    numbering: dict[int, int] = {}
    return [numbering.setdefault(root(item), len(numbering)) for item in range(item_count)]


def clustered_hashes(seed: int, count: int, cluster_count: int, max_flips: int) -> np.ndarray:
    """Random 64-bit patterns around a few centres, so that close and far pairs both occur."""
    rng = np.random.default_rng(seed)
    centres = rng.integers(0, 2**64, size=cluster_count, dtype=np.uint64)
    hashes = centres[rng.integers(0, cluster_count, size=count)]
    for _ in range(max_flips):
        flip = rng.random(count) < 0.5
        hashes = hashes ^ (flip.astype(np.uint64) << rng.integers(0, 64, size=count).astype(np.uint64))
    return hashes.view(np.int64)


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    count=st.integers(0, 120),
    cluster_count=st.integers(1, 12),
    max_flips=st.integers(0, 8),
    threshold=st.integers(0, 9),
    missing_share=st.sampled_from([0.0, 0.1, 0.5]),
)
def test_near_duplicate_groups_match_brute_force(
    seed: int, count: int, cluster_count: int, max_flips: int, threshold: int, missing_share: float
) -> None:
    hashes = clustered_hashes(seed, count, cluster_count, max_flips)
    missing = np.random.default_rng(seed + 1).random(count) < missing_share
    values = [int(value) for value in hashes.view(np.uint64)]
    linked = [
        (first, second)
        for first in range(count)
        for second in range(first + 1, count)
        if not missing[first] and not missing[second] and (values[first] ^ values[second]).bit_count() <= threshold
    ]

    grouping = group_near_duplicates(hashes, threshold=threshold, missing=missing)

    assert grouping.group_ids.tolist() == reference_partition(count, linked)
    assert grouping.exact


def test_uint64_and_int64_views_of_the_same_hashes_group_alike() -> None:
    hashes = clustered_hashes(seed=5, count=300, cluster_count=4, max_flips=3)
    signed = group_near_duplicates(hashes).group_ids
    unsigned = group_near_duplicates(hashes.view(np.uint64)).group_ids
    assert signed.tolist() == unsigned.tolist()
    assert np.unique(signed).size < hashes.size


def test_small_bucket_window_is_reported_and_never_joins_far_hashes() -> None:
    # Many distinct hashes that agree on every chunk key except their low bits: one huge run per key.
    rng = np.random.default_rng(3)
    hashes = (rng.integers(0, 2**9, size=2_000, dtype=np.uint64) | np.uint64(0xABCD << 40)).view(np.int64)
    full = group_near_duplicates(hashes, threshold=4)
    windowed = group_near_duplicates(hashes, threshold=4, bucket_window=8)

    assert full.exact and not windowed.exact
    assert windowed.compared_pairs < full.compared_pairs
    # The windowed grouping is the same or finer: each windowed group lies inside one exact group.
    for group in np.unique(windowed.group_ids):
        assert np.unique(full.group_ids[windowed.group_ids == group]).size == 1


def test_many_identical_hashes_form_one_group_quickly() -> None:
    hashes = np.zeros(200_000, dtype=np.int64)
    hashes[::2] = 12345
    started = time.perf_counter()
    grouping = group_near_duplicates(hashes, threshold=DEFAULT_HAMMING_THRESHOLD)
    print(f"200,000 hashes with 2 distinct values: {time.perf_counter() - started:.3f} s")
    assert grouping.group_ids.tolist()[:4] == [0, 1, 0, 1]
    assert np.unique(grouping.group_ids).size == 2


def test_one_million_random_hashes_with_planted_near_duplicates() -> None:
    rng = np.random.default_rng(11)
    base = rng.integers(0, 2**64, size=1_000_000, dtype=np.uint64)
    planted_from = rng.choice(base.size, size=5_000, replace=False)
    flips = np.zeros(planted_from.size, dtype=np.uint64)
    for bit in range(DEFAULT_HAMMING_THRESHOLD):
        flips |= np.uint64(1) << ((rng.integers(0, 16, size=flips.size) + 16 * bit).astype(np.uint64))
    hashes = np.concatenate([base, base[planted_from] ^ flips]).view(np.int64)
    progress_seen: list[float] = []

    started = time.perf_counter()
    grouping = group_near_duplicates(hashes, progress=lambda share, _: progress_seen.append(share))
    print(f"1,005,000 hashes, threshold {DEFAULT_HAMMING_THRESHOLD}: {time.perf_counter() - started:.2f} s")

    planted_rows = np.arange(base.size, hashes.size)
    assert np.array_equal(grouping.group_ids[planted_rows], grouping.group_ids[planted_from])
    assert grouping.exact
    assert progress_seen and progress_seen[-1] == 1.0


@settings(max_examples=40, deadline=None)
@given(digests=st.lists(st.one_of(st.none(), st.sampled_from(["a", "b", "c", "d"])), max_size=40))
def test_exact_groups_follow_equal_digests(digests: list[str | None]) -> None:
    ids = group_exact_duplicates(digests).tolist()
    for first in range(len(digests)):
        for second in range(len(digests)):
            same_digest = digests[first] is not None and digests[first] == digests[second]
            assert (ids[first] == ids[second]) == (same_digest or first == second)
    assert ids == reference_partition(len(ids), [(row, ids.index(ids[row])) for row in range(len(ids))])


@settings(max_examples=40, deadline=None)
@given(
    st.integers(0, 30).flatmap(
        lambda size: st.lists(st.lists(st.integers(-3, 5), min_size=size, max_size=size), min_size=1, max_size=3)
    )
)
def test_merged_grouping_is_the_union_of_the_inputs(groupings: list[list[int]]) -> None:
    size = len(groupings[0])
    linked = [
        (first, second)
        for grouping in groupings
        for first in range(size)
        for second in range(first + 1, size)
        if grouping[first] == grouping[second]
    ]
    merged = merge_groupings(*[np.asarray(grouping, dtype=np.int64) for grouping in groupings])
    assert merged.tolist() == reference_partition(size, linked)


def test_group_duplicates_joins_sha_and_hash_groups() -> None:
    far_apart = [0, 2**40 - 1, 2**63 - 1, 2**20 + 7]
    dhashes = np.asarray([far_apart[0], far_apart[0] ^ 0b11, far_apart[1], far_apart[2], far_apart[3]], np.int64)
    sha256 = ["x", "y", "z", "z", None]
    grouping = group_duplicates(
        sha256=sha256, dhashes=dhashes, dhash_missing=np.asarray([False, False, False, False, True])
    )
    assert grouping.group_ids.tolist() == [0, 0, 1, 1, 2]


def test_invalid_arguments_are_refused() -> None:
    with pytest.raises(ValueError):
        group_near_duplicates(np.zeros(3, dtype=np.int64), threshold=40)
    with pytest.raises(TypeError):
        group_near_duplicates(np.zeros(3, dtype=np.float64))
    with pytest.raises(ValueError):
        group_near_duplicates(np.zeros(3, dtype=np.int64), missing=np.zeros(2, dtype=bool))
    with pytest.raises(ValueError):
        merge_groupings(np.zeros(3, dtype=np.int64), np.zeros(2, dtype=np.int64))
