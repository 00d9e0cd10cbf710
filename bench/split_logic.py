"""Split logic figures on synthetic columns (no database): duplicate grouping, preview, split and extend.

    python bench/split_logic.py [rows]          # default 1,000,000 rows, 4 sources, 50 skewed classes

Goals: preview under 1.5 s of pure logic (the database read takes the rest of a 3 s budget), the whole split
within a few seconds, near-duplicate grouping of 1,000,000 hashes well under 10 s.
"""

from __future__ import annotations

import resource
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import TypeVar

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from app.ml.near_duplicates import group_near_duplicates  # noqa: E402
from app.ml.splitting import (  # noqa: E402
    SUBSETS,
    PreviousAssignment,
    SplitInput,
    SplitParams,
    compute_split,
    extend_split,
    preview_split,
)

SOURCE_COUNT = 4
LABEL_COUNT = 50
NEAR_DUPLICATE_SHARE = 0.03
Result = TypeVar("Result")


def synthetic_columns(rows: int, seed: int = 0) -> tuple[SplitInput, np.ndarray, np.ndarray]:
    """Rows with skewed classes and sources, and whole-view and inner-view dHashes where a few percent are near
    copies of others. A picture's inner view hashes a few bits from its whole view, as real pictures do."""
    rng = np.random.default_rng(seed)
    class_weights = 1.0 / np.arange(1, LABEL_COUNT + 1)
    labels = rng.choice(LABEL_COUNT, size=rows, p=class_weights / class_weights.sum())
    sources = rng.choice(SOURCE_COUNT, size=rows, p=[0.4, 0.3, 0.2, 0.1])
    hashes = rng.integers(0, 2**64, size=rows, dtype=np.uint64)
    copies = np.flatnonzero(rng.random(rows) < NEAR_DUPLICATE_SHARE)
    originals = rng.integers(0, rows, size=copies.size)
    flipped_bit = rng.integers(0, 64, size=copies.size).astype(np.uint64)
    hashes[copies] = hashes[originals] ^ (np.uint64(1) << flipped_bit)
    inner = hashes.copy()
    # About 6 bits on average (bench/near_duplicates.py measured a median of 5-7 on photos and demo pictures).
    for _ in range(12):
        inner ^= (rng.random(rows) < 0.5).astype(np.uint64) << rng.integers(0, 64, size=rows).astype(np.uint64)
    inner[copies] = inner[originals] ^ (np.uint64(1) << flipped_bit)
    data = SplitInput(
        image_ids=rng.permutation(rows).astype(np.int64) + 1,
        source_codes=sources,
        source_names=tuple(f"source{code}" for code in range(SOURCE_COUNT)),
        label_codes=labels,
        label_names=tuple(f"class{code}" for code in range(LABEL_COUNT)),
    )
    return data, hashes.view(np.int64), inner.view(np.int64)


def timed(label: str, action: Callable[[], Result]) -> Result:
    """Run action, printing wall time and this process's CPU time (the gap shows a busy machine)."""
    started, started_cpu = time.perf_counter(), time.process_time()
    result = action()
    wall, cpu = time.perf_counter() - started, time.process_time() - started_cpu
    print(f"{label:<44} {wall:7.3f} s wall {cpu:7.3f} s CPU")
    return result


def main() -> None:
    rows = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
    print(f"{rows:,} rows, {SOURCE_COUNT} sources, {LABEL_COUNT} classes")
    data, hashes, inner = timed("synthetic data", lambda: synthetic_columns(rows))
    whole = timed("near-duplicate groups (whole-view dHash, 4 bits)", lambda: group_near_duplicates(hashes))
    grouping = timed(
        "near-duplicate groups (whole + inner dHash)", lambda: group_near_duplicates(hashes, inner_hashes=inner)
    )
    print(
        f"  {np.unique(whole.group_ids).size:,} groups from the whole view, {np.unique(grouping.group_ids).size:,} with both"
    )
    group_sizes = np.bincount(grouping.group_ids)
    print(f"  {np.count_nonzero(group_sizes > 1):,} groups with more than one image, exact={grouping.exact}")
    data = SplitInput(
        image_ids=data.image_ids,
        source_codes=data.source_codes,
        source_names=data.source_names,
        label_codes=data.label_codes,
        label_names=data.label_names,
        group_ids=grouping.group_ids,
    )
    for params in (SplitParams(), SplitParams(target_source="source1", train_dev_fraction=0.05)):
        print(f"target={params.target_source} train_dev_fraction={params.train_dev_fraction}")
        summary = timed("  preview (counts and warnings)", partial(preview_split, data, params))
        result = timed("  compute_split", partial(compute_split, data, params))
        print("  " + ", ".join(f"{name} {summary.counts[name]['total']:,}" for name in SUBSETS))
        print(f"  warnings: {[warning['code'] for warning in result.summary.warnings]}")

    kept = np.random.default_rng(1).random(rows) < 0.9
    old_data = SplitInput(
        image_ids=data.image_ids[kept],
        source_codes=data.source_codes[kept],
        source_names=data.source_names,
        label_codes=data.label_codes[kept],
        label_names=data.label_names,
        group_ids=np.asarray(data.group_ids)[kept],
    )
    old = compute_split(old_data, SplitParams())
    previous = PreviousAssignment(image_ids=old.image_ids, subsets=old.subsets)
    extended = timed("extend_split (10% new images)", lambda: extend_split(data, previous, SplitParams()))
    print(f"  {int(extended.newly_assigned.sum()):,} newly assigned")
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # ru_maxrss is in KiB on Linux
    print(f"peak RSS {peak_mib:,.0f} MiB")


if __name__ == "__main__":
    main()
