"""One handler renders every domain error: JSON for the API, a page or an htmx fragment for the UI."""

from __future__ import annotations

from urllib.parse import quote

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response
from markupsafe import escape

from app.core.errors import DomainError, NotAuthenticated
from app.web.templating import is_htmx, render


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


def install(app: FastAPI) -> None:
    @app.exception_handler(DomainError)
    async def _handle(request: Request, exc: DomainError) -> Response:
        return domain_error_response(request, exc)
