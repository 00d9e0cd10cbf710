"""Request dependencies: the per-request unit of work and who is asking (session cookie or API token)."""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Annotated, Any, TypeVar

from fastapi import Depends, Request
from itsdangerous import BadSignature, URLSafeSerializer
from sqlalchemy.orm import Session

from app.auth import service as auth_service
from app.core.db import READ_MOSTLY_OPTION, committing
from app.core.errors import Forbidden, NotAuthenticated
from app.core.settings import Settings
from app.core.storage import BlobStore
from app.models import User

SESSION_COOKIE = "eb_session"
_READS_ONLY = "errorbook_reads_only"
Endpoint = TypeVar("Endpoint", bound=Callable[..., Any])


@dataclass(frozen=True)
class Actor:
    """Who is asking, detached from the ORM so error pages can render after a rollback."""

    id: int
    name: str
    role: str


LOGIN_CSRF_COOKIE = "eb_login_csrf"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def get_settings_dep(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def get_blobs_dep(request: Request) -> BlobStore:
    blobs: BlobStore = request.app.state.blobs
    return blobs


def reads_only(endpoint: Endpoint) -> Endpoint:
    """Mark a POST route that writes nothing (a live preview): its transaction begins as a read, so on SQLite
    it does not hold the write lock that every relabel and tag waits for."""
    setattr(endpoint, _READS_ONLY, True)  # noqa: B010  (an attribute on a function)
    return endpoint


def _get_db(request: Request) -> Iterator[Session]:
    """The one commit point: commit when the route returns, roll back when it raises."""
    session: Session = request.app.state.session_maker()
    route = request.scope.get("route")
    if request.method in SAFE_METHODS or getattr(getattr(route, "endpoint", None), _READS_ONLY, False):
        session.connection(execution_options={READ_MOSTLY_OPTION: True})
    with committing(session):
        yield session


DB = Annotated[Session, Depends(_get_db, scope="function")]
# The app's settings, for routes to hand to services: nothing below the routes reads a global settings object.
AppSettings = Annotated[Settings, Depends(get_settings_dep)]


def cookie_signer(request: Request, *, salt: str = "session") -> URLSafeSerializer:
    return URLSafeSerializer(request.app.state.secret_key, salt=salt)


def read_signed_cookie(request: Request, name: str, *, salt: str) -> str | None:
    """The value of a cookie we signed with ``salt``; None when it is missing or its signature does not hold."""
    raw = request.cookies.get(name)
    if not raw:
        return None
    try:
        return str(cookie_signer(request, salt=salt).loads(raw))
    except BadSignature:
        return None


def read_session_cookie(request: Request) -> str | None:
    return read_signed_cookie(request, SESSION_COOKIE, salt="session")


async def _submitted_csrf(request: Request) -> str | None:
    if request.method in SAFE_METHODS:
        return None
    header = request.headers.get("x-csrf-token")
    if header:
        return header
    content_type = request.headers.get("content-type", "")
    if content_type.startswith(("application/x-www-form-urlencoded", "multipart/form-data")):
        form = await request.form()
        value = form.get("csrf_token")
        return value if isinstance(value, str) else None
    return None


def _current_user(request: Request, db: DB, submitted_csrf: Annotated[str | None, Depends(_submitted_csrf)]) -> User:
    authorization = request.headers.get("authorization", "")
    if authorization.lower().startswith("bearer "):
        user = auth_service.resolve_token(db, secret=authorization[7:].strip())
        if user is None:
            raise NotAuthenticated("the API token is unknown or revoked")
        request.state.user = Actor(user.id, user.name, user.role)
        return user
    token = read_session_cookie(request)
    resolved = auth_service.resolve_session(db, token=token) if token else None
    if resolved is None:
        raise NotAuthenticated("log in first")
    user, user_session = resolved
    request.state.user = Actor(user.id, user.name, user.role)
    request.state.csrf_token = user_session.csrf_token
    if request.method not in SAFE_METHODS and not (
        submitted_csrf and secrets.compare_digest(submitted_csrf, user_session.csrf_token)
    ):
        raise Forbidden("the form's CSRF token is missing or wrong; reload the page and try again")
    return user


def _require(role: str):  # noqa: ANN202  (FastAPI reads the inner signature)
    # async: a check without I/O runs on the event loop rather than taking one more trip through the thread pool.
    async def dependency(user: Annotated[User, Depends(_current_user)]) -> User:
        if not auth_service.role_at_least(user, role):
            raise Forbidden(f"this needs the {role} role; you are {user.role}")
        return user

    dependency.__name__ = f"require_{role}"
    return dependency


Viewer = Annotated[User, Depends(_require("viewer"))]
Reviewer = Annotated[User, Depends(_require("reviewer"))]
Admin = Annotated[User, Depends(_require("admin"))]
