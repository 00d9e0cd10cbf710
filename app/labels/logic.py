"""Label rules on plain data: how a change in an image's label history is undone (a revert of a revert redoes it),
and where a chain of label merges ends.

No database here: the labels service loads rows, calls these functions and stores what comes back.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

# --- undoing label changes -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ChangeRecord:
    """A row of the label history, as far as reverting it is concerned."""

    id: int
    kind: str  # import, relabel, merge, ambiguous, revert, ...
    old_label_id: int | None
    new_label_id: int | None
    reason: str
    reverts_change_id: int | None


@dataclass(frozen=True)
class Effect:
    """What a change did to one field of an image: ``label`` (label ids) or ``exclusion`` (the reason, or None
    when the image is scored)."""

    field: str
    before: int | str | None
    after: int | str | None
    undoes: bool  # True when the change takes an earlier change back (an odd number of reverts deep)
    base_kind: str  # the kind of the original change at the bottom of a chain of reverts

    def inverse(self) -> Effect:
        return Effect(self.field, self.after, self.before, not self.undoes, self.base_kind)


class NotRevertible(ValueError):
    """The change cannot be taken back (an import, or a kind this module does not know)."""


def effect_of(change_id: int, changes: Mapping[int, ChangeRecord]) -> Effect:
    """What ``change_id`` did; a revert does the inverse of the change it reverts, so reverting a revert redoes
    the original change. ``changes`` must hold the change and every change its chain of reverts points to."""
    seen: set[int] = set()
    depth = 0
    current = changes.get(change_id)
    while current is not None and current.kind == "revert":
        if current.id in seen or current.reverts_change_id is None:
            raise NotRevertible(f"change {change_id} has a broken chain of reverts")
        seen.add(current.id)
        depth += 1
        current = changes.get(current.reverts_change_id)
    if current is None:
        raise NotRevertible(f"change {change_id} or a change it reverts is missing")
    if current.kind in ("relabel", "merge"):
        effect = Effect("label", current.old_label_id, current.new_label_id, False, current.kind)
    elif current.kind == "ambiguous":
        effect = Effect("exclusion", None, current.reason, False, current.kind)
    else:
        raise NotRevertible(f"a change of kind {current.kind!r} cannot be reverted")
    return effect.inverse() if depth % 2 else effect


# --- merges -------------------------------------------------------------------------------------------------------


def follow_merges(merged_into: Mapping[int, int]) -> dict[int, int]:
    """Each merged label id -> the label it stands for now, following merges of merges to the end. A cycle would be
    a bug elsewhere: the walk stops where it would go round again."""

    def final(label_id: int) -> int:
        seen = set()
        while label_id in merged_into and label_id not in seen:
            seen.add(label_id)
            label_id = merged_into[label_id]
        return label_id

    return {label_id: final(label_id) for label_id in merged_into}
