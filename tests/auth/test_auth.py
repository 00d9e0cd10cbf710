from __future__ import annotations

import re

from fastapi.testclient import TestClient
from sqlalchemy import select

from app.models import ApiToken, User, UserSession
from tests.conftest import api_client, browser_login


def test_health_needs_no_login(anon) -> None:
    response = anon.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_anonymous_api_gets_401_and_pages_redirect_to_login(anon) -> None:
    assert anon.get("/api/jobs").status_code == 401
    page = anon.get("/jobs")
    assert page.status_code == 303
    assert page.headers["location"].startswith("/login?next=/jobs")
    assert anon.get("/login").status_code == 200
    assert anon.get("/static/css/app.css").status_code == 200


def test_viewer_cannot_use_reviewer_or_admin_endpoints(as_viewer) -> None:
    assert as_viewer.get("/api/jobs").status_code == 200
    assert as_viewer.post("/api/jobs/demo", json={}).status_code == 403
    assert as_viewer.get("/api/users").status_code == 403
    assert as_viewer.get("/users").status_code == 403


def test_reviewer_is_not_admin(as_reviewer) -> None:
    assert as_reviewer.post("/api/jobs/demo", json={"seconds": 0, "steps": 1}).status_code == 202
    assert as_reviewer.post("/api/users", json={"name": "x", "role": "admin"}).status_code == 403


def test_tokens_work_and_can_be_revoked(app, as_viewer, people) -> None:
    created = as_viewer.post("/api/tokens", json={"name": "script"})
    assert created.status_code == 201
    secret = created.json()["token"]
    with api_client(app, secret) as client:
        assert client.get("/api/me").json()["name"] == people["viewer"].name
        assert as_viewer.delete(f"/api/tokens/{created.json()['id']}").status_code == 200
        revoked = client.get("/api/me")
        assert revoked.status_code == 401
        assert "revoked" in revoked.json()["detail"]


def test_a_viewer_cannot_revoke_someone_elses_token(as_viewer, as_admin) -> None:
    admin_token = as_admin.post("/api/tokens", json={"name": "mine"}).json()
    assert as_viewer.delete(f"/api/tokens/{admin_token['id']}").status_code == 403


def test_passwords_and_tokens_are_never_stored_in_clear(db, people) -> None:
    for person in people.values():
        user = db.scalar(select(User).where(User.name == person.name))
        assert user is not None and user.password_hash is not None
        assert person.password not in user.password_hash
        assert user.password_hash.startswith("$argon2")
        hashes = [t.token_hash for t in db.scalars(select(ApiToken).where(ApiToken.user_id == user.id))]
        assert person.token not in hashes and all(len(h) == 64 for h in hashes)


def test_login_sets_a_hardened_cookie_and_rotates_the_session(app, people, db) -> None:
    with TestClient(app, follow_redirects=False) as client:
        browser_login(client, people["reviewer"])
        first = client.cookies.get("eb_session")
        browser_login(client, people["reviewer"])
        assert client.cookies.get("eb_session") != first  # a new session id at each login
        page = client.get("/login")
        assert page.status_code == 200
    with TestClient(app, follow_redirects=False) as client:
        page = client.get("/login")
        csrf = re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)  # type: ignore[union-attr]
        response = client.post(
            "/login",
            data={"name": people["admin"].name, "password": people["admin"].password, "csrf_token": csrf},
        )
        cookie = response.headers["set-cookie"]
        assert "HttpOnly" in cookie and "SameSite=lax" in cookie.replace("samesite", "SameSite")


def test_wrong_password_is_refused_without_saying_which_part_was_wrong(anon, people) -> None:
    page = anon.get("/login")
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)  # type: ignore[union-attr]
    response = anon.post("/login", data={"name": people["admin"].name, "password": "nope", "csrf_token": csrf})
    assert response.status_code == 401
    assert "Wrong user name or password" in response.text
    assert "eb_session" not in response.headers.get("set-cookie", "")


def test_form_post_without_csrf_token_is_refused(app, people) -> None:
    with TestClient(app, follow_redirects=False) as client:
        token = browser_login(client, people["reviewer"])
        refused = client.post("/jobs/demo")
        assert refused.status_code == 403
        assert "CSRF" in refused.text
        accepted = client.post("/jobs/demo", headers={"x-csrf-token": token, "hx-request": "true"})
        assert accepted.status_code == 200
        wrong = client.post("/jobs/demo", data={"csrf_token": "forged"})
        assert wrong.status_code == 403


def test_login_form_without_its_csrf_token_is_refused(anon, people) -> None:
    anon.get("/login")
    response = anon.post("/login", data={"name": people["admin"].name, "password": people["admin"].password})
    assert response.status_code == 403


def test_logout_ends_the_session(app, people, db) -> None:
    with TestClient(app, follow_redirects=False) as client:
        token = browser_login(client, people["viewer"])
        before = db.scalars(select(UserSession).where(UserSession.user_id == people["viewer"].user_id)).all()
        assert len(before) == 1
        assert client.post("/logout", data={"csrf_token": token}).status_code == 303
        assert client.get("/jobs").status_code == 303


def test_login_is_rate_limited(anon, people) -> None:
    page = anon.get("/login")
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)  # type: ignore[union-attr]
    statuses = [
        anon.post("/login", data={"name": "admin-x", "password": "bad", "csrf_token": csrf}).status_code
        for _ in range(12)
    ]
    assert statuses[:10] == [401] * 10
    assert statuses[-1] == 429


def test_open_redirect_after_login_is_refused(anon, people) -> None:
    page = anon.get("/login?next=//evil.example")
    assert 'value="//evil.example"' not in page.text


def test_security_headers_are_set(anon) -> None:
    response = anon.get("/login")
    csp = response.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp and "frame-ancestors 'none'" in csp
    assert response.headers["x-content-type-options"] == "nosniff"


def test_admin_users_page_lists_users_and_escapes_names(app, people, db) -> None:
    from app.auth import service

    service.create_user(db, name="<script>alert(1)</script>", role="viewer")
    db.commit()
    with TestClient(app, follow_redirects=False) as client:
        browser_login(client, people["admin"])
        page = client.get("/users")
        assert page.status_code == 200
        assert "<script>alert(1)</script>" not in page.text
        assert "&lt;script&gt;" in page.text


def test_a_token_records_when_it_was_last_used_without_a_write_per_call(app, as_viewer) -> None:
    created = as_viewer.post("/api/tokens", json={"name": "script"}).json()

    def last_used() -> str | None:
        listed = as_viewer.get("/api/tokens").json()
        return next(token for token in listed if token["id"] == created["id"])["last_used_at"]

    assert last_used() is None
    with api_client(app, created["token"]) as client:
        assert client.get("/api/me").status_code == 200
        first = last_used()
        assert first is not None
        assert client.get("/api/me").status_code == 200
        assert last_used() == first


def test_my_account_shows_when_each_token_was_last_used(app, people) -> None:
    admin = people["admin"]
    with api_client(app, admin.token) as client:
        assert client.get("/api/me").status_code == 200
    with TestClient(app, follow_redirects=False) as browser:
        browser_login(browser, admin)
        page = browser.get("/account").text
    row = re.search(r"<tr><td>test</td>.*?</tr>", page, re.S)
    assert row, page
    cells = re.findall(r"<td>([^<]*)</td>", row.group(0))
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d", cells[-2]), cells  # last used, to the minute
    assert cells[-1] == "–"  # not revoked (the last cell holds the Revoke button)
