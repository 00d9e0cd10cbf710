"""Migration 0009 recreates `images` on SQLite to let label_id be empty: nothing that points at an image may be
lost on the way (a DROP with foreign keys on would cascade into every child table)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from alembic import command
from sqlalchemy import Engine, MetaData, Table, create_engine, inspect, text

from app.core.db import make_engine
from app.core.migrate import alembic_config, upgrade_to_head
from app.core.settings import normalise_database_url
from tests.conftest import POSTGRES_URL


@pytest.fixture(params=["sqlite", "postgres"])
def empty_engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, Engine]]:
    """A database with no schema at all, so the test can stop the migrations at 0008."""
    if request.param == "sqlite":
        engine = make_engine(f"sqlite:///{tmp_path / 'old.db'}")
        yield "sqlite", engine
        engine.dispose()
        return
    if not POSTGRES_URL:
        pytest.skip("ERRORBOOK_TEST_POSTGRES_URL is unset: Postgres test skipped")
    schema = f"eb_mig_{uuid.uuid4().hex[:10]}"
    admin = create_engine(normalise_database_url(POSTGRES_URL), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    sep = "&" if "?" in POSTGRES_URL else "?"
    engine = make_engine(normalise_database_url(POSTGRES_URL) + f"{sep}options=-csearch_path%3D{schema}")
    try:
        yield "postgres", engine
    finally:
        engine.dispose()
        with admin.connect() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


def _upgrade(engine: Engine, revision: str) -> None:
    config = alembic_config()
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, revision)


def test_existing_images_and_their_history_survive(empty_engine: tuple[str, Engine]) -> None:
    backend, engine = empty_engine
    _upgrade(engine, "0008")
    now = datetime.now(UTC).replace(tzinfo=None)
    stamps = {"created_at": now}
    with engine.begin() as c:
        table = lambda name: Table(name, MetaData(), autoload_with=c)  # noqa: E731  (the schema as 0008 left it)
        c.execute(table("datasets").insert().values(id=1, name="d", description="", **stamps))
        c.execute(table("labels").insert().values(id=1, dataset_id=1, name="cat", **stamps))
        image = {"sha256": "aa", "filename": "a.jpg", "source": "default", "label_id": 1, "label_version": 1}
        image |= {"width": 8, "height": 8, "format": "JPEG", "notes": ""}
        c.execute(table("images").insert().values(id=1, dataset_id=1, **image, **stamps))
        change = {"kind": "import", "new_label_id": 1, "version": 1, "reason": "", "created_at": now}
        c.execute(table("label_changes").insert().values(id=1, image_id=1, **change))
        stats = {"brightness": 0.5, "contrast": 0.5, "sharpness": 0.5, "entropy": 0.5, "colourfulness": 0.5}
        c.execute(table("image_stats").insert().values(image_id=1, **stats))
    upgrade_to_head(engine)
    with engine.connect() as c:
        assert c.execute(text("SELECT count(*) FROM label_changes")).scalar() == 1
        assert c.execute(text("SELECT count(*) FROM image_stats")).scalar() == 1
        assert c.execute(text("SELECT label_id, from_pool FROM images")).one() == (1, False)
        if backend == "sqlite":
            assert c.execute(text("PRAGMA foreign_keys")).scalar() == 1
            assert c.execute(text("PRAGMA foreign_key_check")).all() == []
    columns = {column["name"]: column for column in inspect(engine).get_columns("images")}
    assert columns["label_id"]["nullable"] is True
