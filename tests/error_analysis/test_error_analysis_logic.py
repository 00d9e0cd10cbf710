"""Error analysis rules over plain values: subsets, category names, colours, notes."""

from __future__ import annotations

import colorsys

import pytest

from app.core.errors import Invalid
from app.error_analysis.logic import (
    CATEGORY_PALETTE,  # re-exported from app/core/palette.py
    MISLABELED_COLOR,
    clean_color,
    clean_note,
    clean_tag_name,
    default_color,
    normalise_subset,
)


def _hue(colour: str) -> float:
    red, green, blue = (int(colour[i : i + 2], 16) / 255 for i in (1, 3, 5))
    return 360 * colorsys.rgb_to_hsv(red, green, blue)[0]


def test_new_category_colours_are_far_from_mislabeled_red() -> None:
    """Issue 15.14: the default palette gave the fourth category a red next to mislabeled's."""
    red = _hue(MISLABELED_COLOR)
    for colour in CATEGORY_PALETTE:
        apart = abs(_hue(colour) - red) % 360
        assert min(apart, 360 - apart) >= 30, colour
    assert len(set(CATEGORY_PALETTE)) == len(CATEGORY_PALETTE)


def test_default_colours_cycle_through_the_palette() -> None:
    assert [default_color(n) for n in range(len(CATEGORY_PALETTE) + 1)] == [*CATEGORY_PALETTE, CATEGORY_PALETTE[0]]


def test_subset_aliases_and_refusals() -> None:
    assert normalise_subset("train-dev") == "train_dev"
    with pytest.raises(Invalid, match="subset must be one of dev, test, train_dev"):
        normalise_subset("train")


def test_names_colours_and_notes_are_cleaned_or_refused() -> None:
    assert clean_tag_name("  too   dark ") == "too dark"
    assert clean_color("#AABBCC") == "#aabbcc"
    assert clean_note("  seen twice \n") == "seen twice"
    for bad in ("", " " * 3, "x" * 41, "tab\u0007bell"):
        with pytest.raises(Invalid):
            clean_tag_name(bad)
    with pytest.raises(Invalid, match="#rrggbb"):
        clean_color("red")
    with pytest.raises(Invalid, match="at most 1000 characters"):
        clean_note("x" * 1001)
