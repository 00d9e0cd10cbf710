"""Shared help for response schemas."""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import BaseModel

Model = TypeVar("Model", bound=BaseModel)


def copied_from(model: type[Model], source: object, **values: Any) -> Model:
    """``model`` with ``values`` as given and every other field read from the same-named attribute of ``source``
    (a row or a view): the schema's field list is the one place that says what is copied."""
    copied = {name: getattr(source, name) for name in model.model_fields if name not in values}
    return model(**copied, **values)
