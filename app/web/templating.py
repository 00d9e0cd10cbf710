"""Jinja2 pages; an htmx request can ask for one block of a page instead of the whole layout."""

from __future__ import annotations

from typing import Any

from fastapi import Request
from fastapi.responses import HTMLResponse
from jinja2 import Environment, FileSystemLoader, select_autoescape

from app.core.settings import PROJECT_ROOT
from app.jobs.states import JobStatus
from app.web import charts

env = Environment(
    loader=FileSystemLoader(PROJECT_ROOT / "templates"),
    autoescape=select_autoescape(default=True, default_for_string=True),
    trim_blocks=True,
    lstrip_blocks=True,
)
env.globals["charts"] = charts


def _percent(value: float | None, digits: int = 1) -> str:
    return "–" if value is None else f"{100 * value:.{digits}f}%"


env.filters["percent"] = _percent


def _counted(count: object, word: str, plural: str | None = None) -> str:
    """ "1 source", "2 sources" (thousands separated); "–" for a count that is not known."""
    if not isinstance(count, int):
        return "–"
    return f"{count:,} {word if count == 1 else plural or word + 's'}"


# A job's message beside its status badge, unless it only repeats it ("queued queued", "succeeded done").
_STATUS_ECHOES = {*JobStatus, "done"}


def _beyond_status(message: str | None, status: str) -> str:
    return "" if not message or message.strip().lower() in (_STATUS_ECHOES | {status}) else message


env.filters["counted"] = _counted
env.filters["beyond_status"] = _beyond_status


def is_htmx(request: Request) -> bool:
    return request.headers.get("hx-request") == "true"


def render(
    request: Request,
    template_name: str,
    context: dict[str, Any] | None = None,
    *,
    block: str | None = None,
    status_code: int = 200,
    headers: dict[str, str] | None = None,
) -> HTMLResponse:
    ctx = {
        "request": request,
        "user": getattr(request.state, "user", None),
        "csrf_token": getattr(request.state, "csrf_token", ""),
        **(context or {}),
    }
    template = env.get_template(template_name)
    if block is None:
        html = template.render(ctx)
    else:
        html = "".join(template.blocks[block](template.new_context(ctx)))
    return HTMLResponse(html, status_code=status_code, headers=headers)
