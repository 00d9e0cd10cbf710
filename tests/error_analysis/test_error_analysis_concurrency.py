"""Error analysis with several people at once, on a real database of its own (SQLite file / Postgres schema):
a page view that has to write (the first look draws the sample) while others write, two reviewers writing the
tags of one example at the same moment, and the per-process cache of a subset kept right while labels change."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
from sqlalchemy import delete, insert, select, update
from sqlalchemy.orm import Session, sessionmaker

from app.auth import service as auth_service
from app.core.db import READ_MOSTLY_OPTION, session_factory
from app.error_analysis import service
from app.models import ErrorSample, Image, LabelChange, Prediction, Run, User
from tests.conftest import FreshDatabase
from tests.error_analysis.conftest import errors_of
from tests.factories import RunFixture, make_run


@pytest.fixture
def sessions(fresh_database: FreshDatabase) -> sessionmaker[Session]:
    return session_factory(fresh_database.engine)


@pytest.fixture
def seeded(sessions: sessionmaker[Session]) -> Iterator[tuple[RunFixture, list[int]]]:
    with sessions() as db:
        fixture = make_run(db, sizes={"train": 10, "dev": 40, "test": 10}, error_rate=0.5)
        people = [auth_service.create_user(db, name=f"reviewer-{i}", role="reviewer") for i in range(2)]
        db.commit()
        yield fixture, [person.id for person in people]


def _reading_session(sessions: sessionmaker[Session]) -> Session:
    """A session as a GET request gets it (on SQLite its transaction begins deferred)."""
    session = sessions()
    session.connection(execution_options={READ_MOSTLY_OPTION: True})
    return session


def _someone_relabels(sessions: sessionmaker[Session], image_id: int) -> None:
    with sessions() as other:
        other.add(LabelChange(image_id=image_id, kind="relabel", version=2, reason="meanwhile"))
        other.commit()


@pytest.mark.parametrize("tags_exist", [False, True], ids=["first-look-at-tags", "first-look-at-sample"])
def test_a_page_view_that_draws_the_first_sample_succeeds_while_others_write(
    sessions: sessionmaker[Session], seeded: tuple[RunFixture, list[int]], tags_exist: bool
) -> None:
    """On SQLite a read transaction cannot become a write once another connection has committed since it began
    ("database is locked" at once, busy_timeout or not): the first look must start writing properly."""
    fixture, _ = seeded
    if tags_exist:
        with sessions() as db:
            service.dataset_tags(db, dataset_id=fixture.dataset.id)
            db.commit()
    reader = _reading_session(sessions)
    try:
        assert reader.get(Run, fixture.run.id) is not None  # its read has begun
        _someone_relabels(sessions, fixture.images["train"][0].id)
        view = service.error_sample(reader, run_id=fixture.run.id, subset="dev")
        reader.commit()
    finally:
        reader.close()
    assert view.stored is not None and view.items
    with sessions() as db:
        stored = db.scalars(select(ErrorSample).where(ErrorSample.run_id == fixture.run.id)).all()
        assert [sample.id for sample in stored] == [view.stored.id]
        assert service.MISLABELED in [tag.name for tag in service.dataset_tags(db, dataset_id=fixture.dataset.id)]


def _in_thread(work: object) -> tuple[threading.Thread, list[object]]:
    results: list[object] = []

    def run() -> None:
        try:
            results.append(work())  # type: ignore[operator]
        except BaseException as exc:  # noqa: BLE001  (the test asserts on it)
            results.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    return thread, results


def _write_in_own_session(sessions: sessionmaker[Session], user_id: int, write: str, **kwargs: object) -> object:
    with sessions() as db:
        actor = db.get(User, user_id)
        assert actor is not None
        item = getattr(service, write)(db, actor=actor, **kwargs)
        db.commit()
        return item


def _annotate(db: Session, *, run_id: int, image_id: int, user_id: int) -> None:
    """A note first, so both writers find the example's annotation row (creating it is a race of its own)."""
    actor = db.get(User, user_id)
    assert actor is not None
    service.set_note(db, run_id=run_id, image_id=image_id, note="looked at", actor=actor)
    db.commit()


def test_two_reviewers_replacing_the_tags_of_one_example_at_once_leave_the_later_write(
    sessions: sessionmaker[Session], seeded: tuple[RunFixture, list[int]]
) -> None:
    fixture, (first, second) = seeded
    image_id = errors_of(fixture)[0].id
    run_id = fixture.run.id
    with sessions() as db:
        for name in ("blurry", "occluded"):
            service.add_tag(db, dataset_id=fixture.dataset.id, name=name)
        _annotate(db, run_id=run_id, image_id=image_id, user_id=first)
    holder = sessions()
    try:
        actor = holder.get(User, first)
        assert actor is not None
        service.set_annotation(holder, run_id=run_id, image_id=image_id, tags=["blurry"], note=None, actor=actor)
        # The second writer starts while the first has written but not committed; it must wait for it and then
        # replace its tags, not add to them.
        thread, results = _in_thread(
            lambda: _write_in_own_session(
                sessions, second, "set_annotation", run_id=run_id, image_id=image_id, tags=["occluded"], note=None
            )
        )
        thread.join(0.5)
        holder.commit()
    finally:
        holder.close()
    thread.join(60)
    (later,) = results
    assert isinstance(later, service.ErrorItem), later
    assert later.tags == ("occluded",)
    with sessions() as db:
        assert service.error_item(db, run_id=run_id, image_id=image_id).tags == ("occluded",)


def test_two_reviewers_toggling_the_same_tag_at_once_cancel_out(
    sessions: sessionmaker[Session], seeded: tuple[RunFixture, list[int]]
) -> None:
    fixture, (first, second) = seeded
    image_id = errors_of(fixture)[0].id
    run_id = fixture.run.id
    with sessions() as db:
        tag_id = service.add_tag(db, dataset_id=fixture.dataset.id, name="blurry").id
        _annotate(db, run_id=run_id, image_id=image_id, user_id=first)
    holder = sessions()
    try:
        actor = holder.get(User, first)
        assert actor is not None
        on = service.toggle_tag(holder, run_id=run_id, image_id=image_id, tag_id=tag_id, actor=actor)
        thread, results = _in_thread(
            lambda: _write_in_own_session(
                sessions, second, "toggle_tag", run_id=run_id, image_id=image_id, tag_id=tag_id
            )
        )
        thread.join(0.5)
        holder.commit()
    finally:
        holder.close()
    thread.join(60)
    (off,) = results
    assert on.tags == ("blurry",)
    assert isinstance(off, service.ErrorItem), off
    assert off.tags == ()
    with sessions() as db:
        assert service.error_item(db, run_id=run_id, image_id=image_id).tags == ()


def _fix_label(db: Session, image_id: int, label_id: int) -> None:
    """Relabel as label review does (a label_changes row), flushed but not committed."""
    image = db.get(Image, image_id)
    assert image is not None
    old, image.label_id = image.label_id, label_id
    image.label_version += 1
    db.add(LabelChange(image_id=image_id, kind="relabel", old_label_id=old, new_label_id=label_id, version=2))
    db.flush()


def test_a_relabel_committed_after_a_newer_one_still_changes_the_error_count(
    fresh_database: FreshDatabase, sessions: sessionmaker[Session], seeded: tuple[RunFixture, list[int]]
) -> None:
    """Postgres numbers a change when it is written, not when it commits: the error count is cached per subset and
    kept current from the newest change number, so an older number committed later must not be missed."""
    if fresh_database.backend == "sqlite":
        pytest.skip("SQLite writers run one after the other, so changes commit in number order")
    fixture, _ = seeded
    first, second = errors_of(fixture)[:2]
    run_id = fixture.run.id
    with sessions() as db:
        before = service.analyse(db, run_id=run_id, subset="dev").total_errors
    slow = sessions()
    try:
        _fix_label(slow, first.id, fixture.predicted[first.id])  # takes the lower change number
        with sessions() as fast:
            _fix_label(fast, second.id, fixture.predicted[second.id])
            fast.commit()
        with sessions() as db:
            assert service.analyse(db, run_id=run_id, subset="dev").total_errors == before - 1
        slow.commit()
    finally:
        slow.close()
    with sessions() as db:
        assert service.analyse(db, run_id=run_id, subset="dev").total_errors == before - 2


def test_a_run_looked_at_while_it_trains_shows_its_predictions_once_it_succeeds(
    sessions: sessionmaker[Session], seeded: tuple[RunFixture, list[int]]
) -> None:
    """Predictions are written as a run succeeds: what was read of it before must not be kept."""
    from app.review.rescoring import rescored_metrics

    fixture, _ = seeded
    with sessions() as db:
        kept = [
            {column.name: getattr(row, column.name) for column in Prediction.__table__.columns}
            for row in db.scalars(select(Prediction).where(Prediction.run_id == fixture.run.id))
        ]
        db.execute(delete(Prediction).where(Prediction.run_id == fixture.run.id))
        db.execute(update(Run).where(Run.id == fixture.run.id).values(status="running"))
        db.commit()
    with sessions() as db:
        assert rescored_metrics(db, run_id=fixture.run.id) == {}
    with sessions() as db:
        db.execute(insert(Prediction), kept)
        db.execute(update(Run).where(Run.id == fixture.run.id).values(status="succeeded"))
        db.commit()
    with sessions() as db:
        rescored = rescored_metrics(db, run_id=fixture.run.id)
        assert rescored["dev"]["count"] == 40
        assert service.analyse(db, run_id=fixture.run.id, subset="dev").total_errors == len(errors_of(fixture))
