"""Group images that are exact or near duplicates, so that a split can keep every group inside one subset.

Exact duplicates share a sha256 digest. Near duplicates pass two independent checks: their 64-bit dHash values
differ in at most `threshold` bits (Hamming distance), and their 32 x 32 colour pixel signatures
(`app.ml.images.pixel_signature`) correlate at least `min_similarity`. The hash alone is not enough: 9 x 8 pixels
average fine patterns (stripes at any angle) to flat grey, so unrelated pictures can share a hash exactly.

Two hashes per image: its whole view's and, where ingest stored one, its inner view's (`app.ml.images.
inner_dhash64`, the central 94 % of each side). Two images are within the threshold when any of whole/whole,
inner/inner, whole/inner or inner/whole is: a copy cropped by a few percent has a whole-view hash near the
original's inner one, which the whole views alone miss. Pairs the search compares anyway (they share one of its
keys) up to `verified_reach` x `threshold` bits apart count too, but only on verified signatures that correlate at
least REACH_MIN_SIMILARITY: brightening clips flat areas and moves their noisy bits, and most such copies land
there, for no extra sort.

Groups never chain. Joining "within 4 bits" into connected components let a -> b -> c -> ... pull dozens of
different pictures into one group; here each group has a representative (its first image) and every member passed
both checks against that representative, so any two members are close too (within 2 x reach bits, and their
signatures correlate at least 2 * min_similarity**2 - 1). Only representatives are looked up by hash, so a member
is never a way into its group.

Search (multi-index hashing, a pigeonhole argument): cut the 64 bits into `threshold + m` chunks. Two hashes within
`threshold` bits differ in at most `threshold` chunks, so they agree exactly on at least `m` chunks. For every choice
of `m` chunks, sort the hashes by those chunks and compare only hashes inside runs of equal keys. m=1 is the classic
"threshold + 1 chunks" scheme; m=2 gives keys about twice as long (far fewer chance collisions) for the price of more
sorts, and wins on large inputs; a small cost model picks m. Identical hashes are collapsed first, so many copies of
one hash cost nothing; whole and inner hashes are searched as one set of values, and a pair of values that only
one image has (its own two views) is dropped. A run longer than `bucket_window + 1` (pathological: thousands of
distinct hashes sharing all key bits) compares each hash only with its `bucket_window` successors in sort order,
and an image is checked against at most `MAX_REPRESENTATIVES_CHECKED` representatives, which keeps the work
bounded; `HashGrouping.windowed_buckets` counts where either bound cut the search, and is 0 when the result is
exact.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import chain, combinations
from math import comb

import numpy as np
import numpy.typing as npt

from app.ml.arrays import Int64Array, UInt64Array
from app.ml.images import SIGNATURE_VIEW_LENGTH

HASH_BITS = 64
DEFAULT_HAMMING_THRESHOLD = 4
MAX_HAMMING_THRESHOLD = 16
DEFAULT_BUCKET_WINDOW = 512
# Measured by bench/near_duplicates.py: transformed copies of a photo correlate above 0.9 at 32 x 32 pixels.
DEFAULT_MIN_SIMILARITY = 0.9
MAX_REPRESENTATIVES_CHECKED = 64
# Pairs within VERIFIED_REACH x threshold bits that the search compares anyway (they share one of its keys) are
# candidates too, joined only when both signatures verify: bench/near_duplicates.py finds most brighter or
# recompressed copies that moved 5-8 bits there, at no extra sort.
VERIFIED_REACH = 2
# ... and must correlate more: beyond the threshold, look-alike pictures (same shape, other colour) come closer.
REACH_MIN_SIMILARITY = 0.95
# A signature whose pixels vary by less than this (standard deviation, grey levels) is flat: correlation means nothing.
_FLAT_STD = 1.0
# Two flat pictures are alike when their colours differ by at most this many levels in every channel: black and
# white are not near duplicates of each other.
_FLAT_LEVELS = 16.0
# Relative costs for the cost model, in units of one candidate-pair comparison: one element of one sorted key.
_SORT_COST_PER_HASH = 4.0

ProgressCallback = Callable[[float, str], None]
SignatureLoader = Callable[[npt.NDArray[np.int64]], tuple[npt.ArrayLike, npt.ArrayLike]]
Signatures = npt.NDArray[np.uint8] | SignatureLoader


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
    inner_hashes: npt.ArrayLike | None = None,
    inner_missing: npt.ArrayLike | None = None,
    signatures: Signatures | None = None,
    min_similarity: float = DEFAULT_MIN_SIMILARITY,
    verified_reach: int = VERIFIED_REACH,
    bucket_window: int = DEFAULT_BUCKET_WINDOW,
    progress: ProgressCallback | None = None,
) -> HashGrouping:
    """Groups of images within `threshold` dHash bits of their group's representative, whose pixel signatures
    (when given) also correlate at least `min_similarity` with it; images whose hash is `missing` stay alone.

    `hashes` is a 1-D int64 or uint64 array (int64 values are read as their 64-bit pattern, as a database BIGINT
    column stores them); `missing` is an optional boolean mask of images without a hash. `inner_hashes` (same
    form, `inner_missing` its mask) are the dHashes of each picture's inner view (`app.ml.images.inner_dhash64`):
    two images are within the threshold when any of whole/whole, inner/inner, whole/inner or inner/whole is,
    which finds lightly cropped copies; an image without one is compared by its whole view only.
    `signatures` is an (images, SIGNATURE_LENGTH) uint8 array, or a function that loads them for the image
    indices it is given (only images with a possible partner are asked for) and returns them with a mask of those
    it found. A pair where either image has no signature, and every pair without `signatures`, is checked by its
    hash only. A pair with both signatures may also be up to `verified_reach` x `threshold` bits apart when the
    search compares it anyway, and then needs REACH_MIN_SIMILARITY (1 turns this off).
    """
    if not 0 <= threshold <= MAX_HAMMING_THRESHOLD:
        raise ValueError(f"threshold must be between 0 and {MAX_HAMMING_THRESHOLD} bits, got {threshold}")
    if bucket_window < 1:
        raise ValueError(f"bucket_window must be at least 1, got {bucket_window}")
    if not -1.0 <= min_similarity <= 1.0:
        raise ValueError(f"min_similarity must be between -1 and 1, got {min_similarity}")
    if verified_reach < 1:
        raise ValueError(f"verified_reach must be at least 1, got {verified_reach}")
    keys = _HashKeys.of(hashes, missing, inner_hashes, inner_missing)
    # Pairs the search compares anyway may join from further off, but only on verified signatures.
    reach = threshold * verified_reach if signatures is not None else threshold
    search = _search_close_pairs(keys.values, threshold, bucket_window, progress, reach=reach, owners=keys.sole_owner)
    first, second = search.first, search.second
    # Only images sharing a hash or with a hash close to another image's can have a partner.
    has_partner = keys.owner_count > 1
    has_partner[first] = True
    has_partner[second] = True
    item_count = keys.full.size
    present = np.flatnonzero(keys.full >= 0)
    candidates = present[has_partner[keys.full[present]] | has_partner[keys.inner[present]]]
    candidate_keys = np.stack([keys.full[candidates], keys.inner[candidates]], axis=1)
    signature_rows, found = _load_signatures(signatures, candidates, item_count)
    nodes = _collapse_identical(candidate_keys, signature_rows, found)
    neighbours = _Adjacency.of_pairs(keys.values.size, first, second)
    leaders = _Leaders(keys.values, neighbours, (threshold, reach), min_similarity)
    node_rows = None if signature_rows is None else signature_rows[nodes.first_item]
    leader_node, capped = leaders.assign(candidate_keys[nodes.first_item], node_rows, found[nodes.first_item])
    # Every image is its own group unless it is a candidate; a candidate takes its leader's first image's index.
    item_keys = np.arange(item_count, dtype=np.int64) + item_count
    item_keys[candidates] = candidates[nodes.first_item[leader_node[nodes.node_of_item]]]
    windowed = search.windowed_buckets + capped
    return HashGrouping(_number_by_first_appearance(item_keys), search.compared_pairs + leaders.checked, windowed)


def signature_similarity(first: npt.ArrayLike, second: npt.ArrayLike) -> npt.NDArray[np.float32]:
    """How alike two pixel signatures are, row by row: the best Pearson correlation of one's whole view with
    the other's whole or inner views (`app.ml.images.SIGNATURE_VIEWS`); for two flat pictures 1.0 when their
    colours are close, else 0.0.

    Correlation ignores brightness and contrast changes, which is what near duplicates often differ by; the inner
    views catch light crops."""
    first_rows, first_flat = _normalised(np.atleast_2d(np.asarray(first, dtype=np.uint8)))
    second_rows, second_flat = _normalised(np.atleast_2d(np.asarray(second, dtype=np.uint8)))
    return _best_correlation(first_rows, first_flat, second_rows, second_flat)


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
    inner_dhashes: npt.ArrayLike | None = None,
    inner_dhash_missing: npt.ArrayLike | None = None,
    signatures: Signatures | None = None,
    threshold: int = DEFAULT_HAMMING_THRESHOLD,
    bucket_window: int = DEFAULT_BUCKET_WINDOW,
    progress: ProgressCallback | None = None,
) -> HashGrouping:
    """Exact (same sha256) and near (dHash) duplicates merged into one grouping."""
    near = group_near_duplicates(
        dhashes,
        threshold=threshold,
        missing=dhash_missing,
        inner_hashes=inner_dhashes,
        inner_missing=inner_dhash_missing,
        signatures=signatures,
        bucket_window=bucket_window,
        progress=progress,
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


@dataclass(frozen=True, eq=False)
class _HashKeys:
    """The distinct hash values of all images' whole and inner views, and which of them each image has."""

    values: UInt64Array  # sorted distinct values
    full: Int64Array  # per image: index of its whole-view hash in `values`, -1 when it has none
    inner: Int64Array  # per image: index of its inner-view hash (its whole-view one when it has none)
    owner_count: Int64Array  # per value: how many images have it (as either view)
    sole_owner: Int64Array  # per value: the image having it where only one does, else -1

    @classmethod
    def of(
        cls,
        hashes: npt.ArrayLike,
        missing: npt.ArrayLike | None,
        inner_hashes: npt.ArrayLike | None,
        inner_missing: npt.ArrayLike | None,
    ) -> _HashKeys:
        values = _as_hash_array(hashes)
        present = _present_mask(missing, values.size, "missing")
        with_inner = np.zeros(values.size, dtype=bool)
        inner_values = values
        if inner_hashes is not None:
            inner_values = _as_hash_array(inner_hashes)
            if inner_values.shape != values.shape:
                raise ValueError("inner_hashes must have the same length as hashes")
            # An inner hash equal to the whole one adds nothing, and without a whole one the image stays alone.
            with_inner = present & _present_mask(inner_missing, values.size, "inner_missing")
            with_inner &= inner_values != values
        full_items, inner_items = np.flatnonzero(present), np.flatnonzero(with_inner)
        distinct, inverse = _distinct_values(np.concatenate([values[full_items], inner_values[inner_items]]))
        full = np.full(values.size, -1, dtype=np.int64)
        full[full_items] = inverse[: full_items.size]
        inner = full.copy()
        inner[inner_items] = inverse[full_items.size :]
        owner_count = np.bincount(inverse, minlength=distinct.size).astype(np.int64)
        sole_owner = np.full(distinct.size, -1, dtype=np.int64)
        sole_owner[inverse] = np.concatenate([full_items, inner_items])
        sole_owner[owner_count > 1] = -1
        return cls(distinct, full, inner, owner_count, sole_owner)


def _present_mask(missing: npt.ArrayLike | None, size: int, name: str) -> npt.NDArray[np.bool_]:
    if missing is None:
        return np.ones(size, dtype=bool)
    present = ~np.asarray(missing, dtype=bool)
    if present.shape != (size,):
        raise ValueError(f"{name} must be a boolean mask of the same length as hashes")
    return present


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
    hashes: UInt64Array,
    threshold: int,
    bucket_window: int,
    progress: ProgressCallback | None,
    *,
    reach: int | None = None,
    owners: Int64Array | None = None,
) -> _PairSearch:
    """Distinct index pairs (into the sorted distinct `hashes`, first < second) within `threshold` bits, found by
    multi-index hashing; with `reach`, also the pairs it compares (they share a key) that are within `reach` bits.
    `owners` (per value: the only image having it, -1 where several do) drops the pairs of one image's own
    values: its whole and inner views are often close, and would make every image a candidate."""
    reach = threshold if reach is None else max(reach, threshold)
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
            close = distances <= reach
            compared_pairs += active.size
            first_close, second_close = active_members[close], partner_members[close]
            if owners is not None:
                first_owner = owners[first_close]
                keep = (first_owner < 0) | (first_owner != owners[second_close])
                first_close, second_close = first_close[keep], second_close[keep]
            first_parts.append(first_close)
            second_parts.append(second_close)
            offset += 1
            active = active[active + offset < count]
            active = active[sorted_key[active + offset] == sorted_key[active]]
        # Positions still active belong to runs longer than the window; each run's positions are contiguous.
        windowed_buckets += int(np.count_nonzero(np.diff(active, prepend=-2) != 1))
        if progress is not None:
            progress((step + 1) / len(key_choices), "comparing image hashes")
    # A close pair shares several keys: once is enough for the leaders' lookups.
    pairs = np.unique(np.concatenate(first_parts) * count + np.concatenate(second_parts)) if first_parts else no_pairs
    return _PairSearch(pairs // count, pairs % count, compared_pairs, windowed_buckets)


def _load_signatures(
    signatures: Signatures | None, items: Int64Array, item_count: int
) -> tuple[npt.NDArray[np.uint8] | None, npt.NDArray[np.bool_]]:
    if signatures is None:
        return None, np.ones(items.size, dtype=bool)
    if callable(signatures):
        rows, found = signatures(items)
        rows, found = np.asarray(rows, dtype=np.uint8), np.asarray(found, dtype=bool)
    else:
        table = np.asarray(signatures, dtype=np.uint8)
        if table.ndim != 2 or table.shape[0] != item_count:
            raise ValueError("signatures must be an (images, length) array with one row per hash")
        rows, found = table[items], np.ones(items.size, dtype=bool)
    if rows.ndim != 2 or rows.shape[0] != items.size or found.shape != (items.size,):
        raise ValueError("the signature loader must return one row and one found flag per image asked for")
    return rows, found


@dataclass(frozen=True, eq=False)
class _Nodes:
    """Candidates with the same hash and the same signature (copies) collapsed into one node, in item order."""

    first_item: Int64Array  # per node: position (among the candidates) of its first image
    node_of_item: Int64Array  # per candidate: its node


def _collapse_identical(
    hash_indices: Int64Array, rows: npt.NDArray[np.uint8] | None, found: npt.NDArray[np.bool_]
) -> _Nodes:
    """`hash_indices` is (candidates, 2): the indices of each candidate's whole-view and inner-view hashes."""
    index_bytes = np.ascontiguousarray(hash_indices, dtype=np.int64).view(np.uint8).reshape(found.size, 16)
    keys = np.concatenate([index_bytes, found[:, None]], axis=1)
    if rows is not None:
        keys = np.concatenate([keys, rows], axis=1)
    packed = np.ascontiguousarray(keys).view(np.dtype((np.void, keys.shape[1]))).reshape(-1)
    _, first, inverse = np.unique(packed, return_index=True, return_inverse=True)
    order = np.argsort(first, kind="stable")  # number nodes by their first image, so leaders come first
    rank = np.empty(order.size, dtype=np.int64)
    rank[order] = np.arange(order.size)
    return _Nodes(first[order].astype(np.int64), rank[inverse.reshape(-1)])


def _normalised(rows: npt.NDArray[np.uint8]) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    """Each view of each row centred and scaled to unit length (so a dot product is a correlation), shaped
    (rows, views, view length), and per row the mean colour of its whole view where that view is flat (NaN
    where it is not), shaped (rows, channels)."""
    view_count = max(1, rows.shape[1] // SIGNATURE_VIEW_LENGTH) if rows.shape[1] % SIGNATURE_VIEW_LENGTH == 0 else 1
    centred = rows.reshape(rows.shape[0], view_count, rows.shape[1] // view_count).astype(np.float32)
    whole = centred[:, 0, :]
    channels = 3 if whole.shape[1] % 3 == 0 else 1
    colour = whole.reshape(whole.shape[0], whole.shape[1] // channels, channels).mean(axis=1)
    centred -= centred.mean(axis=2, keepdims=True)
    norms = np.linalg.norm(centred, axis=2)
    flat_views = norms < _FLAT_STD * np.sqrt(max(centred.shape[2], 1))
    centred /= np.where(flat_views, np.float32(1.0), norms)[:, :, None]
    centred *= ~flat_views[:, :, None]
    return centred, np.where(flat_views[:, :1], colour, np.float32(np.nan)).astype(np.float32)


def _best_correlation(
    first: npt.NDArray[np.float32],
    first_flat: npt.NDArray[np.float32],
    second: npt.NDArray[np.float32],
    second_flat: npt.NDArray[np.float32],
) -> npt.NDArray[np.float32]:
    """Row-wise (broadcasting) best correlation of whole view with whole view, or whole with the other's inner;
    two flat pictures (`*_flat`: colour, NaN when not flat) have no pattern to correlate: 1.0 when their colours
    are within _FLAT_LEVELS, else 0.0."""
    best = np.einsum("...j,...j->...", first[..., 0, :], second[..., 0, :])
    for view in range(1, min(first.shape[-2], second.shape[-2])):
        best = np.maximum(best, np.einsum("...j,...j->...", first[..., 0, :], second[..., view, :]))
        best = np.maximum(best, np.einsum("...j,...j->...", first[..., view, :], second[..., 0, :]))
    both_flat = ~np.isnan(first_flat[..., 0]) & ~np.isnan(second_flat[..., 0])
    with np.errstate(invalid="ignore"):
        alike = np.abs(first_flat - second_flat).max(axis=-1) <= _FLAT_LEVELS
    return np.where(both_flat, alike.astype(np.float32), best).astype(np.float32)


@dataclass(frozen=True, eq=False)
class _Adjacency:
    """Neighbouring distinct hashes (within the threshold) of each distinct hash, as compressed rows."""

    starts: Int64Array
    targets: Int64Array

    @classmethod
    def of_pairs(cls, node_count: int, first: Int64Array, second: Int64Array) -> _Adjacency:
        sources = np.concatenate([first, second])
        targets = np.concatenate([second, first])
        order = np.argsort(sources, kind="stable")
        starts = np.zeros(node_count + 1, dtype=np.int64)
        np.cumsum(np.bincount(sources, minlength=node_count), out=starts[1:])
        return cls(starts, targets[order].astype(np.int64))

    def of(self, node: int) -> Int64Array:
        return self.targets[self.starts[node] : self.starts[node + 1]]


class _Leaders:
    """Leader clustering: each node, in order, joins the best verified leader near one of its hashes or leads a
    new group. Only leaders are looked up by hash: a member's hash is never a way in, so groups cannot chain."""

    def __init__(
        self, hashes: UInt64Array, neighbours: _Adjacency, thresholds: tuple[int, int], min_similarity: float
    ) -> None:
        self.hashes = hashes
        self.neighbours = neighbours
        self.threshold, self.reach = thresholds
        self.min_similarity = np.float32(min_similarity)
        self.checked = 0
        self.found: npt.NDArray[np.bool_] = np.zeros(0, dtype=bool)

    def assign(
        self, node_keys: Int64Array, rows: npt.NDArray[np.uint8] | None, found: npt.NDArray[np.bool_]
    ) -> tuple[Int64Array, int]:
        """Per node (whole-view and inner-view hash indices, shape (nodes, 2)) its leader node (itself when it
        leads), and how many nodes hit MAX_REPRESENTATIVES_CHECKED."""
        normed, flat = _normalised(rows) if rows is not None else (None, None)
        self.found = found
        leader = np.arange(node_keys.shape[0], dtype=np.int64)
        # Per distinct hash, the leaders having it as either view (dict as an ordered set).
        leaders_at: dict[int, dict[int, None]] = {}
        capped = 0
        for node, (full, inner) in enumerate(node_keys.tolist()):
            near = [full, *self.neighbours.of(full).tolist()]
            if inner != full:
                near += [inner, *self.neighbours.of(inner).tolist()]
            # Sorted, so that ties go to the oldest group; past the cap, the newest groups are checked.
            options = sorted(set(chain.from_iterable(leaders_at.get(other, ()) for other in near)))
            if len(options) > MAX_REPRESENTATIVES_CHECKED:
                options, capped = options[-MAX_REPRESENTATIVES_CHECKED:], capped + 1
            chosen = self._best(node, np.asarray(options, dtype=np.int64), node_keys, normed, flat)
            if chosen is None:
                leaders_at.setdefault(full, {})[node] = None
                leaders_at.setdefault(inner, {})[node] = None
            else:
                leader[node] = chosen
        return leader, capped

    def _best(
        self,
        node: int,
        options: Int64Array,
        node_keys: Int64Array,
        normed: npt.NDArray[np.float32] | None,
        flat: npt.NDArray[np.float32] | None,
    ) -> int | None:
        if options.size == 0:
            return None
        self.checked += options.size
        own = self.hashes[node_keys[node]]
        theirs = self.hashes[node_keys[options]]
        # The closest of whole/whole, whole/inner, inner/whole and inner/inner.
        distances = np.bitwise_count(theirs[:, :, None] ^ own[None, None, :]).min(axis=(1, 2))
        accepted = distances <= self.threshold
        score = -distances.astype(np.float32)
        if normed is not None and flat is not None:
            verifiable = self.found[options] & self.found[node]
            correlation = _best_correlation(normed[node][None], flat[node][None], normed[options], flat[options])
            # Verified partners first; a partner without a signature is ranked by its hash distance after them.
            score = np.where(verifiable, correlation, score - HASH_BITS)
            needed = np.where(distances <= self.threshold, self.min_similarity, np.float32(REACH_MIN_SIMILARITY))
            accepted = np.where(verifiable, (distances <= self.reach) & (correlation >= needed), accepted)
        if not accepted.any():
            return None
        return int(options[accepted][np.argmax(score[accepted])])


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
