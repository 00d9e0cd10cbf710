"""Login limits against a real `errorbook serve` on loopback: X-Forwarded-For is believed only from configured
proxies, and failures of one user name from many addresses slow that name down for strangers, never for a
browser that has logged in as that user before."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
from sqlalchemy.orm import Session

from app.auth import service as auth
from app.core.db import get_engine
from app.core.errors import Conflict, Invalid
from app.core.settings import Settings
from tests.live_server import ADMIN, ADMIN_PASSWORD, live_server


def _login(client: httpx.Client, name: str, password: str, address: str | None = None) -> int:
    page = client.get("/login")
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
    assert csrf
    headers = {"x-forwarded-for": address} if address else {}
    form = {"name": name, "password": password, "csrf_token": csrf.group(1)}
    return client.post("/login", data=form, headers=headers).status_code


def test_a_rotated_forwarded_for_header_from_loopback_does_not_reset_the_limit(tmp_path: Path) -> None:
    with live_server(tmp_path, login_attempts_per_minute="3") as server, httpx.Client(base_url=server.url) as client:
        tries = [_login(client, ADMIN, "guess", f"10.0.0.{i}") for i in range(6)]
    assert tries == [401, 401, 401, 429, 429, 429]


def test_failures_of_one_name_from_many_proxied_addresses_slow_strangers_not_the_owner(tmp_path: Path) -> None:
    limits = {"trusted_proxies": "127.0.0.1", "login_attempts_per_minute": "3", "login_failures_per_name": "4"}
    with live_server(tmp_path, **limits) as server:
        with httpx.Client(base_url=server.url) as owner:
            assert _login(owner, ADMIN, ADMIN_PASSWORD, "192.0.2.1") == 303  # the owner's browser, known now
        with httpx.Client(base_url=server.url) as stranger:
            # Behind the trusted proxy each address is its own client: one try each stays under the per-client
            # limit, but the name's failures add up, and past four every try waits.
            tries = [_login(stranger, ADMIN, "guess", f"10.0.0.{i}") for i in range(6)]
            assert tries == [401, 401, 401, 401, 429, 429]
            assert _login(stranger, ADMIN, ADMIN_PASSWORD, "10.9.9.9") == 429  # even the right password waits
            page = stranger.get("/login?error=<b>Your account is locked, call 555-0100</b>")
            assert "555-0100" not in page.text  # ?error= picks a message, never writes one
        with httpx.Client(base_url=server.url, cookies=owner.cookies) as owner_again:
            assert _login(owner_again, ADMIN, ADMIN_PASSWORD, "192.0.2.1") == 303  # not locked out


def test_user_names_and_passwords_follow_one_rule(tmp_path: Path) -> None:
    engine = get_engine(Settings(data_dir=tmp_path / "data"))
    from app.core.migrate import upgrade_to_head

    upgrade_to_head(engine)
    with Session(engine) as session:
        auth.create_user(session, name="admin", role="admin", password="long-enough")
        for look_alike in ("Admin", " ADMIN ", "ａｄｍｉｎ"):
            try:
                auth.create_user(session, name=look_alike, role="viewer")
            except Conflict as error:
                assert "already exists" in error.message
            else:
                raise AssertionError(f"{look_alike!r} was accepted next to 'admin'")
        for invisible in ("admin\u200b", "ad\u202emin", "a\u2028b"):
            try:
                auth.create_user(session, name=invisible, role="viewer")
            except Invalid as error:
                assert "invisible" in error.message
            else:
                raise AssertionError(f"{invisible!r} was accepted")
        try:
            auth.create_user(session, name="short", role="viewer", password="x")
        except Invalid as error:
            assert "at least 8" in error.message
        else:
            raise AssertionError("a 1-character password was accepted")
        assert auth.authenticate(session, name="ADMIN", password="long-enough").name == "admin"
    engine.dispose()
