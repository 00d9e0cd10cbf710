"""Authorization over the whole route table, generated from the app so a new route cannot be forgotten."""

from __future__ import annotations

import re

from fastapi.routing import APIRoute

PUBLIC = {("GET", "/login"), ("POST", "/login"), ("GET", "/healthz"), ("GET", "/api/docs"), ("GET", "/favicon.ico")}
ROLE_OF_DEPENDENCY = {"require_viewer": "viewer", "require_reviewer": "reviewer", "require_admin": "admin"}
SAFE = {"GET", "HEAD", "OPTIONS"}


def _roles(dependant) -> set[str]:  # type: ignore[no-untyped-def]
    found = set()
    for sub in dependant.dependencies:
        name = getattr(sub.call, "__name__", "")
        if name in ROLE_OF_DEPENDENCY:
            found.add(ROLE_OF_DEPENDENCY[name])
        found |= _roles(sub)
    return found


def api_routes(app) -> list[tuple[str, APIRoute]]:  # type: ignore[no-untyped-def]
    """(full path, route) for every API route, also those inside included routers.

    Newer FastAPI keeps included routers as one `app.routes` entry each, so a plain walk over `app.routes` sees
    only the routes declared on the app itself: flatten through FastAPI's own iterator where it has one."""
    try:
        from fastapi.routing import iter_route_contexts
    except ImportError:  # older FastAPI copies every included route into app.routes
        return [(route.path, route) for route in app.routes if isinstance(route, APIRoute)]
    return [
        (str(context.path), context.original_route)
        for context in iter_route_contexts(app.routes)
        if isinstance(context.original_route, APIRoute)
    ]


def _routes(app) -> list[tuple[str, str, set[str]]]:  # type: ignore[no-untyped-def]
    rows = []
    for path, route in api_routes(app):
        for method in sorted(route.methods):
            rows.append((method, path, _roles(route.dependant)))
    return rows


def test_the_matrix_sees_every_route_of_the_api_schema(app) -> None:
    seen = {(method, path) for method, path, _roles_needed in _routes(app)}
    documented = {
        (method.upper(), path) for path, operations in app.openapi()["paths"].items() for method in operations
    }
    assert documented and documented <= seen
    assert {("GET", "/datasets/{dataset_id}"), ("POST", "/runs/{run_id}/review")} <= seen  # pages too


def _concrete(path: str) -> str:
    return re.sub(r"\{[^}]+\}", "1", path)


def test_every_route_declares_exactly_one_role(app) -> None:
    missing = [
        (method, path) for method, path, roles in _routes(app) if (method, path) not in PUBLIC and len(roles) != 1
    ]
    assert missing == []


def test_anonymous_requests_are_refused_everywhere(anon, app) -> None:
    for method, path, _roles_needed in _routes(app):
        if (method, path) in PUBLIC:
            continue
        response = anon.request(method, _concrete(path))
        if path.startswith("/api/"):
            assert response.status_code == 401, (method, path, response.status_code)
        else:
            assert response.status_code in (303, 401), (method, path, response.status_code)
            if response.status_code == 303:
                assert response.headers["location"].startswith("/login")


def test_viewers_are_refused_on_every_route_that_changes_or_administers(as_viewer, app) -> None:
    for method, path, roles in _routes(app):
        if (method, path) in PUBLIC or roles == {"viewer"}:
            continue
        response = as_viewer.request(method, _concrete(path))
        assert response.status_code == 403, (method, path, response.status_code)


def test_reviewers_are_refused_on_admin_routes(as_reviewer, app) -> None:
    for method, path, roles in _routes(app):
        if roles == {"admin"}:
            response = as_reviewer.request(method, _concrete(path))
            assert response.status_code == 403, (method, path, response.status_code)


def test_state_changing_routes_need_the_csrf_token_with_a_session_cookie(app, people) -> None:
    from fastapi.testclient import TestClient

    from tests.conftest import browser_login

    with TestClient(app, follow_redirects=False) as client:
        browser_login(client, people["admin"])
        for method, path, _roles_needed in _routes(app):
            if method in SAFE or (method, path) in PUBLIC:
                continue
            response = client.request(method, _concrete(path))
            assert response.status_code == 403, (method, path, response.status_code)
            assert "CSRF" in response.text, (method, path)
