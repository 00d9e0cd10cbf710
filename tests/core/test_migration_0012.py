"""Migration 0012 adds `images.inner_phash` (and the column to the split read's covering index); existing images
keep their rows with no inner hash, and the downgrade takes the column away again, on SQLite and Postgres."""

from __future__ import annotations

from datetime import UTC, datetime

from alembic import command
from sqlalchemy import Engine, MetaData, Table, inspect, text

from app.core.migrate import alembic_config, is_at_head, upgrade_to_head
from tests.core.test_migration_0009 import _upgrade, empty_engine  # noqa: F401  (the fixture, shared)


def _downgrade(engine: Engine, revision: str) -> None:
    config = alembic_config()
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.downgrade(config, revision)


def _index_columns(engine: Engine) -> list[str]:
    indexes = {index["name"]: index for index in inspect(engine).get_indexes("images")}
    return list(indexes["ix_images_split_columns"]["column_names"])


def test_inner_phash_comes_and_goes_and_images_survive(empty_engine: tuple[str, Engine]) -> None:  # noqa: F811
    _backend, engine = empty_engine
    _upgrade(engine, "0011")
    now = datetime.now(UTC).replace(tzinfo=None)
    with engine.begin() as c:
        table = lambda name: Table(name, MetaData(), autoload_with=c)  # noqa: E731  (the schema as 0011 left it)
        c.execute(table("datasets").insert().values(id=1, name="d", description="", created_at=now))
        c.execute(table("labels").insert().values(id=1, dataset_id=1, name="cat", created_at=now))
        image = {"sha256": "aa", "filename": "a.jpg", "source": "default", "label_id": 1, "label_version": 1}
        image |= {"width": 8, "height": 8, "format": "JPEG", "notes": "", "phash": -5, "created_at": now}
        c.execute(table("images").insert().values(id=1, dataset_id=1, **image))

    upgrade_to_head(engine)
    assert is_at_head(engine)
    with engine.connect() as c:
        assert c.execute(text("SELECT phash, inner_phash FROM images")).one() == (-5, None)
    assert "inner_phash" in _index_columns(engine)
    with engine.begin() as c:
        c.execute(text("UPDATE images SET inner_phash = :value WHERE id = 1"), {"value": -(2**63)})  # int64 min

    _downgrade(engine, "0011")
    columns = {column["name"] for column in inspect(engine).get_columns("images")}
    assert "inner_phash" not in columns
    assert _index_columns(engine) == ["dataset_id", "id", "label_id", "source", "phash", "imported_subset"]
    with engine.connect() as c:
        assert c.execute(text("SELECT id, phash FROM images")).one() == (1, -5)

    upgrade_to_head(engine)
    with engine.connect() as c:
        assert c.execute(text("SELECT phash, inner_phash FROM images")).one() == (-5, None)
