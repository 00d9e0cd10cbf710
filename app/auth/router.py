from __future__ import annotations

import secrets
from typing import Annotated

from fastapi import APIRouter, Form, Request
from fastapi.responses import RedirectResponse, Response

from app.auth import service
from app.auth.schemas import PasswordChange, TokenCreated, TokenIn, TokenOut, UserIn, UserOut, UserPatch
from app.core.errors import Forbidden, NotAuthenticated
from app.models import User
from app.models.user import ROLES
from app.web.deps import (
    DB,
    LOGIN_CSRF_COOKIE,
    SESSION_COOKIE,
    Admin,
    Viewer,
    cookie_signer,
    read_session_cookie,
    read_signed_cookie,
)
from app.web.templating import render

router = APIRouter()


def _safe_next(target: str | None) -> str:
    # Only same-site paths: "//evil" and "/\evil" would leave the site.
    if target and target.startswith("/") and not target.startswith(("//", "/\\")):
        return target
    return "/"


# What /login?error=<code> may say: a link can pick a message, never write one.
LOGIN_MESSAGES = {
    "expired": "Your session has expired; log in again.",
    "logged_out": "You are logged out.",
}
KNOWN_BROWSER_COOKIE = "eb_known"
_KNOWN_BROWSER_SALT = "known-browser"
KNOWN_BROWSER_DAYS = 365


@router.get("/login", include_in_schema=False)
def login_page(request: Request, next: str = "/", error: str | None = None) -> Response:
    login_csrf = request.cookies.get(LOGIN_CSRF_COOKIE) or secrets.token_urlsafe(24)
    message = LOGIN_MESSAGES.get(error or "")
    response = render(
        request, "login.html", {"login_csrf": login_csrf, "next": _safe_next(next), "error": message, "name": ""}
    )
    response.set_cookie(
        LOGIN_CSRF_COOKIE,
        login_csrf,
        httponly=True,
        samesite="lax",
        secure=request.app.state.settings.secure_cookies,
        max_age=3600,
    )
    return response


@router.post("/login", include_in_schema=False)
def login(
    request: Request,
    db: DB,
    name: Annotated[str, Form()],
    password: Annotated[str, Form()],
    csrf_token: Annotated[str, Form()] = "",
    next: Annotated[str, Form()] = "/",
) -> Response:
    expected = request.cookies.get(LOGIN_CSRF_COOKIE, "")
    if not expected or not secrets.compare_digest(expected, csrf_token):
        raise Forbidden("the login form expired; reload the page and try again")
    client = request.client.host if request.client else "?"
    settings = request.app.state.settings
    limits = service.LoginLimits(
        per_minute=settings.login_attempts_per_minute,
        per_name=settings.login_failures_per_name,
        max_delay_seconds=settings.login_max_delay_seconds,
    )
    known = _known_browser_of(request) == service.name_key(name)
    service.check_login_allowed(db, client=client, name=name, limits=limits, known_browser=known)
    try:
        user = service.authenticate(db, name=name, password=password)
    except NotAuthenticated:
        service.record_login_failure(db, client=client, name=name)
        return render(
            request,
            "login.html",
            # The name stays filled in: only the password needs typing again.
            {"login_csrf": expected, "next": _safe_next(next), "error": "Wrong user name or password.", "name": name},
            status_code=401,
        )
    old = read_session_cookie(request)
    if old:
        service.end_session(db, token=old)
    response = _with_new_session(request, db, user, _safe_next(next))
    response.delete_cookie(LOGIN_CSRF_COOKIE)
    # This browser has logged in as this user: a stranger's failed guesses at the name do not slow it down.
    response.set_cookie(
        KNOWN_BROWSER_COOKIE,
        cookie_signer(request, salt=_KNOWN_BROWSER_SALT).dumps(service.name_key(user.name)),
        httponly=True,
        samesite="lax",
        secure=settings.secure_cookies,
        max_age=KNOWN_BROWSER_DAYS * 86400,
    )
    return response


def _with_new_session(request: Request, db: DB, user: User, target: str) -> Response:
    """A redirect to `target` carrying the cookie of a fresh session for `user`."""
    new = service.start_session(db, user=user, days=request.app.state.settings.session_days)
    response = RedirectResponse(target, status_code=303)
    response.set_cookie(
        SESSION_COOKIE,
        cookie_signer(request).dumps(new.token),
        httponly=True,
        samesite="lax",
        secure=request.app.state.settings.secure_cookies,
        max_age=request.app.state.settings.session_days * 86400,
    )
    return response


def _known_browser_of(request: Request) -> str | None:
    return read_signed_cookie(request, KNOWN_BROWSER_COOKIE, salt=_KNOWN_BROWSER_SALT)


@router.post("/logout", include_in_schema=False)
def logout(request: Request, db: DB, user: Viewer) -> Response:
    token = read_session_cookie(request)
    if token:
        service.end_session(db, token=token)
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(SESSION_COOKIE)
    return response


@router.get("/users", include_in_schema=False)
def users_page(request: Request, db: DB, user: Admin) -> Response:
    return render(request, "users.html", {"users": service.list_users(db), "roles": ROLES})


@router.post("/users", include_in_schema=False)
def users_create(
    request: Request,
    db: DB,
    user: Admin,
    name: Annotated[str, Form()],
    role: Annotated[str, Form()],
    password: Annotated[str, Form()],
) -> Response:
    service.create_user(db, name=name, role=role, password=password)
    return RedirectResponse("/users", status_code=303)


@router.post("/users/{user_id}", include_in_schema=False)
def users_update(
    user_id: int,
    db: DB,
    user: Admin,
    role: Annotated[str, Form()],
    active: Annotated[str | None, Form()] = None,  # a checkbox: absent (or empty) when unticked
) -> Response:
    service.update_user(db, actor=user, user_id=user_id, role=role, active=bool(active))
    return RedirectResponse("/users", status_code=303)


def _account(request: Request, db: DB, user: User, **extra: object) -> Response:
    context = {"tokens": service.tokens_of(db, user=user), "new_token": None, "changed": False, **extra}
    return render(request, "account.html", context)


@router.get("/account", include_in_schema=False)
def account_page(request: Request, db: DB, user: Viewer, changed: bool = False) -> Response:
    return _account(request, db, user, changed=changed)


@router.post("/account/password", include_in_schema=False)
def account_password(
    request: Request,
    db: DB,
    user: Viewer,
    current_password: Annotated[str, Form()],
    new_password: Annotated[str, Form()],
) -> Response:
    service.change_own_password(db, user=user, current_password=current_password, new_password=new_password)
    # Every session ended with the old password; this browser gets a new one and stays logged in.
    return _with_new_session(request, db, user, "/account?changed=true")


@router.post("/account/tokens", include_in_schema=False)
def account_token_create(request: Request, db: DB, user: Viewer, name: Annotated[str, Form()] = "api") -> Response:
    _, secret = service.create_token(db, user=user, name=name)
    return _account(request, db, user, new_token=secret)


@router.post("/account/tokens/{token_id}/revoke", include_in_schema=False)
def account_token_revoke(token_id: int, db: DB, user: Viewer) -> Response:
    service.revoke_token(db, actor=user, token_id=token_id)
    return RedirectResponse("/account", status_code=303)


@router.get("/api/me", response_model=UserOut)
def api_me(user: Viewer) -> UserOut:
    return UserOut.model_validate(user)


@router.get("/api/users", response_model=list[UserOut])
def api_users(db: DB, user: Admin) -> list[UserOut]:
    return [UserOut.model_validate(u) for u in service.list_users(db)]


@router.post("/api/users", response_model=UserOut, status_code=201)
def api_users_create(body: UserIn, db: DB, user: Admin) -> UserOut:
    return UserOut.model_validate(service.create_user(db, name=body.name, role=body.role, password=body.password))


@router.patch("/api/users/{user_id}", response_model=UserOut)
def api_users_update(user_id: int, body: UserPatch, db: DB, user: Admin) -> UserOut:
    return UserOut.model_validate(
        service.update_user(db, actor=user, user_id=user_id, role=body.role, active=body.active)
    )


@router.post("/api/me/password", status_code=204)
def api_me_password(body: PasswordChange, db: DB, user: Viewer) -> Response:
    """Change your own password (the current one is needed); every session of yours ends, tokens keep working."""
    service.change_own_password(db, user=user, current_password=body.current_password, new_password=body.new_password)
    return Response(status_code=204)


@router.get("/api/tokens", response_model=list[TokenOut])
def api_tokens(db: DB, user: Viewer) -> list[TokenOut]:
    return [TokenOut.model_validate(t) for t in service.tokens_of(db, user=user)]


@router.post("/api/tokens", response_model=TokenCreated, status_code=201)
def api_tokens_create(body: TokenIn, db: DB, user: Viewer) -> TokenCreated:
    row, secret = service.create_token(db, user=user, name=body.name)
    return TokenCreated(id=row.id, name=row.name, token=secret)


@router.delete("/api/tokens/{token_id}", response_model=TokenOut)
def api_tokens_revoke(token_id: int, db: DB, user: Viewer) -> TokenOut:
    return TokenOut.model_validate(service.revoke_token(db, actor=user, token_id=token_id))
