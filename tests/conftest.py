"""Shared fixtures: every DB test runs on SQLite and on the real Postgres, inside a transaction that is
rolled back at the end; the schema always comes from ``alembic upgrade head``."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.orm import Session, sessionmaker

from app.core.db import make_engine
from app.core.migrate import upgrade_to_head
from app.core.settings import Settings, get_settings, normalise_database_url

POSTGRES_URL = os.environ.get("ERRORBOOK_TEST_POSTGRES_URL")
BACKENDS = ["sqlite", "postgres"]


def pytest_report_header(config: pytest.Config) -> str:
    if POSTGRES_URL:
        return f"errorbook: Postgres tests run against {POSTGRES_URL}"
    return "errorbook: ERRORBOOK_TEST_POSTGRES_URL is unset: ALL POSTGRES TESTS WILL BE SKIPPED"


@dataclass
class FreshDatabase:
    """A brand-new database at the newest schema, reachable from other processes by URL."""

    backend: str
    url: str
    engine: Engine


def _new_database(backend: str, tmp_dir: Path) -> Iterator[FreshDatabase]:
    if backend == "sqlite":
        url = f"sqlite:///{tmp_dir / f'errorbook-{uuid.uuid4().hex[:8]}.db'}"
        engine = make_engine(url)
        upgrade_to_head(engine)
        yield FreshDatabase(backend, url, engine)
        engine.dispose()
        return
    if not POSTGRES_URL:
        pytest.skip("ERRORBOOK_TEST_POSTGRES_URL is unset: Postgres test skipped")
    schema = f"eb_test_{uuid.uuid4().hex[:10]}"
    admin = create_engine(normalise_database_url(POSTGRES_URL), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    sep = "&" if "?" in POSTGRES_URL else "?"
    url = normalise_database_url(POSTGRES_URL) + f"{sep}options=-csearch_path%3D{schema}"
    engine = make_engine(url)
    upgrade_to_head(engine)
    try:
        yield FreshDatabase(backend, url, engine)
    finally:
        engine.dispose()
        with admin.connect() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture(scope="session", params=BACKENDS)
def session_database(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[FreshDatabase]:
    """One migrated database per backend for the whole run; tests roll back their changes."""
    yield from _new_database(request.param, tmp_path_factory.mktemp(request.param))


@pytest.fixture(params=BACKENDS)
def fresh_database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[FreshDatabase]:
    """A database of its own, for tests where other processes must see committed rows."""
    yield from _new_database(request.param, tmp_path)


@pytest.fixture
def backend(session_database: FreshDatabase) -> str:
    return session_database.backend


@pytest.fixture
def session_maker(session_database: FreshDatabase) -> Iterator[sessionmaker[Session]]:
    """Sessions joined to an outer transaction: their commits become savepoints, rolled back at the end."""
    connection = session_database.engine.connect()
    outer = connection.begin()
    try:
        yield sessionmaker(bind=connection, join_transaction_mode="create_savepoint", expire_on_commit=False)
    finally:
        outer.rollback()
        connection.close()


@pytest.fixture
def db(session_maker: sessionmaker[Session]) -> Iterator[Session]:
    session = session_maker()
    try:
        yield session
    finally:
        session.close()


@pytest.fixture(autouse=True)
def _own_data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Code that reads the settings from the environment (jobs run inline, the CLI) writes under the test's
    tmp dir, never into an ``errorbook-data`` beside the checkout."""
    monkeypatch.setenv("ERRORBOOK_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("ERRORBOOK_STATE_DIR", str(tmp_path / "state"))
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


@pytest.fixture
def settings(tmp_path: Path, session_database: FreshDatabase) -> Settings:
    return Settings(data_dir=tmp_path / "data", database_url=session_database.url)


@pytest.fixture
def app(settings: Settings, session_maker: sessionmaker[Session]):  # type: ignore[no-untyped-def]
    from app.web.app import create_app

    return create_app(settings, session_maker=session_maker)


@pytest.fixture
def anon(app) -> Iterator[TestClient]:  # type: ignore[no-untyped-def]
    with TestClient(app, base_url="http://testserver", follow_redirects=False) as client:
        yield client


@dataclass
class Person:
    user_id: int
    name: str
    role: str
    token: str
    password: str


@pytest.fixture
def people(db: Session) -> dict[str, Person]:
    """One user of each role, committed (to the test's savepoint), with an API token each."""
    from app.auth import service

    found: dict[str, Person] = {}
    for role in ("viewer", "reviewer", "admin"):
        password = f"{role}-password-123"
        user = service.create_user(db, name=f"{role}-{uuid.uuid4().hex[:6]}", role=role, password=password)
        _, token = service.create_token(db, user=user, name="test")
        found[role] = Person(user.id, user.name, role, token, password)
    db.commit()
    return found


def api_client(app, token: str) -> TestClient:  # type: ignore[no-untyped-def]
    return TestClient(app, headers={"authorization": f"Bearer {token}"}, follow_redirects=False)


@pytest.fixture
def as_viewer(app, people) -> Iterator[TestClient]:  # type: ignore[no-untyped-def]
    with api_client(app, people["viewer"].token) as client:
        yield client


@pytest.fixture
def as_reviewer(app, people) -> Iterator[TestClient]:  # type: ignore[no-untyped-def]
    with api_client(app, people["reviewer"].token) as client:
        yield client


@pytest.fixture
def as_admin(app, people) -> Iterator[TestClient]:  # type: ignore[no-untyped-def]
    with api_client(app, people["admin"].token) as client:
        yield client


def browser_login(client: TestClient, person: Person) -> str:
    """Log in through the form like a browser; returns the page CSRF token."""
    import re

    page = client.get("/login")
    login_csrf = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
    assert login_csrf
    response = client.post(
        "/login", data={"name": person.name, "password": person.password, "csrf_token": login_csrf.group(1)}
    )
    assert response.status_code == 303, response.text
    home = client.get("/")
    token = re.search(r'<meta name="csrf-token" content="([^"]*)"', home.text)
    assert token
    return token.group(1)
