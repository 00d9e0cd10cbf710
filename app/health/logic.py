"""Data-health rules: which images are dark, light, blurry, ... and how badly, as pure functions over arrays.

Every check returns a `Flagged` (row positions and a severity score, higher = worse, comparable within one type).
Thresholds follow CleanVision's issue types. Dark, light, low information, grayscale and odd aspect ratio are
absolute in CleanVision and here; odd size is relative to the dataset's median size (as in CleanVision); blurry is
absolute with a relative guard (a dataset of line drawings is not "all blurry"); outliers are relative to the
dataset's own spread of nearest-neighbour distances. Statistics are the ones `app.ml.image_stats.measure` records.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

ISSUE_TYPES = (
    "unmeasured",
    "exact_duplicate",
    "near_duplicate",
    "label_conflict",
    "outlier",
    "dark",
    "light",
    "blurry",
    "low_information",
    "grayscale",
    "odd_aspect_ratio",
    "odd_size",
)
STAT_ISSUES = ("dark", "light", "blurry", "low_information", "grayscale")
# Which of an image's findings names it on the map: the order of ISSUE_TYPES (copies and conflicts first), except
# that "unmeasured" (no statistics, not a fault of the picture) yields to any real finding.
_WORST_FIRST = (*ISSUE_TYPES[1:], ISSUE_TYPES[0])


def worst_issue(types: list[str]) -> str:
    """The one issue type of an image's findings that the map colours it by."""
    return min(types, key=lambda name: _WORST_FIRST.index(name) if name in _WORST_FIRST else len(_WORST_FIRST))


# Mean luminance (0..1). CleanVision flags dark below 0.32-0.37 of its 99th-percentile brightness and light above
# 0.95 of its 5th percentile; on the mean, which sits well inside that range, these are the equivalent cut-offs.
DARK_BRIGHTNESS = 0.18
LIGHT_BRIGHTNESS = 0.88
# Variance of the Laplacian at 128 px (image_stats.MEASURE_SIDE), luminance 0..1: measured on the demo pictures,
# sharp ones give 6e-4 .. 7e-3 and the same after a Gaussian blur of radius 2 give 2e-5 .. 8e-5.
BLURRY_SHARPNESS = 2.5e-4
# ... and an image is only blurry if it is also far less sharp than the dataset's typical image.
BLURRY_OF_MEDIAN = 0.25
# Entropy of the 64-bin luminance histogram, bits (max 6): cleanlab Datalab's low-information cut is 0.15 of the
# range (CleanVision's own 0.3 flags plain shapes on a flat background, which is most of the demo set).
LOW_INFORMATION_BITS = 0.15 * 6.0
# Mean channel spread (0..1): a grey picture saved as RGB (JPEG chroma noise included) stays below this.
GRAYSCALE_SPREAD = 0.02
# min(w/h, h/w): CleanVision's default.
ODD_ASPECT_RATIO = 0.5
# sqrt(w*h) this many times above or below the dataset median: CleanVision's default.
ODD_SIZE_FACTOR = 10.0
# Outliers: mean cosine distance to the K nearest neighbours above Q3 + OUTLIER_IQR * IQR of the dataset's own
# distances (Tukey's "far out" fence), so a tight dataset and a diverse one are each judged against themselves.
OUTLIER_NEIGHBOURS = 10
OUTLIER_IQR = 3.0
# Too few images for a spread of distances to mean anything.
OUTLIER_MIN_IMAGES = 20

# Similarities computed at once by the exact kNN (8M float32 = 32 MB).
_BLOCK_ELEMENTS = 8 * 2**20

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]


@dataclass(frozen=True)
class Flagged:
    """Positions (into the arrays checked) of the images that have the issue, each with its severity score;
    `groups` (same length, or None) puts images of one duplicate or conflict group together."""

    positions: IntArray
    scores: FloatArray
    groups: IntArray | None = None

    @classmethod
    def none(cls) -> Flagged:
        return cls(np.zeros(0, np.int64), np.zeros(0, np.float64))


@dataclass(frozen=True)
class Stats:
    """Per-image statistics (NaN where an image was not measured) and sizes, one row per image."""

    brightness: FloatArray
    contrast: FloatArray
    sharpness: FloatArray
    entropy: FloatArray
    colourfulness: FloatArray
    width: FloatArray
    height: FloatArray

    @property
    def measured(self) -> npt.NDArray[np.bool_]:
        return ~np.isnan(self.brightness)


def _where(mask: npt.NDArray[np.bool_], scores: FloatArray) -> Flagged:
    positions = np.flatnonzero(mask).astype(np.int64)
    return Flagged(positions, np.asarray(scores, dtype=np.float64)[positions])


def dark(stats: Stats) -> Flagged:
    with np.errstate(invalid="ignore"):
        return _where(stats.brightness < DARK_BRIGHTNESS, 1.0 - stats.brightness)


def light(stats: Stats) -> Flagged:
    with np.errstate(invalid="ignore"):
        return _where(stats.brightness > LIGHT_BRIGHTNESS, stats.brightness)


def blurry(stats: Stats) -> Flagged:
    sharpness = stats.sharpness
    measured = ~np.isnan(sharpness)
    if not measured.any():
        return Flagged.none()
    median = float(np.median(sharpness[measured]))
    with np.errstate(invalid="ignore"):
        mask = (sharpness < BLURRY_SHARPNESS) & (sharpness < BLURRY_OF_MEDIAN * median)
    # Severity: how many times less sharp than the threshold, on a log scale (0 at the threshold).
    scores = np.log10(BLURRY_SHARPNESS / np.maximum(np.nan_to_num(sharpness, nan=1.0), 1e-12))
    return _where(mask, scores)


def low_information(stats: Stats) -> Flagged:
    with np.errstate(invalid="ignore"):
        return _where(stats.entropy < LOW_INFORMATION_BITS, 1.0 - stats.entropy / 6.0)


def grayscale(stats: Stats) -> Flagged:
    with np.errstate(invalid="ignore"):
        return _where(stats.colourfulness < GRAYSCALE_SPREAD, 1.0 - stats.colourfulness)


def _known_sizes(stats: Stats) -> npt.NDArray[np.bool_]:
    return (stats.width > 0) & (stats.height > 0)


def odd_aspect_ratio(stats: Stats) -> Flagged:
    known = _known_sizes(stats)
    width, height = np.where(known, stats.width, 1.0), np.where(known, stats.height, 1.0)
    ratio = np.minimum(width / height, height / width)
    return _where(known & (ratio < ODD_ASPECT_RATIO), 1.0 - ratio)


def odd_size(stats: Stats) -> Flagged:
    known = _known_sizes(stats)
    if not known.any():
        return Flagged.none()
    side = np.sqrt(np.where(known, stats.width * stats.height, 1.0))
    median = float(np.median(side[known]))
    distance = np.abs(np.log10(side / median))  # decades away from the median size
    return _where(known & (distance > np.log10(ODD_SIZE_FACTOR)), distance)


def stat_issues(stats: Stats) -> dict[str, Flagged]:
    """Every statistics- and size-based issue, by type."""
    return {
        "dark": dark(stats),
        "light": light(stats),
        "blurry": blurry(stats),
        "low_information": low_information(stats),
        "grayscale": grayscale(stats),
        "odd_aspect_ratio": odd_aspect_ratio(stats),
        "odd_size": odd_size(stats),
    }


def first_members(group_ids: npt.ArrayLike) -> IntArray:
    """Any grouping (equal id = same group) as each image's group's first position: a stable group key."""
    groups = np.asarray(group_ids, dtype=np.int64)
    if groups.size == 0:
        return groups
    _, first, inverse = np.unique(groups, return_index=True, return_inverse=True)
    return first[inverse.reshape(-1)].astype(np.int64)


def duplicate_groups(group_ids: npt.ArrayLike) -> Flagged:
    """Members of groups with more than one image: score = group size (bigger groups first); `groups` holds
    each member's group's first position."""
    groups = first_members(group_ids)
    if groups.size == 0:
        return Flagged.none()
    _, inverse, counts = np.unique(groups, return_inverse=True, return_counts=True)
    sizes = counts[inverse]
    positions = np.flatnonzero(sizes > 1).astype(np.int64)
    return Flagged(positions, sizes[positions].astype(np.float64), groups[positions])


def near_only(near_group_ids: npt.ArrayLike, exact_group_ids: npt.ArrayLike) -> Flagged:
    """Near-duplicate groups that are more than one exact copy: a group whose members are all one picture (exact
    copies) is reported as exact duplicates only."""
    exact = first_members(exact_group_ids)
    flagged = duplicate_groups(near_group_ids)
    if flagged.positions.size == 0:
        return flagged
    groups = flagged.groups
    assert groups is not None
    pairs = np.unique(np.stack([groups, exact[flagged.positions]], axis=1), axis=0)  # (group, picture) pairs
    group_values, pictures = np.unique(pairs[:, 0], return_counts=True)
    keep = pictures[np.searchsorted(group_values, groups)] > 1
    return Flagged(flagged.positions[keep], flagged.scores[keep], groups[keep])


def label_conflicts(group_ids: npt.ArrayLike, label_ids: npt.ArrayLike) -> Flagged:
    """Members of (near-)duplicate groups whose images carry more than one label. Score: the share of the group
    that disagrees with the image's own label (the odd one out in a group of five scores 0.8)."""
    groups = first_members(group_ids)
    labels = np.asarray(label_ids, dtype=np.int64)
    if groups.size == 0:
        return Flagged.none()
    _, group_index, group_sizes = np.unique(groups, return_inverse=True, return_counts=True)
    pairs, pair_index, pair_counts = np.unique(
        np.stack([group_index, labels], axis=1), axis=0, return_inverse=True, return_counts=True
    )
    labels_per_group = np.bincount(pairs[:, 0], minlength=group_sizes.size)
    conflicted = labels_per_group[group_index] > 1
    positions = np.flatnonzero(conflicted).astype(np.int64)
    same_label = pair_counts[pair_index.reshape(-1)][positions]
    scores = 1.0 - same_label / group_sizes[group_index][positions]
    return Flagged(positions, scores.astype(np.float64), groups[positions])


def knn_mean_distance(unit_vectors: npt.ArrayLike, k: int = OUTLIER_NEIGHBOURS, *, chunk: int = 2048) -> FloatArray:
    """Each row's mean cosine distance to its `k` nearest other rows (exact, in chunks of rows)."""
    rows = np.asarray(unit_vectors, dtype=np.float32)
    count = rows.shape[0]
    chunk = max(1, min(chunk, _BLOCK_ELEMENTS // max(count, 1)))  # a block of similarities stays ~32 MB
    neighbours = min(k, count - 1)
    if neighbours < 1:
        return np.zeros(count, dtype=np.float64)
    result = np.empty(count, dtype=np.float64)
    for start in range(0, count, chunk):
        block = rows[start : start + chunk] @ rows.T
        block[np.arange(block.shape[0]), np.arange(start, start + block.shape[0])] = -np.inf  # not itself
        top = -np.partition(-block, neighbours - 1, axis=1)[:, :neighbours]
        result[start : start + block.shape[0]] = 1.0 - top.mean(axis=1)
    return result


def outliers(distances: npt.ArrayLike) -> Flagged:
    """Images whose kNN distance is far out in the dataset's own distribution (score = the distance)."""
    values = np.asarray(distances, dtype=np.float64)
    if values.size < OUTLIER_MIN_IMAGES:
        return Flagged.none()
    low, high = np.percentile(values, [25, 75])
    fence = high + OUTLIER_IQR * max(high - low, 1e-6)
    return _where(values > fence, values)


def examples(flagged: Flagged, count: int) -> IntArray:
    """Positions of the `count` worst cases (highest score, ties by position), one per group where grouped."""
    if flagged.positions.size == 0:
        return np.zeros(0, np.int64)
    order = np.lexsort((flagged.positions, -flagged.scores))
    if flagged.groups is not None:
        _, first = np.unique(flagged.groups[order], return_index=True)
        order = order[np.sort(first)]
    return flagged.positions[order[:count]]
