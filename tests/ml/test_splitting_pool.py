"""Images labelled from the unlabeled pool: a new placement puts them in train, assigned images never move."""

from __future__ import annotations

import dataclasses

import numpy as np

from app.ml.splitting import SUBSETS, PreviousAssignment, SplitInput, SplitParams, compute_split, extend_split

TRAIN, DEV, TEST = SUBSETS.index("train"), SUBSETS.index("dev"), SUBSETS.index("test")


def _input(size: int, *, sources: np.ndarray | None = None, train_only: np.ndarray | None = None) -> SplitInput:
    rng = np.random.default_rng(0)
    return SplitInput(
        image_ids=np.arange(1, size + 1),
        source_codes=np.zeros(size, dtype=np.int64) if sources is None else sources,
        source_names=("phone", "web"),
        label_codes=rng.integers(0, 3, size),
        label_names=("a", "b", "c"),
        train_only=train_only,
    )


def _subset_of(result, image_ids: np.ndarray) -> np.ndarray:  # type: ignore[no-untyped-def]
    position = {int(i): int(s) for i, s in zip(result.image_ids, result.subsets, strict=True)}
    return np.array([position[int(i)] for i in image_ids])


def test_pool_labelled_images_join_train_and_nothing_assigned_moves() -> None:
    params = SplitParams(seed=3)
    first = compute_split(_input(300), params)
    previous = PreviousAssignment(image_ids=first.image_ids, subsets=first.subsets)
    train_only = np.zeros(400, dtype=bool)
    train_only[300:] = True  # the 100 images labelled from the pool since
    extended = extend_split(_input(400, train_only=train_only), previous, params)
    assert np.all(_subset_of(extended, np.arange(301, 401)) == TRAIN)
    assert np.array_equal(_subset_of(extended, first.image_ids), first.subsets)
    # Without the rule, the same new images would partly go to dev/test (the rule is what keeps them out).
    unruled = extend_split(_input(400), previous, params)
    assert np.isin(_subset_of(unruled, np.arange(301, 401)), [DEV, TEST]).any()


def test_target_source_pool_images_are_left_to_the_split_rule() -> None:
    params = SplitParams(seed=1, target_source="phone", target_train_fraction=0.5)
    sources = np.array([0, 1] * 200)
    first = compute_split(dataclasses.replace(_input(300), source_codes=sources[:300]), params)
    previous = PreviousAssignment(image_ids=first.image_ids, subsets=first.subsets)
    # The caller marks only other-source pool images train-only (app/splits/service.py::_train_only).
    train_only = np.zeros(400, dtype=bool)
    train_only[300:] = sources[300:] == 1
    extended = extend_split(_input(400, sources=sources, train_only=train_only), previous, params)
    new_ids = np.arange(301, 401)
    placed = _subset_of(extended, new_ids)
    assert np.all(placed[sources[300:] == 1] == TRAIN)
    assert np.isin(placed[sources[300:] == 0], [DEV, TEST]).any()
    assert np.array_equal(_subset_of(extended, first.image_ids), first.subsets)
