"""Error analysis rules over plain values: which subsets are analysed, what a category name, colour or note may
be. No database or web imports (tests/core/test_pure_logic.py)."""

from __future__ import annotations

import re
import unicodedata

from app.core.errors import Invalid
from app.core.palette import CATEGORY_PALETTE

ANALYSED_SUBSETS = ("dev", "test", "train_dev")
SUBSET_ALIASES = {"train-dev": "train_dev"}
MAX_NOTE_CHARS = 1_000
MAX_TAG_CHARS = 40
MISLABELED = "mislabeled"
MISLABELED_COLOR = "#dc2626"  # no category colour is red or pink (app/core/palette.py)
COLOR_PATTERN = re.compile(r"#[0-9a-fA-F]{6}")


def normalise_subset(subset: str) -> str:
    name = SUBSET_ALIASES.get(subset, subset)
    if name not in ANALYSED_SUBSETS:
        raise Invalid(f"subset must be one of {', '.join(ANALYSED_SUBSETS)}; got {subset!r}")
    return name


def clean_note(note: str) -> str:
    cleaned = note.strip()
    if len(cleaned) > MAX_NOTE_CHARS:
        raise Invalid(f"a note can be at most {MAX_NOTE_CHARS} characters; this one has {len(cleaned)}")
    return cleaned


def clean_tag_name(name: str) -> str:
    cleaned = " ".join(name.split())
    if not cleaned:
        raise Invalid("a category needs a name")
    if len(cleaned) > MAX_TAG_CHARS:
        raise Invalid(f"a category name can be at most {MAX_TAG_CHARS} characters")
    if any(unicodedata.category(char).startswith("C") for char in cleaned):
        raise Invalid("a category name cannot contain control characters")
    return cleaned


def clean_color(color: str) -> str:
    if not COLOR_PATTERN.fullmatch(color):
        raise Invalid(f"a colour is written #rrggbb, e.g. #3b82f6; got {color!r}")
    return color.lower()


def default_color(existing: int) -> str:
    """The colour a new category gets when none is chosen, after ``existing`` categories."""
    return CATEGORY_PALETTE[existing % len(CATEGORY_PALETTE)]
