"""Where a running ``errorbook serve`` can be found: a small file in the user's state directory naming its URL,
data dir and database, so that ``errorbook demo`` run from any folder or shell adds to the database that server
shows (instead of a second data dir nobody looks at). Written 0600 (the database URL may hold a password),
removed when the server stops; a file left by a killed server is ignored once its process is gone."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import psutil

from app.core.settings import Settings

MARKER_NAME = "running-server.json"


@dataclass(frozen=True)
class RunningServer:
    url: str
    pid: int
    data_dir: str
    database_url: str | None


def marker_path(settings: Settings) -> Path:
    return settings.state_dir.expanduser() / MARKER_NAME


def announce(settings: Settings, *, url: str) -> RunningServer:
    server = RunningServer(
        url=url, pid=os.getpid(), data_dir=str(settings.resolved_data_dir), database_url=settings.database_url
    )
    path = marker_path(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(f".{os.getpid()}.tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as stream:
        json.dump(asdict(server), stream)
    os.replace(temporary, path)
    return server


def withdraw(settings: Settings) -> None:
    """Remove the marker if it is still this process's (a newer server may have replaced it)."""
    found = _read(marker_path(settings))
    if found is not None and found.pid == os.getpid():
        with contextlib.suppress(FileNotFoundError):
            marker_path(settings).unlink()


def withdraw_on_shutdown(app: Any, settings: Settings) -> None:
    """Wrap a Starlette app's lifespan so the marker goes when the server shuts down."""
    original = app.router.lifespan_context

    @contextlib.asynccontextmanager
    async def lifespan(application: Any) -> AsyncIterator[Any]:
        try:
            async with original(application) as state:
                yield state
        finally:
            withdraw(settings)

    app.router.lifespan_context = lifespan


def running_server(settings: Settings) -> RunningServer | None:
    found = _read(marker_path(settings))
    if found is None or found.pid == os.getpid() or not psutil.pid_exists(found.pid):
        return None
    return found


def _read(path: Path) -> RunningServer | None:
    try:
        data = json.loads(path.read_text())
        return RunningServer(
            url=str(data["url"]),
            pid=int(data["pid"]),
            data_dir=str(data["data_dir"]),
            database_url=data.get("database_url"),
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None


def describe_database(settings: Settings) -> str:
    """The database in words, without any password."""
    if not settings.database_url:
        return f"SQLite at {settings.resolved_data_dir / 'errorbook.db'}"
    from sqlalchemy.engine import make_url

    return make_url(settings.sqlalchemy_url).render_as_string(hide_password=True)
