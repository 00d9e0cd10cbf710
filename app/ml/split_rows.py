"""The rows of a split in image-id order with their duplicate groups, and the small array helpers the assignment
and the summary share."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from app.ml.split_types import (
    BoolArray,
    Int64Array,
    SplitInput,
    SplitWarning,
)


@dataclass(frozen=True, eq=False)
class Rows:
    """The input rows in image-id order, with duplicate groups numbered 0..G-1."""

    image_ids: Int64Array
    sources: Int64Array
    labels: Int64Array
    group_index: Int64Array
    group_keys: Int64Array
    group_sizes: Int64Array
    # Class and stratum (class * sources + source) of each group's representative, its smallest image id.
    group_labels: Int64Array
    group_strata: Int64Array
    imported: Int64Array | None
    source_names: tuple[str, ...]
    label_names: tuple[str, ...]
    train_only: BoolArray

    @property
    def size(self) -> int:
        return self.image_ids.size

    @property
    def group_count(self) -> int:
        return self.group_sizes.size


@dataclass(frozen=True, eq=False)
class Assignment:
    subsets: Int64Array
    kept_rank: Int64Array  # rank in the previous stored order; -1 for rows placed by this run
    is_target: BoolArray
    target_mode: bool
    warnings: list[SplitWarning]


def round_half_up(value: float) -> int:
    return math.floor(value + 0.5)


def warning(code: str, message: str) -> SplitWarning:
    return {"code": code, "message": message}


def stable_order(keys: Int64Array) -> Int64Array:
    """np.argsort(keys, kind="stable"), faster when (key, row) pairs pack into one 63-bit word: one plain sort."""
    row_bits = max(1, (keys.size - 1).bit_length())
    if keys.size and keys.min() >= 0 and int(keys.max()) < 1 << (63 - row_bits):
        packed = np.sort((keys << row_bits) | np.arange(keys.size, dtype=np.int64))
        return packed & ((1 << row_bits) - 1)
    return np.argsort(keys, kind="stable")


def run_starts(sorted_values: Int64Array) -> BoolArray:
    """True where a run of equal values starts."""
    starts = np.ones(sorted_values.size, dtype=bool)
    np.not_equal(sorted_values[1:], sorted_values[:-1], out=starts[1:])
    return starts


def rows_in_id_order(data: SplitInput) -> Rows:
    input_ids = np.asarray(data.image_ids, dtype=np.int64)
    order = stable_order(input_ids)
    image_ids = input_ids[order]
    if np.any(image_ids[1:] == image_ids[:-1]):
        raise ValueError("image_ids must be unique")
    if data.group_ids is None:
        group_index = np.arange(image_ids.size, dtype=np.int64)
        group_keys, group_first_row = image_ids, group_index
    else:
        group_ids = np.asarray(data.group_ids, dtype=np.int64)[order]
        rows_by_group = stable_order(group_ids)
        sorted_ids = group_ids[rows_by_group]
        starts_group = run_starts(sorted_ids)
        group_keys = sorted_ids[starts_group]
        group_first_row = rows_by_group[starts_group]
        group_index = np.empty(image_ids.size, dtype=np.int64)
        group_index[rows_by_group] = np.cumsum(starts_group) - 1
    sources = np.asarray(data.source_codes, dtype=np.int64)[order]
    labels = np.asarray(data.label_codes, dtype=np.int64)[order]
    imported = None if data.imported_subsets is None else np.asarray(data.imported_subsets, dtype=np.int64)[order]
    train_only = np.zeros(image_ids.size, dtype=bool) if data.train_only is None else np.asarray(data.train_only)[order]
    return Rows(
        image_ids=image_ids,
        sources=sources,
        labels=labels,
        group_index=group_index,
        group_keys=group_keys,
        group_sizes=np.bincount(group_index, minlength=group_keys.size).astype(np.int64),
        group_labels=labels[group_first_row],
        group_strata=labels[group_first_row] * len(data.source_names) + sources[group_first_row],
        imported=imported,
        source_names=tuple(data.source_names),
        label_names=tuple(data.label_names),
        train_only=train_only.astype(bool),
    )
