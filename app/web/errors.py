"""One handler renders every domain error: JSON for the API, a page or an htmx fragment for the UI."""

from __future__ import annotations

import logging
from urllib.parse import quote

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response
from markupsafe import escape
from sqlalchemy.exc import DataError

from app.core.errors import DomainError, Invalid, NotAuthenticated
from app.web.templating import is_htmx, render

log = logging.getLogger(__name__)


def wants_json(request: Request) -> bool:
    return request.url.path.startswith("/api/") or request.url.path == "/healthz"


def domain_error_response(request: Request, exc: DomainError) -> Response:
    if wants_json(request):
        return JSONResponse(
            {"error": exc.code, "detail": exc.message, **exc.extra},
            status_code=exc.status_code,
            headers={"www-authenticate": "Bearer"} if exc.status_code == 401 else None,
        )
    if isinstance(exc, NotAuthenticated):
        target = "/login?next=" + quote(request.url.path)
        if is_htmx(request):
            return Response(status_code=204, headers={"hx-redirect": target})
        return RedirectResponse(target, status_code=303)
    if is_htmx(request):
        fragment = f'<div class="flash error" role="alert">{escape(exc.message)}</div>'
        return Response(
            fragment,
            status_code=exc.status_code,
            media_type="text/html",
            headers={"hx-retarget": "#flash", "hx-reswap": "innerHTML"},
        )
    return render(request, "error.html", {"error": exc}, status_code=exc.status_code)


def value_error_of(exc: Exception) -> Invalid:
    """A value the database cannot hold (an id past its integer range, a negative LIMIT, a NUL character in
    text) is a bad request, not a server fault: the route's validation let through what only the database
    knows the range of. The database's own one-line reason says which rule was broken."""
    if isinstance(exc, OverflowError):
        return Invalid("a number in the request is out of range")
    reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0][:200]
    return Invalid(f"a value in the request is out of range or not allowed: {reason}")


def install(app: FastAPI) -> None:
    @app.exception_handler(DomainError)
    async def _handle(request: Request, exc: DomainError) -> Response:
        return domain_error_response(request, exc)

    @app.exception_handler(DataError)
    @app.exception_handler(OverflowError)
    async def _handle_value(request: Request, exc: Exception) -> Response:
        log.warning("%s %s: refused a value the database cannot hold", request.method, request.url.path, exc_info=exc)
        return domain_error_response(request, value_error_of(exc))
