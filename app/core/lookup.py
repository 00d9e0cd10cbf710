"""One lookup by primary key for every domain: a missing row is a 404 that names what was asked for."""

from __future__ import annotations

from typing import Any, TypeVar

from sqlalchemy.orm import Session

from app.core.errors import NotFound

T = TypeVar("T")


def get_or_404(session: Session, model: type[T], row_id: Any, *, what: str | None = None, **scope: Any) -> T:
    """The row of ``model`` with primary key ``row_id``, or NotFound ("dataset 7 does not exist").

    ``scope`` names columns the row must also match (``dataset_id=3``): a row of another dataset is as missing as
    no row, so one id cannot be used to reach into another dataset's data.
    """
    row = session.get(model, row_id)
    name = what or _default_name(model)
    if row is None or any(getattr(row, column) != value for column, value in scope.items()):
        where = "".join(f" in {column.removesuffix('_id')} {value}" for column, value in scope.items())
        raise NotFound(f"{name} {row_id} does not exist{where}")
    return row


def _default_name(model: type[Any]) -> str:
    # "ErrorSample" -> "error sample": the words a user sees in the message.
    name = model.__name__
    return "".join(f" {c.lower()}" if c.isupper() else c for c in name).strip()
