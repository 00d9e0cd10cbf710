from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect

from app.core.migrate import is_at_head, upgrade_to_head
from app.models import Base


def test_upgrade_head_builds_the_schema_the_models_describe(fresh_database) -> None:
    engine = fresh_database.engine
    assert is_at_head(engine)
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        differences = compare_metadata(context, Base.metadata)
    assert differences == []
    tables = set(inspect(engine).get_table_names())
    assert set(Base.metadata.tables) <= tables


def test_upgrade_is_idempotent(fresh_database) -> None:
    upgrade_to_head(fresh_database.engine)  # a second start must not fail or change anything
    assert is_at_head(fresh_database.engine)
