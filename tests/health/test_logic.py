"""The pure data-health rules: each flags what it should, scores worst first, and leaves unmeasured rows alone."""

from __future__ import annotations

import numpy as np

from app.health import logic


def _stats(**columns: list[float]) -> logic.Stats:
    size = len(next(iter(columns.values())))
    base = {
        "brightness": [0.5] * size,
        "contrast": [0.2] * size,
        "sharpness": [5e-3] * size,
        "entropy": [4.5] * size,
        "colourfulness": [0.2] * size,
        "width": [640.0] * size,
        "height": [480.0] * size,
    }
    base.update(columns)
    return logic.Stats(**{name: np.asarray(values, dtype=np.float64) for name, values in base.items()})


def test_dark_and_light_flag_only_the_extremes_and_skip_unmeasured() -> None:
    stats = _stats(brightness=[0.05, 0.15, 0.5, 0.9, 0.97, float("nan")])
    dark = logic.dark(stats)
    assert dark.positions.tolist() == [0, 1]
    assert dark.scores[0] > dark.scores[1]  # darker is worse
    assert logic.light(stats).positions.tolist() == [3, 4]
    assert stats.measured.tolist() == [True] * 5 + [False]


def test_blurry_needs_both_the_absolute_cut_and_to_be_far_below_the_dataset() -> None:
    sharp = [5e-3] * 10
    stats = _stats(sharpness=[*sharp, 3e-5, 2e-4])
    assert logic.blurry(stats).positions.tolist() == [10, 11]
    assert logic.blurry(stats).scores[0] > logic.blurry(stats).scores[1]
    # A dataset where every picture is soft (line drawings, say): nothing is far below its typical image.
    all_soft = _stats(sharpness=[1.5e-4, 1.6e-4, 1.4e-4, 1.5e-4])
    assert logic.blurry(all_soft).positions.size == 0


def test_low_information_grayscale_and_aspect_ratio() -> None:
    stats = _stats(
        entropy=[0.2, 4.0, 5.0, 0.0],
        colourfulness=[0.2, 0.005, 0.3, 0.0],
        width=[640, 640, 100, 0],
        height=[480, 480, 400, 0],
    )
    assert logic.low_information(stats).positions.tolist() == [0, 3]
    assert logic.grayscale(stats).positions.tolist() == [1, 3]
    odd = logic.odd_aspect_ratio(stats)
    assert odd.positions.tolist() == [2]  # 1:4; the row without a size is not judged
    assert np.isclose(odd.scores[0], 0.75)


def test_odd_size_is_relative_to_the_dataset_median() -> None:
    stats = _stats(width=[640] * 8 + [32, 8000], height=[480] * 8 + [24, 8000])
    assert logic.odd_size(stats).positions.tolist() == [8, 9]
    # The same tiny picture in a dataset of tiny pictures is not odd.
    tiny = _stats(width=[32] * 5, height=[24] * 5)
    assert logic.odd_size(tiny).positions.size == 0


def test_duplicate_groups_near_only_and_label_conflicts() -> None:
    exact = np.array([0, 0, 2, 3, 4, 5])  # images 0 and 1 are one picture
    near = np.array([7, 7, 8, 8, 8, 9])  # {0,1}, {2,3,4}, {5}
    copies = logic.duplicate_groups(exact)
    assert copies.positions.tolist() == [0, 1] and copies.scores.tolist() == [2.0, 2.0]
    near_only = logic.near_only(near, exact)
    assert near_only.positions.tolist() == [2, 3, 4]  # the {0,1} group is only one picture
    assert near_only.groups is not None and near_only.groups.tolist() == [2, 2, 2]
    labels = np.array([1, 2, 1, 1, 3, 1])
    conflicts = logic.label_conflicts(near, labels)
    assert conflicts.positions.tolist() == [0, 1, 2, 3, 4]
    # In {2,3,4} labelled 1,1,3: the odd one out disagrees with two of three.
    by_position = dict(zip(conflicts.positions.tolist(), conflicts.scores.tolist(), strict=True))
    assert np.isclose(by_position[4], 2 / 3) and np.isclose(by_position[2], 1 / 3)
    agreeing = logic.label_conflicts(near, np.array([1, 1, 2, 2, 2, 5]))
    assert agreeing.positions.size == 0


def test_knn_distance_finds_the_image_far_from_every_other() -> None:
    rng = np.random.default_rng(0)
    centre = rng.normal(size=32)
    cluster = centre + 0.1 * rng.normal(size=(60, 32))
    stranger = rng.normal(size=(1, 32)) * 3
    vectors = np.vstack([cluster, stranger])
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    distances = logic.knn_mean_distance(vectors, k=5, chunk=16)
    assert int(np.argmax(distances)) == 60
    assert logic.outliers(distances).positions.tolist() == [60]
    assert logic.outliers(distances[:10]).positions.size == 0  # too few images to judge


def test_examples_take_the_worst_and_one_per_group() -> None:
    flagged = logic.Flagged(np.array([3, 4, 5, 6]), np.array([2.0, 2.0, 3.0, 1.0]), np.array([3, 3, 5, 6]))
    assert logic.examples(flagged, 8).tolist() == [5, 3, 6]
    assert logic.examples(flagged, 1).tolist() == [5]
    plain = logic.Flagged(np.array([1, 2, 3]), np.array([0.1, 0.9, 0.5]))
    assert logic.examples(plain, 2).tolist() == [2, 3]
