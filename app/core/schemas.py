"""Shared help for schemas: copying a view into a response, the body of an action on a selection."""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import BaseModel, Field

from app.core.limits import MAX_SELECTION

Model = TypeVar("Model", bound=BaseModel)


def copied_from(model: type[Model], source: object, **values: Any) -> Model:
    """``model`` with ``values`` as given and every other field read from the same-named attribute of ``source``
    (a row or a view): the schema's field list is the one place that says what is copied."""
    copied = {name: getattr(source, name) for name in model.model_fields if name not in values}
    return model(**copied, **values)


class SelectionIn(BaseModel):
    """Images an action on a selection applies to: exactly these (a map selection, the picked cards of a grid)."""

    image_ids: list[int] = Field(min_length=1, max_length=MAX_SELECTION)
