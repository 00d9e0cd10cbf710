"""One handler renders every domain error: JSON for the API, a page or an htmx fragment for the UI."""

from __future__ import annotations

import json
import logging
import math
from typing import Any
from urllib.parse import quote

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, RedirectResponse, Response
from markupsafe import escape
from sqlalchemy.exc import DataError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.auth import service as auth_service
from app.core.errors import DomainError, Invalid, NotAuthenticated, NotFound
from app.web.templating import is_htmx, render

log = logging.getLogger(__name__)


def wants_json(request: Request) -> bool:
    return request.url.path.startswith("/api/") or request.url.path == "/healthz"


def _encodable(value: Any) -> Any:
    """A reply may echo what was sent: NaN and Infinity (which JSON cannot carry) become their names."""
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    if isinstance(value, dict):
        return {str(key): _encodable(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_encodable(item) for item in value]
    return value


class SafeJSONResponse(JSONResponse):
    """JSON that any input can be echoed in: non-finite numbers named, lone surrogates escaped (ASCII output)."""

    def render(self, content: Any) -> bytes:
        return json.dumps(_encodable(content), ensure_ascii=True, allow_nan=False, separators=(",", ":")).encode()


def json_error(status: int, code: str, detail: str) -> Response:
    return SafeJSONResponse({"error": code, "detail": detail}, status_code=status)


def domain_error_response(request: Request, exc: DomainError) -> Response:
    if wants_json(request):
        return SafeJSONResponse(
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


def _who_is_asking(request: Request) -> None:
    """An unknown path matched no route, so no dependency said who is asking: read the session cookie here, so
    the 404 page has the navigation of a logged-in user (read-only; the session is closed at once)."""
    from app.web.deps import Actor, read_session_cookie  # deps imports this module's users' routes

    token = read_session_cookie(request)
    if not token:
        return
    with request.app.state.session_maker() as session:
        resolved = auth_service.resolve_session(session, token=token)
        if resolved is not None:
            user, user_session = resolved
            request.state.user = Actor(user.id, user.name, user.role)
            request.state.csrf_token = user_session.csrf_token


async def http_error_response(request: Request, exc: StarletteHTTPException) -> Response:
    """Starlette's own errors (no route for the path, a method the route lacks): the API keeps JSON, in the shape
    of every other error; a browser gets a page with the navigation."""
    if exc.status_code == 404:
        error: DomainError = NotFound(f"there is no page at {request.url.path}")
    else:
        error = DomainError(str(exc.detail))
        error.status_code, error.code = exc.status_code, "_".join(str(exc.detail).lower().split()) or "error"
    if wants_json(request) or is_htmx(request):
        return JSONResponse(
            {"error": error.code, "detail": error.message}, status_code=exc.status_code, headers=exc.headers
        )
    await run_in_threadpool(_who_is_asking, request)
    return render(
        request, "error.html", {"error": error, "unknown_path": exc.status_code == 404}, status_code=exc.status_code
    )


def install(app: FastAPI) -> None:
    app.add_exception_handler(StarletteHTTPException, http_error_response)  # type: ignore[arg-type]

    @app.exception_handler(DomainError)
    async def _handle(request: Request, exc: DomainError) -> Response:
        return domain_error_response(request, exc)

    @app.exception_handler(DataError)
    @app.exception_handler(OverflowError)
    async def _handle_value(request: Request, exc: Exception) -> Response:
        # One line: a client's out-of-range id is not a fault of ours worth a traceback.
        refused = value_error_of(exc)
        log.info("%s %s: %s", request.method, request.url.path, refused.message)
        return domain_error_response(request, refused)

    @app.exception_handler(UnicodeEncodeError)
    async def _handle_unencodable(request: Request, exc: UnicodeEncodeError) -> Response:
        log.info("%s %s: refused text that is not valid Unicode", request.method, request.url.path)
        return domain_error_response(request, UNENCODABLE_TEXT)

    @app.exception_handler(RequestValidationError)
    async def _handle_invalid(request: Request, exc: RequestValidationError) -> Response:
        # FastAPI's own reply would echo NaN or a lone surrogate and fail to encode (a 500).
        return SafeJSONResponse({"detail": jsonable_encoder(exc.errors())}, status_code=422)


UNENCODABLE_TEXT = Invalid(
    "text in the request is not valid Unicode (a lone surrogate such as \\ud800); send UTF-8 text"
)
