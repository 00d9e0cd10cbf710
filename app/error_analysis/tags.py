"""Error categories (tags), per dataset: ``mislabeled`` always exists and comes first; others are added,
renamed, recoloured and merged by reviewers."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.core.db import prepare_to_write
from app.core.errors import Conflict, Invalid
from app.core.lookup import get_or_404
from app.error_analysis import repository
from app.error_analysis.logic import MISLABELED, MISLABELED_COLOR, clean_color, clean_tag_name, default_color
from app.models import Dataset, Tag


@dataclass(frozen=True)
class TagView:
    """A category as pages and items read it: plain attributes, cheap to read a hundred times per page."""

    id: int
    name: str
    color: str


def tag_views(tags: Sequence[Tag]) -> list[TagView]:
    return [TagView(id=tag.id, name=tag.name, color=tag.color) for tag in tags]


def ensure_tags(session: Session, *, dataset_id: int) -> list[Tag]:
    """The dataset's categories in key order; ``mislabeled`` always exists and comes first."""
    tags = repository.tags_of(session, dataset_id=dataset_id)
    if any(tag.name == MISLABELED for tag in tags):
        return tags
    prepare_to_write(session)  # the first look at a dataset's categories may be a GET
    tags = repository.tags_of(session, dataset_id=dataset_id)
    if any(tag.name == MISLABELED for tag in tags):
        return tags
    try:
        with session.begin_nested():
            repository.add_tag(session, dataset_id=dataset_id, name=MISLABELED, color=MISLABELED_COLOR, position=0)
    except IntegrityError:
        pass  # created by a concurrent request
    return repository.tags_of(session, dataset_id=dataset_id)


def tag_of(session: Session, *, dataset_id: int, tag_id: int) -> Tag:
    """The dataset's category ``tag_id``; one of another dataset is as missing as none."""
    return get_or_404(session, Tag, tag_id, what="category", dataset_id=dataset_id)


def _check_name_free(tags: list[Tag], name: str, *, except_id: int | None = None) -> None:
    for tag in tags:
        if tag.id != except_id and tag.name.casefold() == name.casefold():
            raise Conflict(f"this dataset already has a category named {tag.name!r}")


def dataset_tags(session: Session, *, dataset_id: int) -> list[Tag]:
    get_or_404(session, Dataset, dataset_id)
    return ensure_tags(session, dataset_id=dataset_id)


def next_color(tags: Sequence[object]) -> str:
    """The colour a category added after these gets unless one is chosen (the add form shows it)."""
    return default_color(len(tags))


def add_tag(session: Session, *, dataset_id: int, name: str, color: str | None = None) -> Tag:
    get_or_404(session, Dataset, dataset_id)
    tags = ensure_tags(session, dataset_id=dataset_id)
    cleaned = clean_tag_name(name)
    _check_name_free(tags, cleaned)
    colour = clean_color(color) if color else next_color(tags)
    position = max((tag.position for tag in tags), default=0) + 1
    try:
        with session.begin_nested():
            return repository.add_tag(session, dataset_id=dataset_id, name=cleaned, color=colour, position=position)
    except IntegrityError as exc:
        raise Conflict(f"this dataset already has a category named {cleaned!r}") from exc


def update_tag(
    session: Session, *, dataset_id: int, tag_id: int, name: str | None = None, color: str | None = None
) -> Tag:
    """Rename and/or recolour a category (``mislabeled`` keeps its name: label review depends on it)."""
    get_or_404(session, Dataset, dataset_id)
    tags = ensure_tags(session, dataset_id=dataset_id)
    tag = tag_of(session, dataset_id=dataset_id, tag_id=tag_id)
    if name is not None:
        cleaned = clean_tag_name(name)
        if cleaned != tag.name:
            if tag.name == MISLABELED:
                raise Conflict(f"{MISLABELED!r} always exists and cannot be renamed")
            _check_name_free(tags, cleaned, except_id=tag.id)
            tag.name = cleaned
    if color:
        tag.color = clean_color(color)
    try:
        with session.begin_nested():
            session.flush()
    except IntegrityError as exc:
        raise Conflict(f"this dataset already has a category named {tag.name!r}") from exc
    return tag


def merge_tag(session: Session, *, dataset_id: int, tag_id: int, into_id: int) -> Tag:
    """Fold one category into another: every example tagged with it gets the other one; it disappears."""
    get_or_404(session, Dataset, dataset_id)
    ensure_tags(session, dataset_id=dataset_id)
    source = tag_of(session, dataset_id=dataset_id, tag_id=tag_id)
    target = tag_of(session, dataset_id=dataset_id, tag_id=into_id)
    if source.id == target.id:
        raise Invalid("a category cannot be merged into itself")
    if source.name == MISLABELED:
        raise Conflict(f"{MISLABELED!r} always exists; merge other categories into it instead")
    repository.merge_tag(session, source=source, target=target)
    return target
