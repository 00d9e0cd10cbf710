"""Group images that are exact or near duplicates, so that a split can keep every group inside one subset.

Exact duplicates share a sha256 digest. Near duplicates have 64-bit dHash values that differ in at most
`threshold` bits (Hamming distance). The default of 4 bits out of 64 joins re-encodes, resizes, light crops and
brightness changes of one picture while keeping unrelated pictures apart; from about 10 bits on, unrelated images
with a similar layout start to merge, so thresholds above `MAX_HAMMING_THRESHOLD` are refused.

Search (multi-index hashing, a pigeonhole argument): cut the 64 bits into `threshold + m` chunks. Two hashes within
`threshold` bits differ in at most `threshold` chunks, so they agree exactly on at least `m` chunks. For every choice
of `m` chunks, sort the hashes by those chunks and compare only hashes inside runs of equal keys. m=1 is the classic
"threshold + 1 chunks" scheme; m=2 gives keys about twice as long (far fewer chance collisions) for the price of more
sorts, and wins on large inputs; a small cost model picks m. Identical hashes are collapsed first, so many copies of
one hash cost nothing. A run longer than `bucket_window + 1` (pathological: thousands of distinct hashes sharing all
key bits) compares each hash only with its `bucket_window` successors in sort order, which keeps the work bounded;
`HashGrouping.windowed_buckets` counts such runs, and is 0 when the result is exact.
Matches are joined into connected components with a vectorised union-find.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import combinations
from math import comb

import numpy as np
import numpy.typing as npt

HASH_BITS = 64
DEFAULT_HAMMING_THRESHOLD = 4
MAX_HAMMING_THRESHOLD = 16
DEFAULT_BUCKET_WINDOW = 512
# Relative costs for the cost model, in units of one candidate-pair comparison: one element of one sorted key.
_SORT_COST_PER_HASH = 4.0

Int64Array = npt.NDArray[np.int64]
UInt64Array = npt.NDArray[np.uint64]
ProgressCallback = Callable[[float, str], None]


@dataclass(frozen=True, eq=False)
class HashGrouping:
    """Group ids per image (int64, numbered 0.. in order of first appearance; equal id = same group)."""

    group_ids: Int64Array
    compared_pairs: int
    windowed_buckets: int

    @property
    def exact(self) -> bool:
        return self.windowed_buckets == 0


def group_near_duplicates(
    hashes: npt.ArrayLike,
    *,
    threshold: int = DEFAULT_HAMMING_THRESHOLD,
    missing: npt.ArrayLike | None = None,
    bucket_window: int = DEFAULT_BUCKET_WINDOW,
    progress: ProgressCallback | None = None,
) -> HashGrouping:
    """Connected components of "dHash within `threshold` bits"; images whose hash is `missing` stay alone.

    `hashes` is a 1-D int64 or uint64 array (int64 values are read as their 64-bit pattern, as a database BIGINT
    column stores them); `missing` is an optional boolean mask of images without a hash.
    """
    if not 0 <= threshold <= MAX_HAMMING_THRESHOLD:
        raise ValueError(f"threshold must be between 0 and {MAX_HAMMING_THRESHOLD} bits, got {threshold}")
    if bucket_window < 1:
        raise ValueError(f"bucket_window must be at least 1, got {bucket_window}")
    values = _as_hash_array(hashes)
    present = np.ones(values.size, dtype=bool) if missing is None else ~np.asarray(missing, dtype=bool)
    if present.shape != values.shape:
        raise ValueError("missing must be a boolean mask of the same length as hashes")
    unique_hashes, inverse = _distinct_values(values[present])
    search = _search_close_pairs(unique_hashes, threshold, bucket_window, progress)
    roots = _component_roots(unique_hashes.size, search.first, search.second)
    # Images without a hash get keys above every root, so each one forms its own group.
    item_keys = np.arange(values.size, dtype=np.int64) + unique_hashes.size
    item_keys[present] = roots[inverse]
    return HashGrouping(_number_by_first_appearance(item_keys), search.compared_pairs, search.windowed_buckets)


def group_exact_duplicates(digests: Sequence[str | bytes | None]) -> Int64Array:
    """Group ids (numbered in order of first appearance) where equal digests share a group; None stays alone."""
    group_of_digest: dict[str | bytes, int] = {}
    ids: list[int] = []
    next_id = 0
    for digest in digests:
        if digest is None:
            ids.append(next_id)
            next_id += 1
            continue
        group_id = group_of_digest.setdefault(digest, next_id)
        if group_id == next_id:
            next_id += 1
        ids.append(group_id)
    return np.asarray(ids, dtype=np.int64)


def merge_groupings(*groupings: npt.ArrayLike) -> Int64Array:
    """The finest grouping coarser than all given ones: images grouped together by any input stay together."""
    arrays = [np.asarray(grouping) for grouping in groupings]
    if not arrays:
        raise ValueError("merge_groupings needs at least one grouping")
    size = arrays[0].size
    if any(array.shape != (size,) for array in arrays):
        raise ValueError("all groupings must be 1-D arrays of the same length")
    items = np.arange(size, dtype=np.int64)
    first_parts: list[Int64Array] = []
    second_parts: list[Int64Array] = []
    for array in arrays:
        _, first_member, inverse = np.unique(array, return_index=True, return_inverse=True)
        representative = first_member[inverse].astype(np.int64)
        linked = items != representative
        first_parts.append(items[linked])
        second_parts.append(representative[linked])
    roots = _component_roots(size, np.concatenate(first_parts), np.concatenate(second_parts))
    return _number_by_first_appearance(roots)


def group_duplicates(
    *,
    sha256: Sequence[str | bytes | None],
    dhashes: npt.ArrayLike,
    dhash_missing: npt.ArrayLike | None = None,
    threshold: int = DEFAULT_HAMMING_THRESHOLD,
    bucket_window: int = DEFAULT_BUCKET_WINDOW,
    progress: ProgressCallback | None = None,
) -> HashGrouping:
    """Exact (same sha256) and near (dHash) duplicates merged into one grouping."""
    near = group_near_duplicates(
        dhashes, threshold=threshold, missing=dhash_missing, bucket_window=bucket_window, progress=progress
    )
    if len(sha256) != near.group_ids.size:
        raise ValueError("sha256 and dhashes must have the same length")
    merged = merge_groupings(group_exact_duplicates(sha256), near.group_ids)
    return HashGrouping(merged, near.compared_pairs, near.windowed_buckets)


@dataclass(frozen=True, eq=False)
class _PairSearch:
    first: Int64Array
    second: Int64Array
    compared_pairs: int
    windowed_buckets: int


def _as_hash_array(hashes: npt.ArrayLike) -> UInt64Array:
    values = np.asarray(hashes)
    if values.ndim != 1:
        raise ValueError("hashes must be a 1-D array")
    if values.dtype.kind == "u":
        return values.astype(np.uint64)
    if values.dtype.kind == "i" or values.size == 0:
        return values.astype(np.int64).view(np.uint64)
    raise TypeError(f"hashes must be an integer array, got dtype {values.dtype}")


def _chunk_bounds(chunk_count: int) -> list[tuple[int, int]]:
    """(lowest bit, width) of `chunk_count` near-equal chunks covering the 64 bits."""
    edges = [HASH_BITS * index // chunk_count for index in range(chunk_count + 1)]
    return [(low, high - low) for low, high in zip(edges[:-1], edges[1:], strict=True)]


def _cheapest_match_count(hash_count: int, threshold: int, index_bits: int) -> int:
    """How many chunks must match exactly (1..3) for the fewest expected operations on uniform random hashes."""
    best_match_count, best_cost = 1, float("inf")
    for match_count in (1, 2, 3):
        chunk_count = threshold + match_count
        widest_key_bits = match_count * -(-HASH_BITS // chunk_count)
        if widest_key_bits + index_bits > HASH_BITS:
            continue  # the key and the hash's index must pack into one 64-bit word for the sort
        key_bits = HASH_BITS * match_count / chunk_count
        chance_pairs = hash_count * hash_count / 2.0 / 2.0**key_bits
        cost = comb(chunk_count, match_count) * (_SORT_COST_PER_HASH * hash_count + chance_pairs)
        if cost < best_cost:
            best_match_count, best_cost = match_count, cost
    return best_match_count


def _search_close_pairs(
    hashes: UInt64Array, threshold: int, bucket_window: int, progress: ProgressCallback | None
) -> _PairSearch:
    """Index pairs (into the sorted distinct `hashes`) within `threshold` bits, found by multi-index hashing."""
    count = hashes.size
    no_pairs = np.empty(0, dtype=np.int64)
    if threshold == 0 or count < 2:
        return _PairSearch(no_pairs, no_pairs, 0, 0)
    index_bits = max(1, (count - 1).bit_length())
    match_count = _cheapest_match_count(count, threshold, index_bits)
    bounds = _chunk_bounds(threshold + match_count)
    key_choices = list(combinations(bounds, match_count))
    index_mask = np.uint64((1 << index_bits) - 1)
    packed_indices = np.arange(count, dtype=np.uint64)
    chunk_values = {(low, width): (hashes >> np.uint64(low)) & np.uint64((1 << width) - 1) for low, width in bounds}
    first_parts: list[Int64Array] = []
    second_parts: list[Int64Array] = []
    compared_pairs = windowed_buckets = 0
    packed = np.empty(count, dtype=np.uint64)
    sorted_key = np.empty(count, dtype=np.uint64)
    for step, chosen_chunks in enumerate(key_choices):
        # One in-place sort of (key, index) words: runs of equal keys, each run in index (= hash value) order.
        packed.fill(0)
        for low, width in chosen_chunks:
            np.left_shift(packed, np.uint64(width), out=packed)
            np.bitwise_or(packed, chunk_values[(low, width)], out=packed)
        np.left_shift(packed, np.uint64(index_bits), out=packed)
        np.bitwise_or(packed, packed_indices, out=packed)
        packed.sort()
        np.right_shift(packed, np.uint64(index_bits), out=sorted_key)
        # Compare every position with the one `offset` further on while both are in the same run.
        active = np.flatnonzero(sorted_key[1:] == sorted_key[:-1])
        offset = 1
        while active.size and offset <= bucket_window:
            partner = active + offset
            active_members = (packed[active] & index_mask).astype(np.int64)
            partner_members = (packed[partner] & index_mask).astype(np.int64)
            distances = np.bitwise_count(hashes[active_members] ^ hashes[partner_members])
            close = distances <= threshold
            compared_pairs += active.size
            first_parts.append(active_members[close])
            second_parts.append(partner_members[close])
            offset += 1
            active = active[active + offset < count]
            active = active[sorted_key[active + offset] == sorted_key[active]]
        # Positions still active belong to runs longer than the window; each run's positions are contiguous.
        windowed_buckets += int(np.count_nonzero(np.diff(active, prepend=-2) != 1))
        if progress is not None:
            progress((step + 1) / len(key_choices), "comparing image hashes")
    first = np.concatenate(first_parts) if first_parts else no_pairs
    second = np.concatenate(second_parts) if second_parts else no_pairs
    return _PairSearch(first, second, compared_pairs, windowed_buckets)


def _component_roots(node_count: int, first: Int64Array, second: Int64Array) -> Int64Array:
    """Root of each node's connected component (its smallest node index), for edges first[i]-second[i].

    Vectorised union-find: hook the larger of two roots onto the smaller, then compress paths fully; repeat with the
    edges that still join two different components.
    """
    parent = np.arange(node_count, dtype=np.int64)
    while first.size:
        first_root = parent[first]
        second_root = parent[second]
        crossing = first_root != second_root
        if not crossing.any():
            break
        first, second = first[crossing], second[crossing]
        first_root, second_root = first_root[crossing], second_root[crossing]
        np.minimum.at(parent, np.maximum(first_root, second_root), np.minimum(first_root, second_root))
        while True:
            grandparent = parent[parent]
            if np.array_equal(grandparent, parent):
                break
            parent = grandparent
    return parent


def _distinct_values(values: UInt64Array) -> tuple[UInt64Array, Int64Array]:
    """Sorted distinct values and, per input value, its index among them (np.unique with a faster sort)."""
    order = np.argsort(values, kind="quicksort")
    sorted_values = values[order]
    starts_new_value = np.ones(values.size, dtype=bool)
    np.not_equal(sorted_values[1:], sorted_values[:-1], out=starts_new_value[1:])
    inverse = np.empty(values.size, dtype=np.int64)
    inverse[order] = np.cumsum(starts_new_value) - 1
    return sorted_values[starts_new_value], inverse


def _number_by_first_appearance(keys: Int64Array) -> Int64Array:
    """Replace group keys (small non-negative ints: one slot per possible key) by 0, 1, 2... in order of first use."""
    positions = np.arange(keys.size, dtype=np.int64)
    first_position = np.full(int(keys.max(initial=-1)) + 1, keys.size, dtype=np.int64)
    np.minimum.at(first_position, keys, positions)
    is_first = np.zeros(keys.size, dtype=bool)
    is_first[first_position[first_position < keys.size]] = True
    number_at_position = np.cumsum(is_first) - 1
    return number_at_position[first_position[keys]]
