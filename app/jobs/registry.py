"""Task registry: each domain's ``tasks`` module registers its handlers by job kind."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from app.jobs.context import JobContext

TaskHandler = Callable[["JobContext"], "dict[str, Any] | None"]

TASK_MODULES = (
    "app.jobs.tasks",
    "app.uploads.tasks",
    "app.splits.tasks",
    "app.training.tasks",
    "app.training.shards",
    "app.embeddings.tasks",
    "app.pool.tasks",
    "app.health.tasks",
)

_handlers: dict[str, TaskHandler] = {}


def task(kind: str) -> Callable[[TaskHandler], TaskHandler]:
    def register(handler: TaskHandler) -> TaskHandler:
        _handlers[kind] = handler
        return handler

    return register


def load_all() -> dict[str, TaskHandler]:
    """Import every task module once (the runner does this at start, so torch is imported once)."""
    for module in TASK_MODULES:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name != module:
                raise
    return _handlers


def handler_for(kind: str) -> TaskHandler:
    handlers = load_all()
    if kind not in handlers:
        raise LookupError(f"no task registered for job kind {kind!r}")
    return handlers[kind]
