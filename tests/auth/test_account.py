"""Issue 15 item 12: "My account" for every role; admins change roles and deactivate users.
Item 18: a wrong password keeps the user name in the login form."""

from __future__ import annotations

import re

import pytest
from fastapi.testclient import TestClient

from tests.conftest import api_client, browser_login


def _csrf(page: str) -> str:
    found = re.search(r'name="csrf_token" value="([^"]+)"', page)
    assert found
    return found.group(1)


@pytest.mark.parametrize("role", ["viewer", "reviewer", "admin"])
def test_every_role_has_a_my_account_page_with_password_and_own_tokens(app, people, role) -> None:
    person = people[role]
    with TestClient(app, follow_redirects=False) as browser:
        csrf = browser_login(browser, person)
        page = browser.get("/account")
        assert page.status_code == 200
        assert 'href="/account"' in page.text  # in the navigation, for every role
        assert 'name="current_password"' in page.text and 'name="new_password"' in page.text
        created = browser.post("/account/tokens", data={"csrf_token": csrf, "name": "laptop"})
        assert created.status_code == 200
        secret = re.search(r"<code>(eb_[^<]+)</code>", created.text)
        assert secret and "laptop" in created.text
        with api_client(app, secret.group(1)) as client:
            assert client.get("/api/me").json()["name"] == person.name
            token_id = client.get("/api/tokens").json()[-1]["id"]
            revoked = browser.post(f"/account/tokens/{token_id}/revoke", data={"csrf_token": csrf})
            assert revoked.status_code == 303
            assert client.get("/api/me").status_code == 401


def test_changing_ones_password_needs_the_current_one_and_ends_other_sessions(app, people) -> None:
    viewer = people["viewer"]
    with TestClient(app, follow_redirects=False) as other, TestClient(app, follow_redirects=False) as browser:
        browser_login(other, viewer)
        csrf = browser_login(browser, viewer)
        with api_client(app, viewer.token) as client:
            wrong = client.post("/api/me/password", json={"current_password": "nope", "new_password": "n3w-pass-word"})
            assert wrong.status_code == 403 and "current password" in wrong.json()["detail"]
            short = client.post("/api/me/password", json={"current_password": viewer.password, "new_password": "short"})
            assert short.status_code == 422
        changed = browser.post(
            "/account/password",
            data={"csrf_token": csrf, "current_password": viewer.password, "new_password": "n3w-pass-word"},
        )
        assert changed.status_code == 303
        assert browser.get("/account").status_code == 200  # this browser stays logged in
        assert other.get("/account").status_code == 303  # the other session ended
    with TestClient(app, follow_redirects=False) as fresh:
        viewer.password = "n3w-pass-word"
        browser_login(fresh, viewer)
        assert fresh.get("/account").status_code == 200


def test_an_admin_changes_a_role_and_deactivation_stops_sessions_and_tokens_at_once(app, people, as_admin) -> None:
    viewer = people["viewer"]
    with TestClient(app, follow_redirects=False) as browser, api_client(app, viewer.token) as client:
        browser_login(browser, viewer)
        assert client.post("/api/jobs/demo", json={"seconds": 0, "steps": 1}).status_code == 403
        promoted = as_admin.patch(f"/api/users/{viewer.user_id}", json={"role": "reviewer"})
        assert promoted.status_code == 200 and promoted.json()["role"] == "reviewer"
        assert client.post("/api/jobs/demo", json={"seconds": 0, "steps": 1}).status_code == 202

        off = as_admin.patch(f"/api/users/{viewer.user_id}", json={"active": False})
        assert off.status_code == 200 and off.json()["is_active"] is False
        assert client.get("/api/me").status_code == 401
        assert browser.get("/datasets").status_code == 303  # back to the login page
        assert as_admin.patch(f"/api/users/{viewer.user_id}", json={"active": True}).json()["is_active"] is True
        assert client.get("/api/me").status_code == 200  # the token works again; the session was ended


def test_role_changes_are_for_admins_and_never_leave_no_active_admin(people, as_reviewer, as_admin) -> None:
    admin = people["admin"]
    assert as_reviewer.patch(f"/api/users/{people['viewer'].user_id}", json={"role": "admin"}).status_code == 403
    assert as_admin.patch(f"/api/users/{admin.user_id}", json={"active": False}).status_code == 409
    assert as_admin.patch(f"/api/users/{admin.user_id}", json={"role": "viewer"}).status_code == 409
    assert as_admin.patch(f"/api/users/{people['viewer'].user_id}", json={"role": "boss"}).status_code == 422
    assert as_admin.patch("/api/users/999999", json={"role": "viewer"}).status_code == 404


def test_the_users_page_changes_roles_and_deactivates(app, people) -> None:
    reviewer = people["reviewer"]
    with TestClient(app, follow_redirects=False) as browser:
        csrf = browser_login(browser, people["admin"])
        page = browser.get("/users")
        assert f'action="/users/{reviewer.user_id}"' in page.text
        done = browser.post(f"/users/{reviewer.user_id}", data={"csrf_token": csrf, "role": "viewer", "active": ""})
        assert done.status_code == 303
        listed = {u["name"]: u for u in browser.get("/api/users").json()}
        assert listed[reviewer.name]["role"] == "viewer" and listed[reviewer.name]["is_active"] is False


def test_a_wrong_password_keeps_the_user_name(anon, people) -> None:
    page = anon.get("/login")
    form = {"name": people["admin"].name, "password": "nope", "csrf_token": _csrf(page.text)}
    response = anon.post("/login", data=form)
    assert response.status_code == 401
    assert f'value="{people["admin"].name}"' in response.text
