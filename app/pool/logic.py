"""Where a newly labelled pool image goes, and how the labelling page says it: pure wording over plain data.

Images chosen for labelling by a model's uncertainty are not a fair sample of the data, so they join train; only
those from the target source (the distribution dev and test measure) are left to the split's own rule, which may
place them in dev/test when the split is extended, never moving an image already placed (the sticky rule)."""

from __future__ import annotations

TRAIN = "train"
RULE = "train, or dev/test by the split's rule"


def placement(*, source: str, target_source: str | None) -> str:
    """Where extending the split will put this image once labelled."""
    return RULE if target_source is not None and source == target_source else TRAIN


def placement_note(*, target_source: str | None, split_version: int | None) -> str:
    """The sentence on the labelling page."""
    extend = f"extend split v{split_version}" if split_version is not None else "make a split"
    if target_source is None:
        return (
            f"Labelled images join train when you {extend}; dev and test stay as they are. "
            "Unlabeled images never enter a split."
        )
    return (
        f"Labelled images join train when you {extend}. Those from the target source {target_source!r} are placed "
        "by the split's rule for new images and may go to dev or test; images already in dev and test never move. "
        "Unlabeled images never enter a split."
    )


def session_progress(*, batch: int, done: int) -> str:
    if batch == 0:
        return "nothing to label in this batch"
    return f"{done} of {batch} in this batch labelled"
