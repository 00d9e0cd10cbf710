"""One example of a run: its card, its large view, and the categories and note reviewers give it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.core.errors import Invalid, NotFound, check_between
from app.core.limits import MAX_SELECTION
from app.core.lookup import get_or_404
from app.error_analysis import repository
from app.error_analysis.logic import clean_note
from app.error_analysis.runs import finished_run, label_map
from app.error_analysis.samples import ErrorItem, items_of
from app.error_analysis.tags import TagView, ensure_tags, tag_of, tag_views
from app.labels import service as label_service
from app.labels.repository import HistoryRow
from app.ml.top_classes import TopClass, top_classes
from app.models import Image, Run, User, utcnow


@dataclass(frozen=True)
class ErrorDetail:
    run: Run
    subset: str
    item: ErrorItem
    filename: str
    width: int
    height: int
    top: list[TopClass]
    history: list[HistoryRow]
    tags: list[TagView]


def _predicted_example(session: Session, *, run_id: int, image_id: int) -> tuple[Run, str]:
    run = finished_run(session, run_id=run_id)
    row = repository.prediction(session, run_id=run.id, image_id=image_id)
    if row is None:
        raise NotFound(f"image {image_id} has no prediction in run {run_id}")
    return run, row.subset


def error_item(session: Session, *, run_id: int, image_id: int) -> ErrorItem:
    run, _ = _predicted_example(session, run_id=run_id, image_id=image_id)
    labels = label_map(session, dataset_id=run.dataset_id)
    tags = tag_views(ensure_tags(session, dataset_id=run.dataset_id))
    rows = list(repository.item_rows(session, run_id=run.id, image_ids=[image_id]).values())
    (item,) = items_of(session, rows=rows, labels=labels, tags=tags)
    return item


def error_detail(session: Session, *, run_id: int, image_id: int) -> ErrorDetail:
    """The large view: top-5 class probabilities (in the run's label order) and the label history."""
    run, subset = _predicted_example(session, run_id=run_id, image_id=image_id)
    prediction = repository.prediction(session, run_id=run.id, image_id=image_id)
    image = get_or_404(session, Image, image_id)
    assert prediction is not None
    top = top_classes(prediction.probs, run.label_names, 5)
    return ErrorDetail(
        run=run,
        subset=subset,
        item=error_item(session, run_id=run_id, image_id=image_id),
        filename=image.filename,
        width=image.width,
        height=image.height,
        top=top,
        history=label_service.history(session, image_id=image_id),
        tags=tag_views(ensure_tags(session, dataset_id=run.dataset_id)),
    )


def _write_annotation(
    session: Session,
    *,
    run: Run,
    image_id: int,
    tag_ids: set[int] | None,
    note: str | None,
    actor: User,
    toggle_tag_id: int | None = None,
    add_tag_id: int | None = None,
) -> None:
    # The annotation row is locked before its tags are read, so two reviewers writing the same example at once
    # are applied one after the other (on Postgres, reading first would let the second undo half of the first);
    # a savepoint lets the loser of a race to create the row carry on with the winner's.
    annotation = repository.annotation(session, run_id=run.id, image_id=image_id, for_update=True)
    if annotation is None:
        try:
            with session.begin_nested():
                annotation = repository.add_annotation(session, run_id=run.id, image_id=image_id)
        except IntegrityError:
            annotation = repository.annotation(session, run_id=run.id, image_id=image_id, for_update=True)
    assert annotation is not None
    if toggle_tag_id is not None or add_tag_id is not None:
        current = repository.annotation_tag_ids(session, annotation_ids=[annotation.id]).get(annotation.id, set())
        tag_ids = current ^ {toggle_tag_id} if toggle_tag_id is not None else current | {add_tag_id or 0}
    if tag_ids is not None:
        repository.set_annotation_tags(session, annotation_id=annotation.id, tag_ids=tag_ids)
    if note is not None:
        annotation.note = note
    annotation.updated_by_id = actor.id
    annotation.updated_at = utcnow()
    session.flush()


def set_annotation(
    session: Session,
    *,
    run_id: int,
    image_id: int,
    tags: Sequence[str] | None,
    note: str | None,
    actor: User,
) -> ErrorItem:
    """Replace an example's tags (by name) and/or note; ``None`` leaves that part as it is."""
    run, _ = _predicted_example(session, run_id=run_id, image_id=image_id)
    tag_ids = None
    if tags is not None:
        known = {tag.name.casefold(): tag.id for tag in ensure_tags(session, dataset_id=run.dataset_id)}
        unknown = sorted({name for name in tags if name.strip().casefold() not in known})
        if unknown:
            raise Invalid(
                f"unknown categories for this dataset: {', '.join(unknown)}; add them first",
                extra={"unknown": unknown},
            )
        tag_ids = {known[name.strip().casefold()] for name in tags}
    cleaned_note = None if note is None else clean_note(note)
    _write_annotation(session, run=run, image_id=image_id, tag_ids=tag_ids, note=cleaned_note, actor=actor)
    return error_item(session, run_id=run_id, image_id=image_id)


def toggle_tag(session: Session, *, run_id: int, image_id: int, tag_id: int, actor: User) -> ErrorItem:
    """Add the tag to the example, or take it off if it is there (what a digit key does)."""
    run, _ = _predicted_example(session, run_id=run_id, image_id=image_id)
    ensure_tags(session, dataset_id=run.dataset_id)
    tag_of(session, dataset_id=run.dataset_id, tag_id=tag_id)
    _write_annotation(session, run=run, image_id=image_id, tag_ids=None, note=None, actor=actor, toggle_tag_id=tag_id)
    return error_item(session, run_id=run_id, image_id=image_id)


@dataclass(frozen=True)
class Tagged:
    tagged: int
    already: int  # had the tag before


def tag_images(session: Session, *, run_id: int, tag_id: int, image_ids: Sequence[int], actor: User) -> Tagged:
    """Give a selection of the run's examples one category, all or nothing: an image the run did not predict
    refuses the whole selection (categories are per run: they say what the run got wrong and why)."""
    wanted = list(dict.fromkeys(image_ids))
    check_between(len(wanted), 1, MAX_SELECTION, f"select between 1 and {MAX_SELECTION} images; got {len(wanted)}")
    run = finished_run(session, run_id=run_id)
    ensure_tags(session, dataset_id=run.dataset_id)
    tag_of(session, dataset_id=run.dataset_id, tag_id=tag_id)
    rows = repository.item_rows(session, run_id=run.id, image_ids=wanted)
    missing = [image_id for image_id in wanted if image_id not in rows]
    if missing:
        raise Invalid(
            f"{len(missing)} of the images have no prediction in run {run.id} (e.g. "
            f"{', '.join(map(str, missing[:5]))}); nothing was tagged",
            extra={"images": missing[:200]},
        )
    annotations = [row.annotation_id for row in rows.values() if row.annotation_id is not None]
    had = {
        i
        for i, tag_ids in repository.annotation_tag_ids(session, annotation_ids=annotations).items()
        if tag_id in tag_ids
    }
    already = sum(1 for row in rows.values() if row.annotation_id in had)
    for image_id in wanted:
        if rows[image_id].annotation_id not in had:
            _write_annotation(
                session, run=run, image_id=image_id, tag_ids=None, note=None, actor=actor, add_tag_id=tag_id
            )
    return Tagged(tagged=len(wanted) - already, already=already)


def set_note(session: Session, *, run_id: int, image_id: int, note: str, actor: User) -> ErrorItem:
    return set_annotation(session, run_id=run_id, image_id=image_id, tags=None, note=note, actor=actor)
