"""Every label write goes through the versioned path: a review relabel and the resolution of an upload conflict on
the same image, in two real sessions on two threads, cannot both write the version after the one they read.

The first writer changes the image and holds its transaction open; the second reads the image (the version before)
and tries to write while the first still holds it; then the first commits. On Postgres the two truly interleave, so
exactly one of them is refused with 409; SQLite runs writers one at a time (every write transaction begins
IMMEDIATE), so there a resolution that comes second simply applies on top, while a review relabel that comes second
names the version its reviewer saw and is refused. On both, no label version is ever written twice and every
history row starts from the label the one before it left."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import event, select
from sqlalchemy.orm import Session

from app.auth import service as auth_service
from app.core.errors import DomainError
from app.models import Image, LabelChange, Upload, UploadEntry
from app.review import relabel
from app.uploads import service as uploads
from tests.factories import make_run

Writer = Callable[[Session], Any]


def _second_writer(engine: Any, write: Writer, reached: threading.Event, outcome: dict[str, Any]) -> None:
    me = threading.get_ident()

    def watch(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        # The moment this writer starts its write: SQLite's BEGIN IMMEDIATE (it waits there for the first writer),
        # or the UPDATE of the image on Postgres (it waits there for the first writer's row lock).
        if threading.get_ident() == me and statement.lstrip().upper().startswith(("BEGIN", "UPDATE IMAGES")):
            reached.set()

    event.listen(engine, "before_cursor_execute", watch)
    try:
        with Session(engine) as session:
            try:
                write(session)
                session.commit()
                outcome["result"] = "applied"
            except DomainError as exc:
                session.rollback()
                outcome["result"] = exc
    finally:
        event.remove(engine, "before_cursor_execute", watch)
        reached.set()


@pytest.mark.parametrize("first", ["review", "resolution"])
def test_a_conflict_resolution_racing_a_review_relabel_never_reuses_a_version(fresh_database, first: str) -> None:
    engine = fresh_database.engine
    with Session(engine) as session:
        fixture = make_run(session, label_names=("cat", "dog", "fox"), sizes={"dev": 1}, seed=11)
        image = fixture.images["dev"][0]
        stored = next(label for label in fixture.labels if label.id == image.label_id)
        others = [label.name for label in fixture.labels if label.id != stored.id]
        reviewer = auth_service.create_user(session, name="reviewer", role="reviewer")
        upload = Upload(dataset_id=fixture.dataset.id, status="done", conflicts=1)
        session.add(upload)
        session.flush()
        entry = UploadEntry(
            upload_id=upload.id,
            name=f"{others[0]}/same.jpg",
            outcome="conflict",
            reason=f"same content, which is labelled {stored.name!r}; this file says {others[0]!r}",
            image_id=image.id,
            label=others[0],
        )
        session.add(entry)
        session.commit()
        image_id, upload_id, entry_id, reviewer_id = image.id, upload.id, entry.id, reviewer.id

    def review(session: Session) -> Any:
        actor = session.get(type(reviewer), reviewer_id)
        request = relabel.RelabelRequest(
            image_id=image_id, label=others[1], expected_version=1, reason="looks like one"
        )
        return relabel.change_label(session, request=request, actor=actor)

    def resolution(session: Session) -> Any:
        return uploads.resolve_conflict(session, upload_id=upload_id, entry_id=entry_id, keep="new", user_id=None)

    writers = {"review": review, "resolution": resolution}
    second = "resolution" if first == "review" else "review"

    holder = Session(engine)
    writers[first](holder)
    holder.flush()  # the first writer's change is made and its transaction stays open
    reached, outcome = threading.Event(), {}
    thread = threading.Thread(target=_second_writer, args=(engine, writers[second], reached, outcome), daemon=True)
    thread.start()
    assert reached.wait(30)
    time.sleep(0.3)  # let the second writer's statement reach the database and wait there
    holder.commit()
    holder.close()
    thread.join(60)
    assert not thread.is_alive()

    result = outcome["result"]
    truly_interleaved = fresh_database.backend == "postgres"
    if truly_interleaved or second == "review":
        # The second writer read the version before the first one's and is refused, naming the label now.
        assert isinstance(result, DomainError) and result.status_code == 409, result
        assert result.extra["label_version"] == 2
    else:
        assert result == "applied"  # SQLite let the resolution start only after the review relabel committed

    with Session(engine) as session:
        changes = list(
            session.scalars(select(LabelChange).where(LabelChange.image_id == image_id).order_by(LabelChange.id))
        )
        versions = [change.version for change in changes]
        assert versions == list(range(1, len(changes) + 1)), versions  # no version written twice, none skipped
        for before, change in zip(changes, changes[1:], strict=False):
            assert change.old_label_id == before.new_label_id  # each change starts from the label the last one left
        current = session.get(Image, image_id)
        assert current is not None
        assert current.label_version == versions[-1]
        assert current.label_id == changes[-1].new_label_id
        open_conflict = session.get(UploadEntry, entry_id)
        assert open_conflict is not None
        resolved = [change for change in changes if change.reason.startswith(f"upload {upload_id}")]
        assert (open_conflict.outcome == "resolved") == bool(resolved)  # a refused resolution leaves it open
