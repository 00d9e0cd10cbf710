from __future__ import annotations

import secrets
from typing import Annotated

from fastapi import APIRouter, Form, Request
from fastapi.responses import RedirectResponse, Response

from app.auth import service
from app.auth.schemas import TokenCreated, TokenIn, TokenOut, UserIn, UserOut
from app.core.errors import Forbidden, NotAuthenticated
from app.web.deps import (
    DB,
    LOGIN_CSRF_COOKIE,
    SESSION_COOKIE,
    Admin,
    Viewer,
    cookie_signer,
    read_session_cookie,
)
from app.web.templating import render

router = APIRouter()


def _safe_next(target: str | None) -> str:
    # Only same-site paths: "//evil" and "/\evil" would leave the site.
    if target and target.startswith("/") and not target.startswith(("//", "/\\")):
        return target
    return "/"


@router.get("/login", include_in_schema=False)
def login_page(request: Request, next: str = "/", error: str | None = None) -> Response:
    login_csrf = request.cookies.get(LOGIN_CSRF_COOKIE) or secrets.token_urlsafe(24)
    response = render(request, "login.html", {"login_csrf": login_csrf, "next": _safe_next(next), "error": error})
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
    per_minute = request.app.state.settings.login_attempts_per_minute
    service.check_login_allowed(db, client=client, name=name, per_minute=per_minute)
    try:
        user = service.authenticate(db, name=name, password=password)
    except NotAuthenticated:
        service.record_login_failure(db, client=client, name=name)
        return render(
            request,
            "login.html",
            {"login_csrf": expected, "next": _safe_next(next), "error": "Wrong user name or password."},
            status_code=401,
        )
    old = read_session_cookie(request)
    if old:
        service.end_session(db, token=old)
    new = service.start_session(db, user=user, days=request.app.state.settings.session_days)
    response = RedirectResponse(_safe_next(next), status_code=303)
    response.set_cookie(
        SESSION_COOKIE,
        cookie_signer(request).dumps(new.token),
        httponly=True,
        samesite="lax",
        secure=request.app.state.settings.secure_cookies,
        max_age=request.app.state.settings.session_days * 86400,
    )
    response.delete_cookie(LOGIN_CSRF_COOKIE)
    return response


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
    return render(
        request,
        "users.html",
        {"users": service.list_users(db), "tokens": service.tokens_of(db, user=user), "new_token": None},
    )


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


@router.post("/users/tokens", include_in_schema=False)
def users_token_create(request: Request, db: DB, user: Admin, name: Annotated[str, Form()] = "api") -> Response:
    _, secret = service.create_token(db, user=user, name=name)
    return render(
        request,
        "users.html",
        {"users": service.list_users(db), "tokens": service.tokens_of(db, user=user), "new_token": secret},
    )


@router.get("/api/me", response_model=UserOut)
def api_me(user: Viewer) -> UserOut:
    return UserOut.model_validate(user)


@router.get("/api/users", response_model=list[UserOut])
def api_users(db: DB, user: Admin) -> list[UserOut]:
    return [UserOut.model_validate(u) for u in service.list_users(db)]


@router.post("/api/users", response_model=UserOut, status_code=201)
def api_users_create(body: UserIn, db: DB, user: Admin) -> UserOut:
    return UserOut.model_validate(service.create_user(db, name=body.name, role=body.role, password=body.password))


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
