"""Where a chain of label merges ends, on plain data."""

from __future__ import annotations

from app.labels.logic import follow_merges


def test_merges_of_merges_are_followed_to_the_end() -> None:
    # 1 was merged into 2, later 2 into 3; 4 into 3 directly; 3 still exists.
    assert follow_merges({1: 2, 2: 3, 4: 3}) == {1: 3, 2: 3, 4: 3}
    assert follow_merges({}) == {}


def test_a_cycle_stops_instead_of_looping() -> None:
    ends = follow_merges({1: 2, 2: 1})
    assert set(ends) == {1, 2} and set(ends.values()) <= {1, 2}
