"""Duplicate grouping: exact against a brute-force reference, and bounded on large or degenerate inputs."""

from __future__ import annotations

import io
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image as PILImage
from PIL import ImageEnhance
from sklearn.datasets import load_sample_images

from app.ml.demo import generate_demo_dataset
from app.ml.images import SIGNATURE_LENGTH, dhash64, encode_thumbnail, shrink, thumbnail_signature
from app.ml.near_duplicates import (
    DEFAULT_HAMMING_THRESHOLD,
    group_duplicates,
    group_exact_duplicates,
    group_near_duplicates,
    merge_groupings,
    signature_similarity,
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


def reference_leaders(values: list[int], missing: list[bool], threshold: int) -> list[int]:
    """Plain-Python leader clustering: in order, an image joins the closest (then oldest) representative within
    `threshold` bits among the groups that have a member within `threshold` bits of it, else leads a new group;
    an image whose hash equals an earlier one's goes where that one went."""
    leader_of: dict[int, int] = {}
    for item, value in enumerate(values):
        if missing[item]:
            continue
        earlier = [other for other in leader_of if values[other] == value]
        if earlier:
            leader_of[item] = leader_of[earlier[0]]
            continue
        groups = {leader_of[other] for other in leader_of if (values[other] ^ value).bit_count() <= threshold}
        verified = [(((values[leader] ^ value).bit_count()), leader) for leader in groups]
        verified = [(distance, leader) for distance, leader in verified if distance <= threshold]
        leader_of[item] = min(verified)[1] if verified else item
    keys = [leader_of.get(item, len(values) + item) for item in range(len(values))]
    numbering: dict[int, int] = {}
    return [numbering.setdefault(key, len(numbering)) for key in keys]


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    count=st.integers(0, 120),
    cluster_count=st.integers(1, 12),
    max_flips=st.integers(0, 8),
    threshold=st.integers(0, 9),
    missing_share=st.sampled_from([0.0, 0.1, 0.5]),
)
def test_near_duplicate_groups_match_a_brute_force_leader_clustering(
    seed: int, count: int, cluster_count: int, max_flips: int, threshold: int, missing_share: float
) -> None:
    hashes = clustered_hashes(seed, count, cluster_count, max_flips)
    missing = np.random.default_rng(seed + 1).random(count) < missing_share
    values = [int(value) for value in hashes.view(np.uint64)]

    grouping = group_near_duplicates(hashes, threshold=threshold, missing=missing)

    assert grouping.group_ids.tolist() == reference_leaders(values, missing.tolist(), threshold)
    assert grouping.exact
    # No chains: every two members of a group are within twice the threshold.
    for group in np.unique(grouping.group_ids):
        members = [values[item] for item in np.flatnonzero(grouping.group_ids == group)]
        assert all((first ^ second).bit_count() <= 2 * threshold for first in members for second in members)


def test_a_chain_of_close_hashes_does_not_make_one_group() -> None:
    # a-b and b-c are 3 bits apart, a-c 6: connected components (the old rule) joined all three.
    a = 0
    b = a ^ 0b111
    c = b ^ (0b111 << 20)
    d = c ^ (0b111 << 40)
    grouping = group_near_duplicates(np.asarray([a, b, c, d], dtype=np.int64), threshold=4)
    assert grouping.group_ids.tolist() == [0, 0, 1, 1]


def _ingest_view(picture: PILImage.Image) -> tuple[int, np.ndarray]:
    """dHash of the thumbnail and the pixel signature of the stored thumbnail JPEG, as ingest and a split do."""
    uploaded = io.BytesIO()
    picture.convert("RGB").save(uploaded, format="JPEG", quality=90)
    thumbnail = shrink(PILImage.open(uploaded), max_side=256)
    signature = thumbnail_signature(encode_thumbnail(thumbnail))
    assert signature is not None
    return dhash64(thumbnail), signature


@pytest.fixture(scope="module")
def demo_views() -> tuple[np.ndarray, np.ndarray, list[str]]:
    demo = generate_demo_dataset(n_images=240, seed=0)
    views = [_ingest_view(PILImage.open(io.BytesIO(item.jpeg))) for item in demo]
    hashes = np.asarray([view[0] for view in views], dtype=np.int64)
    return hashes, np.stack([view[1] for view in views]), [item.true_label for item in demo]


def test_different_stripe_pictures_with_close_hashes_stay_apart(
    demo_views: tuple[np.ndarray, np.ndarray, list[str]],
) -> None:
    hashes, signatures, labels = demo_views
    stripes = np.flatnonzero(np.asarray(labels) == "stripes")
    unsigned = hashes.view(np.uint64)
    close_pairs = sum(
        int(np.count_nonzero(np.bitwise_count(unsigned[stripes] ^ unsigned[item]) <= DEFAULT_HAMMING_THRESHOLD)) - 1
        for item in stripes
    )
    assert close_pairs >= 20  # the hashes alone would pull many different stripe pictures together

    grouping = group_near_duplicates(hashes, signatures=signatures)

    sizes = np.unique(grouping.group_ids, return_counts=True)[1]
    assert sizes.max() <= 2, f"{(sizes > 1).sum()} groups, the largest of {sizes.max()} different pictures"


def test_edited_copies_of_a_photo_join_it_and_other_photos_stay_apart() -> None:
    photos = [PILImage.fromarray(array) for array in load_sample_images().images]
    pictures, origins = [], []
    for origin, photo in enumerate(photos):
        width, height = photo.size
        copies = [
            photo,
            photo.resize((width // 2, height // 2), PILImage.Resampling.BILINEAR),
            ImageEnhance.Brightness(photo).enhance(1.2),
            ImageEnhance.Brightness(photo).enhance(0.8),
            photo.crop((width // 100, height // 100, width - width // 100, height - height // 100)),
        ]
        pictures += copies
        origins += [origin] * len(copies)
    views = [_ingest_view(picture) for picture in pictures]
    hashes = np.asarray([view[0] for view in views], dtype=np.int64)

    grouping = group_near_duplicates(hashes, signatures=np.stack([view[1] for view in views]))

    assert grouping.group_ids.tolist() == origins


def test_a_signature_loader_is_asked_only_for_images_with_a_close_partner() -> None:
    rng = np.random.default_rng(2)
    hashes = rng.integers(0, 2**63, size=1_000, dtype=np.int64)
    hashes[10] = hashes[500] ^ 1
    flat = np.full(SIGNATURE_LENGTH, 128, dtype=np.uint8)
    asked: list[list[int]] = []

    def load(items: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        asked.append(items.tolist())
        return np.stack([flat] * items.size), np.asarray([item != 10 for item in items.tolist()])

    grouping = group_near_duplicates(hashes, signatures=load)

    assert asked == [[10, 500]]
    alone = group_near_duplicates(hashes[:5], signatures=np.zeros((5, SIGNATURE_LENGTH), dtype=np.uint8))
    assert alone.group_ids.tolist() == [0, 1, 2, 3, 4]
    # Image 10 has no signature: that pair is checked by its hash alone.
    assert grouping.group_ids[10] == grouping.group_ids[500]
    assert np.unique(grouping.group_ids).size == 999


def test_signature_similarity_ignores_brightness_and_tells_patterns_apart() -> None:
    ramp = np.tile(np.linspace(0, 200, SIGNATURE_LENGTH // 96, dtype=np.float32), 96)
    brighter = np.clip(ramp * 1.2 + 20, 0, 255)
    shuffled = np.random.default_rng(0).permutation(ramp)
    flat = np.full(SIGNATURE_LENGTH, 90, dtype=np.uint8)
    similarity = signature_similarity(
        np.stack([ramp, ramp, flat, flat, flat * 0]).astype(np.uint8),
        np.stack([brighter, shuffled, flat + 10, flat + 40, flat * 0 + 255]).astype(np.uint8),
    )
    assert similarity[0] > 0.99
    assert similarity[1] < 0.2
    # Flat pictures have no pattern: alike only when their colours are close (black is no copy of white).
    assert similarity[2] == 1.0
    assert similarity[3] == 0.0
    assert similarity[4] == 0.0


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
    # Bounded search still never chains: every member is within the threshold of its group's first image.
    unsigned = hashes.view(np.uint64)
    for grouping in (full, windowed):
        for group in np.unique(grouping.group_ids):
            members = unsigned[grouping.group_ids == group]
            assert np.bitwise_count(members ^ members[0]).max() <= 4


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
