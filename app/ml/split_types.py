"""The split's vocabulary: subset codes, parameters, the columnar input, the result and its summary, and the
checks and encoders that prepare the input. See splitting.py for the rules."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypedDict

import numpy as np
import numpy.typing as npt

from app.ml.arrays import BoolArray, Int64Array
from app.ml.near_duplicates import DEFAULT_HAMMING_THRESHOLD, MAX_HAMMING_THRESHOLD

SUBSETS: tuple[str, ...] = ("train", "train_dev", "dev", "test")
TRAIN, TRAIN_DEV, DEV, TEST = range(len(SUBSETS))
UNASSIGNED = -1
IMPORTED_SUBSET_ALIASES: dict[str, int] = {
    "train": TRAIN,
    "train_dev": TRAIN_DEV,
    "train-dev": TRAIN_DEV,
    "dev": DEV,
    "val": DEV,
    "valid": DEV,
    "validation": DEV,
    "test": TEST,
}
MIN_CLASS_IMAGES_FOR_DEV_AND_TEST = 3
# Accuracy assumed when judging whether dev can measure a 1-point difference (see _size_warnings).
TYPICAL_ACCURACY = 0.9
DEV_TEST_MISMATCH_RATIO = 0.1
MAX_LISTED_GROUPS = 200
MAX_LISTED_GROUP_MEMBERS = 20
MAX_NAMED_CLASSES = 20
# Random sort keys of this many bits leave room to pack stratum and row index into one 63-bit sort word.
RANDOM_KEY_BITS = 24


@dataclass(frozen=True)
class SplitParams:
    seed: int = 0
    target_source: str | None = None
    target_train_fraction: float = 0.8
    train_dev_fraction: float = 0.0
    dev_cap: int = 10_000
    test_cap: int = 10_000
    small_ratios: tuple[float, float, float] = (0.6, 0.2, 0.2)
    # Used by the caller to build SplitInput.group_ids (near_duplicates.group_duplicates); stored with the split.
    near_duplicate_threshold: int = DEFAULT_HAMMING_THRESHOLD
    use_imported: bool = False
    # Below 1,000 dev images the standard error of accuracy is about one point or more (see _size_warnings).
    min_dev_size: int = 1_000


@dataclass(frozen=True, eq=False)
class SplitInput:
    """One row per image, in any order. Codes index into the name tuples; equal group ids = one duplicate group
    (any integers, e.g. near_duplicates.group_duplicates(...).group_ids; None = every image alone)."""

    image_ids: npt.NDArray[np.integer]
    source_codes: npt.NDArray[np.integer]
    source_names: tuple[str, ...]
    label_codes: npt.NDArray[np.integer]
    label_names: tuple[str, ...]
    group_ids: npt.NDArray[np.integer] | None = None
    # Codes into SUBSETS, UNASSIGNED where the import named none (see imported_subset_codes).
    imported_subsets: npt.NDArray[np.integer] | None = None
    # Rows a new placement may only put in train: images labelled from the unlabeled pool, chosen by a model's
    # uncertainty, so not a fair sample for dev/test (the caller leaves target-source ones out of this).
    train_only: npt.NDArray[np.bool_] | None = None

    def __post_init__(self) -> None:
        size = np.shape(self.image_ids)
        columns: list[np.ndarray | None] = [self.image_ids, self.source_codes, self.label_codes, self.group_ids]
        columns += [self.imported_subsets, self.train_only]
        if len(size) != 1 or any(column is not None and np.shape(column) != size for column in columns):
            raise ValueError("all SplitInput columns must be 1-D arrays of the same length")
        check_codes("source_codes", self.source_codes, 0, len(self.source_names))
        check_codes("label_codes", self.label_codes, 0, len(self.label_names))
        if self.imported_subsets is not None:
            check_codes("imported_subsets", self.imported_subsets, UNASSIGNED, len(SUBSETS))


@dataclass(frozen=True, eq=False)
class PreviousAssignment:
    """A stored split. Within each subset the rows must come in their stored order (ORDER BY position)."""

    image_ids: npt.NDArray[np.integer]
    subsets: npt.NDArray[np.integer]


class SplitWarning(TypedDict):
    code: str
    message: str


class SubsetCounts(TypedDict):
    total: int
    by_source: dict[str, int]
    by_label: dict[str, int]


class GroupEntry(TypedDict):
    group_id: int
    size: int
    subsets: list[str]
    image_ids: list[int]


class GroupSummary(TypedDict):
    count: int
    straddling: int
    listed: list[GroupEntry]


@dataclass(frozen=True, eq=False)
class SplitSummary:
    """Counts per subset x source x label (`table`, shape (4, sources, labels)), warnings, duplicate groups."""

    table: Int64Array
    source_names: tuple[str, ...]
    label_names: tuple[str, ...]
    counts: dict[str, SubsetCounts]
    warnings: list[SplitWarning]
    groups: GroupSummary

    def table_rows(self) -> list[dict[str, str | int]]:
        """Non-empty cells of `table` as {"subset", "source", "label", "count"} rows."""
        return [
            {
                "subset": SUBSETS[subset],
                "source": self.source_names[source],
                "label": self.label_names[label],
                "count": int(self.table[subset, source, label]),
            }
            for subset, source, label in zip(*np.nonzero(self.table), strict=True)
        ]


@dataclass(frozen=True, eq=False)
class SplitResult:
    """Rows ordered by subset, then by position (the seeded shuffle); subsets are codes into SUBSETS."""

    image_ids: Int64Array
    subsets: npt.NDArray[np.int8]
    positions: Int64Array
    newly_assigned: BoolArray
    summary: SplitSummary


def validate_params(params: SplitParams) -> list[str]:
    """Human-readable problems with the parameters; empty when they can be used."""
    errors: list[str] = []
    if params.seed < 0:
        errors.append("seed must be 0 or more")
    if params.target_source is not None and not params.target_source.strip():
        errors.append("target_source must be a source name or empty")
    if not 0.0 <= params.target_train_fraction <= 1.0:
        errors.append("target_train_fraction must be between 0 and 1")
    if not 0.0 <= params.train_dev_fraction < 1.0:
        errors.append("train_dev_fraction must be at least 0 and below 1")
    if params.dev_cap < 0 or params.test_cap < 0:
        errors.append("dev_cap and test_cap must be 0 or more")
    if len(params.small_ratios) != 3 or any(not 0.0 <= ratio <= 1.0 for ratio in params.small_ratios):
        errors.append("small_ratios must be three fractions (train, dev, test) between 0 and 1")
    elif not math.isclose(sum(params.small_ratios), 1.0, abs_tol=1e-6):
        errors.append("small_ratios must add up to 1")
    if not 0 <= params.near_duplicate_threshold <= MAX_HAMMING_THRESHOLD:
        errors.append(f"near_duplicate_threshold must be between 0 and {MAX_HAMMING_THRESHOLD} bits")
    if params.min_dev_size < 0:
        errors.append("min_dev_size must be 0 or more")
    return errors


def encode_categories(values: Sequence[str]) -> tuple[Int64Array, tuple[str, ...]]:
    """Codes and sorted names for a column of category names (sources or labels)."""
    names = tuple(sorted(set(values)))
    code_of_name = {name: code for code, name in enumerate(names)}
    codes = np.fromiter((code_of_name[value] for value in values), dtype=np.int64, count=len(values))
    return codes, names


def imported_subset_codes(names: Sequence[str | None]) -> npt.NDArray[np.int8]:
    """Codes into SUBSETS for imported subset names (val/valid/validation mean dev); None or "" = UNASSIGNED."""
    code_of_name: dict[str | None, int] = {None: UNASSIGNED}
    codes = np.empty(len(names), dtype=np.int8)
    for row, name in enumerate(names):
        if name not in code_of_name:
            normalised = name.strip().lower() if name is not None else ""
            if normalised and normalised not in IMPORTED_SUBSET_ALIASES:
                raise ValueError(f"unknown imported subset {name!r}; expected one of {sorted(IMPORTED_SUBSET_ALIASES)}")
            code_of_name[name] = IMPORTED_SUBSET_ALIASES.get(normalised, UNASSIGNED)
        codes[row] = code_of_name[name]
    return codes


def check_codes(name: str, codes: npt.NDArray[np.integer], lowest: int, end: int) -> None:
    values = np.asarray(codes)
    if values.size and (values.dtype.kind not in "iu" or values.min() < lowest or values.max() >= end):
        raise ValueError(f"{name} must be integers from {lowest} to {end - 1}")
