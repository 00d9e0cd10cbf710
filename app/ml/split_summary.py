"""The summary of an assignment: counts per subset, source and class, duplicate groups, and the warnings about
subset sizes and classes."""

from __future__ import annotations

import math

import numpy as np

from app.ml.split_rows import (
    Assignment,
    Rows,
    stable_order,
    warning,
)
from app.ml.split_types import (
    DEV,
    DEV_TEST_MISMATCH_RATIO,
    MAX_LISTED_GROUP_MEMBERS,
    MAX_LISTED_GROUPS,
    MAX_NAMED_CLASSES,
    MIN_CLASS_IMAGES_FOR_DEV_AND_TEST,
    SUBSETS,
    TEST,
    TYPICAL_ACCURACY,
    GroupEntry,
    GroupSummary,
    Int64Array,
    SplitParams,
    SplitSummary,
    SplitWarning,
    SubsetCounts,
)


def summarize(rows: Rows, assignment: Assignment, params: SplitParams) -> SplitSummary:
    source_count, label_count = len(rows.source_names), len(rows.label_names)
    cells = (assignment.subsets * source_count + rows.sources) * label_count + rows.labels
    table = np.bincount(cells, minlength=len(SUBSETS) * source_count * label_count).astype(np.int64)
    table = table.reshape(len(SUBSETS), source_count, label_count)
    counts: dict[str, SubsetCounts] = {
        name: {
            "total": int(table[subset].sum()),
            "by_source": dict(zip(rows.source_names, table[subset].sum(axis=1).tolist(), strict=True)),
            "by_label": dict(zip(rows.label_names, table[subset].sum(axis=0).tolist(), strict=True)),
        }
        for subset, name in enumerate(SUBSETS)
    }
    groups = _group_summary(rows, assignment.subsets)
    warnings = list(assignment.warnings)
    warnings.extend(_size_warnings(counts["dev"]["total"], counts["test"]["total"], params))
    target_by_label = np.bincount(rows.labels[assignment.is_target], minlength=label_count)
    warnings.extend(_class_warnings(table, target_by_label, rows.label_names))
    if groups["straddling"]:
        warnings.append(
            warning(
                "group_straddles_subsets",
                f"{groups['straddling']} duplicate groups have members in more than one subset, so near-identical"
                " images are both trained on and evaluated.",
            )
        )
    if assignment.target_mode:
        in_holdout = (assignment.subsets == DEV) | (assignment.subsets == TEST)
        non_target = int(np.count_nonzero(in_holdout & ~assignment.is_target))
        if non_target:
            warnings.append(
                warning(
                    "non_target_in_dev_test",
                    f"{non_target} dev/test images are not from the target source {params.target_source!r};"
                    " dev and test should hold target images only.",
                )
            )
    return SplitSummary(table, rows.source_names, rows.label_names, counts, warnings, groups)


def _size_warnings(dev_total: int, test_total: int, params: SplitParams) -> list[SplitWarning]:
    """Dev too small to measure a 1-point accuracy difference, and dev/test sizes far apart.

    The standard error of an accuracy p measured on n images is sqrt(p (1 - p) / n): at p = 0.9 it is one point
    at n = 900, so below `min_dev_size` (1,000 by default) a 1-point difference between two models is within
    one standard error and cannot be told apart from noise.
    """
    warnings: list[SplitWarning] = []
    if dev_total < params.min_dev_size:
        if dev_total:
            error_points = 100 * math.sqrt(TYPICAL_ACCURACY * (1 - TYPICAL_ACCURACY) / dev_total)
            detail = (
                f"at {TYPICAL_ACCURACY:.0%} accuracy its standard error is about {error_points:.1f} points, so a"
                " 1-point accuracy difference cannot be measured reliably."
            )
        else:
            detail = "no accuracy can be measured."
        warnings.append(
            warning("dev_too_small", f"Dev has {dev_total} images (fewer than {params.min_dev_size}); {detail}")
        )
    larger = max(dev_total, test_total)
    if abs(dev_total - test_total) > max(1, DEV_TEST_MISMATCH_RATIO * larger):
        warnings.append(
            warning(
                "dev_test_size_mismatch",
                f"Dev has {dev_total} images and test {test_total}; they differ by more than"
                f" {DEV_TEST_MISMATCH_RATIO:.0%}.",
            )
        )
    return warnings


def _named(names: list[str]) -> str:
    shown = ", ".join(names[:MAX_NAMED_CLASSES])
    return shown if len(names) <= MAX_NAMED_CLASSES else f"{shown} and {len(names) - MAX_NAMED_CLASSES} more"


def _class_warnings(table: Int64Array, target_by_label: Int64Array, label_names: tuple[str, ...]) -> list[SplitWarning]:
    warnings: list[SplitWarning] = []
    rare = np.flatnonzero((target_by_label > 0) & (target_by_label < MIN_CLASS_IMAGES_FOR_DEV_AND_TEST))
    if rare.size:
        warnings.append(
            warning(
                "class_too_rare",
                f"{rare.size} classes have fewer than {MIN_CLASS_IMAGES_FOR_DEV_AND_TEST} target images, too few"
                f" for train, dev and test each: {_named([label_names[label] for label in rare])}.",
            )
        )
    for subset in (DEV, TEST):
        by_label = table[subset].sum(axis=0)
        if not by_label.sum():
            continue
        missing = np.flatnonzero((target_by_label > 0) & (by_label == 0))
        if missing.size:
            warnings.append(
                warning(
                    f"class_missing_from_{SUBSETS[subset]}",
                    f"{missing.size} classes with target images have none in {SUBSETS[subset]}:"
                    f" {_named([label_names[label] for label in missing])}.",
                )
            )
    return warnings


def _group_summary(rows: Rows, subsets: Int64Array) -> GroupSummary:
    """Groups with more than one member: how many, how many straddle subsets, and the first few listed."""
    multi = np.flatnonzero(rows.group_sizes > 1)
    if not multi.size:
        return {"count": 0, "straddling": 0, "listed": []}
    cells = np.bincount(rows.group_index * len(SUBSETS) + subsets, minlength=rows.group_count * len(SUBSETS))
    presence = cells.reshape(rows.group_count, len(SUBSETS))[multi] > 0
    straddles = presence.sum(axis=1) > 1
    # Straddling groups first (they are problems), then the largest.
    # Group numbers follow the caller's group ids, so ties fall back to those.
    ranking = np.lexsort((-rows.group_sizes[multi], ~straddles))[:MAX_LISTED_GROUPS]
    listed_groups = multi[ranking]
    member_rows = np.flatnonzero(np.isin(rows.group_index, listed_groups))
    member_rows = member_rows[stable_order(rows.group_index[member_rows])]
    member_groups = rows.group_index[member_rows]
    listed: list[GroupEntry] = []
    for group, present in zip(listed_groups.tolist(), presence[ranking].tolist(), strict=True):
        start = int(np.searchsorted(member_groups, group))
        # Only this group's rows: the next group's members follow right after them.
        members = member_rows[start : start + min(int(rows.group_sizes[group]), MAX_LISTED_GROUP_MEMBERS)]
        listed.append(
            {
                "group_id": int(rows.group_keys[group]),
                "size": int(rows.group_sizes[group]),
                "subsets": [name for name, is_present in zip(SUBSETS, present, strict=True) if is_present],
                "image_ids": rows.image_ids[members].tolist(),
            }
        )
    return {"count": int(multi.size), "straddling": int(np.count_nonzero(straddles)), "listed": listed}
