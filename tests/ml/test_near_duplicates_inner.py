"""Near-duplicate grouping with a second, inner-view hash per image, and with the verified reach beyond the
threshold: cropped copies are found, and groups still never chain."""

from __future__ import annotations

import io
from itertools import product

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image as PILImage
from sklearn.datasets import load_sample_images

from app.ml.images import SIGNATURE_LENGTH, dhash64, encode_thumbnail, inner_dhash64, shrink, thumbnail_signature
from app.ml.near_duplicates import DEFAULT_HAMMING_THRESHOLD, VERIFIED_REACH, group_near_duplicates
from tests.ml.test_near_duplicates import clustered_hashes

MASK = (1 << 64) - 1


def _distance(first: tuple[int, int], second: tuple[int, int]) -> int:
    """The closest of whole/whole, whole/inner, inner/whole and inner/inner."""
    return min(((a ^ b) & MASK).bit_count() for a, b in product(first, second))


def reference_leaders(keys: list[tuple[int, int] | None], threshold: int) -> list[int]:
    """Plain-Python leader clustering over (whole, inner) hash pairs (None: no hash): in order, an image joins
    the closest (then oldest) representative within `threshold` bits by any view pair, else leads a group; an
    image with the same two hashes as an earlier one goes where that one went."""
    leader_of: dict[int, int] = {}
    for item, key in enumerate(keys):
        if key is None:
            continue
        earlier = [other for other in leader_of if keys[other] == key]
        if earlier:
            leader_of[item] = leader_of[earlier[0]]
            continue
        leaders = {leader for leader in leader_of.values()}
        verified = [(_distance(key, keys[leader]), leader) for leader in leaders]  # type: ignore[arg-type]
        verified = [(distance, leader) for distance, leader in verified if distance <= threshold]
        leader_of[item] = min(verified)[1] if verified else item
    group_keys = [leader_of.get(item, len(keys) + item) for item in range(len(keys))]
    numbering: dict[int, int] = {}
    return [numbering.setdefault(key, len(numbering)) for key in group_keys]


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    count=st.integers(0, 100),
    cluster_count=st.integers(1, 10),
    max_flips=st.integers(0, 8),
    threshold=st.integers(0, 8),
    missing_share=st.sampled_from([0.0, 0.2]),
    inner_missing_share=st.sampled_from([0.0, 0.3, 1.0]),
)
def test_groups_match_a_brute_force_leader_clustering_over_both_views(
    seed: int,
    count: int,
    cluster_count: int,
    max_flips: int,
    threshold: int,
    missing_share: float,
    inner_missing_share: float,
) -> None:
    hashes = clustered_hashes(seed, count, cluster_count, max_flips)
    # Inner hashes from the same centres, so that whole/inner matches across images occur.
    inner = np.random.default_rng(seed + 2).permutation(clustered_hashes(seed + 3, count, cluster_count, max_flips))
    rng = np.random.default_rng(seed + 1)
    missing = rng.random(count) < missing_share
    inner_missing = rng.random(count) < inner_missing_share
    whole_values = [int(value) for value in hashes.view(np.uint64)]
    inner_values = [int(value) for value in inner.view(np.uint64)]
    keys: list[tuple[int, int] | None] = [
        None
        if missing[item]
        else (whole_values[item], whole_values[item] if inner_missing[item] else inner_values[item])
        for item in range(count)
    ]

    grouping = group_near_duplicates(
        hashes, threshold=threshold, missing=missing, inner_hashes=inner, inner_missing=inner_missing
    )

    assert grouping.group_ids.tolist() == reference_leaders(keys, threshold)
    assert grouping.exact
    # No chains: every member is within the threshold of its group's first image by some view pair.
    for group in np.unique(grouping.group_ids):
        members = [keys[item] for item in np.flatnonzero(grouping.group_ids == group)]
        if members[0] is not None:
            assert all(_distance(members[0], member) <= threshold for member in members if member is not None)


def test_whole_to_inner_links_do_not_chain() -> None:
    # b's whole view is 3 bits from a's inner view, c's whole view 3 bits from b's inner view; a and c are far.
    a_whole, a_inner = 0, 0xFFFF
    b_whole, b_inner = a_inner ^ 0b111, 0xFFFF << 24
    c_whole, c_inner = b_inner ^ (0b111 << 40), 0xFFFF << 44
    whole = np.asarray([a_whole, b_whole, c_whole], dtype=np.int64)
    inner = np.asarray([a_inner, b_inner, c_inner], dtype=np.int64)
    same = np.full((3, SIGNATURE_LENGTH), 7, dtype=np.uint8)
    same[:, ::2] = 200  # one pattern for all three: only the hashes keep c out

    assert group_near_duplicates(whole, inner_hashes=inner, threshold=4).group_ids.tolist() == [0, 0, 1]
    with_signatures = group_near_duplicates(whole, inner_hashes=inner, threshold=4, signatures=same)
    assert with_signatures.group_ids.tolist() == [0, 0, 1]
    assert group_near_duplicates(whole, threshold=4).group_ids.tolist() == [0, 1, 2]


def _ingest_view(picture: PILImage.Image) -> tuple[int, int, np.ndarray]:
    uploaded = io.BytesIO()
    picture.convert("RGB").save(uploaded, format="JPEG", quality=90)
    thumbnail = shrink(PILImage.open(uploaded), max_side=256)
    signature = thumbnail_signature(encode_thumbnail(thumbnail))
    assert signature is not None
    return dhash64(thumbnail), inner_dhash64(thumbnail), signature


def test_a_cropped_copy_joins_its_photo_through_the_inner_hash() -> None:
    views, origins = [], []
    for origin, array in enumerate(load_sample_images().images):
        photo = PILImage.fromarray(array)
        width, height = photo.size
        cropped = photo.crop((width // 20, height // 20, width - width // 20, height - height // 20))  # 5 % a side
        views += [_ingest_view(photo), _ingest_view(cropped)]
        origins += [origin, origin]
    whole = np.asarray([view[0] for view in views], dtype=np.int64)
    inner = np.asarray([view[1] for view in views], dtype=np.int64)
    signatures = np.stack([view[2] for view in views])
    # The whole views are too far apart for the search to be sure to meet them, even with the verified reach.
    whole_distances = np.bitwise_count(whole[0::2].view(np.uint64) ^ whole[1::2].view(np.uint64))
    assert (whole_distances > VERIFIED_REACH * DEFAULT_HAMMING_THRESHOLD).all()

    assert group_near_duplicates(whole, signatures=signatures).group_ids.tolist() == [0, 1, 2, 3]
    grouping = group_near_duplicates(whole, inner_hashes=inner, signatures=signatures)
    assert grouping.group_ids.tolist() == origins


def test_beyond_the_threshold_only_verified_signatures_join() -> None:
    rng = np.random.default_rng(4)
    hashes = rng.integers(0, 2**63, size=200, dtype=np.int64)
    hashes[1] = hashes[0] ^ 0b111111  # 6 bits apart, all in one chunk: the search compares them
    pattern = rng.integers(0, 256, size=SIGNATURE_LENGTH).astype(np.uint8)
    signatures = np.stack([rng.integers(0, 256, size=SIGNATURE_LENGTH).astype(np.uint8) for _ in hashes])
    signatures[0] = signatures[1] = pattern

    joined = group_near_duplicates(hashes, signatures=signatures).group_ids
    assert joined[0] == joined[1]
    assert np.unique(joined).size == hashes.size - 1
    # Hash only, or without the reach, 6 bits is beyond the threshold of 4.
    assert group_near_duplicates(hashes).group_ids[1] != group_near_duplicates(hashes).group_ids[0]
    strict = group_near_duplicates(hashes, signatures=signatures, verified_reach=1).group_ids
    assert strict[0] != strict[1]
    # A different picture at that distance stays apart.
    signatures[1] = rng.integers(0, 256, size=SIGNATURE_LENGTH).astype(np.uint8)
    apart = group_near_duplicates(hashes, signatures=signatures).group_ids
    assert apart[0] != apart[1]


def test_an_image_whose_own_two_views_are_close_is_no_candidate() -> None:
    rng = np.random.default_rng(2)
    hashes = rng.integers(0, 2**63, size=1_000, dtype=np.int64)
    hashes[10] = hashes[500] ^ 1
    inner = hashes ^ 0b11  # every image's inner view is 2 bits from its whole view
    asked: list[list[int]] = []

    def load(items: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        asked.append(items.tolist())
        return np.full((items.size, SIGNATURE_LENGTH), 128, dtype=np.uint8), np.ones(items.size, dtype=bool)

    grouping = group_near_duplicates(hashes, inner_hashes=inner, signatures=load)

    assert asked == [[10, 500]]
    assert np.unique(grouping.group_ids).size == 999
