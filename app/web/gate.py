"""The request gate: a body is read only from someone whose credentials the database knows, only of a type its
route takes, and only up to its route's limit (files for upload routes, small JSON for the API, a small form for
pages); every refusal is answered before the first body byte is read."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from app.auth import service as auth_service
from app.core.db import READ_MOSTLY_OPTION
from app.core.errors import NotAuthenticated
from app.web.deps import read_session_cookie
from app.web.errors import domain_error_response, json_error

RouteKind = Literal["upload", "chunk", "api", "page"]
# The routes whose bodies are files (multipart uploads, streamed to disk; images to score or to search by; raw
# chunks of a big file).
_UPLOAD_ROUTE = re.compile(
    r"^/api/(?:datasets/[^/]+/(?:uploads|similar)|uploads/[^/]+/(?:files|finish)|runs/[^/]+/predict)/?$"
)
_CHUNK_ROUTE = re.compile(r"^/api/uploads/[^/]+/chunks/?$")
# What a body of each kind of route may be: an upload is multipart, a chunk raw bytes, the API JSON, a page a form.
ACCEPTED_TYPES: dict[RouteKind, frozenset[str]] = {
    "upload": frozenset({"multipart/form-data", "application/x-www-form-urlencoded"}),
    "chunk": frozenset({"application/octet-stream", ""}),  # raw bytes, labelled or not
    "api": frozenset({"application/json"}),
    "page": frozenset({"application/x-www-form-urlencoded", "multipart/form-data", "application/json"}),
}
_FILE_TYPES = frozenset({"multipart/form-data", "application/octet-stream"})
# Bodies that come before any credentials exist: the login form.
_PUBLIC_BODIES = frozenset({("POST", "/login")})


def route_kind(path: str) -> RouteKind:
    if _UPLOAD_ROUTE.match(path):
        return "upload"
    if _CHUNK_ROUTE.match(path):
        return "chunk"
    return "api" if path.startswith("/api/") or path == "/healthz" else "page"


@dataclass(frozen=True)
class BodyLimits:
    file_bytes: int
    json_bytes: int
    form_bytes: int

    def limit_for(self, kind: RouteKind, content_type: str) -> int:
        if kind == "chunk" or (kind == "upload" and content_type in _FILE_TYPES):
            return self.file_bytes  # streamed to disk as it arrives
        return self.json_bytes if kind == "api" else self.form_bytes


def has_body(scope: Scope) -> bool:
    headers = dict(scope.get("headers", []))
    return headers.get(b"content-length", b"0").strip() not in (b"0", b"") or b"transfer-encoding" in headers


def content_type(scope: Scope) -> str:
    raw = dict(scope.get("headers", [])).get(b"content-type", b"")
    return raw.split(b";", 1)[0].strip().lower().decode("latin-1")


class RequestGate:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not has_body(scope):
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        kind = route_kind(request.url.path)
        public = (request.method, request.url.path.rstrip("/") or "/") in _PUBLIC_BODIES
        if not public and not await run_in_threadpool(_credentials_valid, request):
            refused = NotAuthenticated("log in first (no valid session or API token)")
            await domain_error_response(request, refused)(scope, receive, send)
            return
        given = content_type(scope)
        if given not in ACCEPTED_TYPES[kind]:
            accepted = ", ".join(sorted(ACCEPTED_TYPES[kind]))
            response = json_error(415, "unsupported_media_type", f"this route takes {accepted}, not {given or 'none'}")
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)


def _credentials_valid(request: Request) -> bool:
    authorization = request.headers.get("authorization", "")
    bearer = authorization[7:].strip() if authorization.lower().startswith("bearer ") else None
    session_token = None if bearer is not None else read_session_cookie(request)
    if bearer is None and session_token is None:
        return False
    with request.app.state.session_maker() as session:
        session.connection(execution_options={READ_MOSTLY_OPTION: True})
        return auth_service.credentials_valid(session, bearer=bearer, session_token=session_token)
