"""Security review as tests, next to the authorization matrix and CSRF sweep of test_route_auth.py:

- stored XSS: hostile text in every field a user controls, then every HTML page of the route table rendered;
- path traversal on every file-serving route (images, model downloads, exports, static);
- oversized bodies refused early (files and JSON alike), login rate limiting, session fixation and logout;
- security headers on pages, API answers, files and errors;
- model files loaded only with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import ast
import asyncio
import io
import pickle
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urljoin, urlsplit

import pytest
import torch
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.auth import service as auth
from app.core.settings import PROJECT_ROOT
from app.ml.backbones import IncompatibleCheckpoint, model_from_checkpoint
from app.models import Dataset, Image, Job, Run
from app.web.app import create_app
from tests.conftest import Person, api_client, browser_login
from tests.datasets.conftest import Ingest, ingest, noisy_jpeg  # noqa: F401  (the fixture is used here too)
from tests.factories import make_run
from tests.web.test_route_auth import api_routes

# Breaks out of a quoted attribute, out of a <script> or JSON block, and starts markup of its own.
HOSTILE = "\"'></script><script>alert(1)</script><img src=x onerror=alert(1)>"
# The same for a file name, which cannot hold a "/" (it would be a folder).
HOSTILE_FILE = "\"'><img src=x onerror=alert(1)><script>alert(1)<"
# For names capped at 40 characters (error categories).
HOSTILE_SHORT = "'\"></script><svg onload=alert(1)>"
PAGE_PARAM = re.compile(r"\{(\w+)\}")


# ---- stored XSS -----------------------------------------------------------------------------------------------


class _MarkupAudit(HTMLParser):
    """What a browser would build from a page: any tag or attribute the hostile text managed to create."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.problems: list[str] = []
        self.text: list[str] = []
        self._script_depth = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        for name, value in attrs:
            if name.startswith("on"):
                self.problems.append(f"<{tag} {name}={value!r}>: an event-handler attribute")
            if value is not None:
                self.text.append(value)
                if name in (
                    "href",
                    "src",
                    "action",
                    "formaction",
                    "hx-get",
                    "hx-post",
                ) and value.strip().lower().startswith(("javascript:", "data:text/html", "vbscript:")):
                    self.problems.append(f"<{tag} {name}={value!r}>: a script URL")
        if tag == "script":
            self._script_depth += 1
            if not (values.get("src") or "").startswith("/static/"):
                self.problems.append(f"<script {attrs}>: not one of our static scripts")
        if tag in ("iframe", "object", "embed", "base") or (tag == "meta" and "http-equiv" in values):
            self.problems.append(f"<{tag} {attrs}>: never emitted by our templates")

    def handle_endtag(self, tag: str) -> None:
        if tag == "script":
            self._script_depth = max(0, self._script_depth - 1)

    def handle_data(self, data: str) -> None:
        if self._script_depth and data.strip():
            self.problems.append(f"inline script content {data[:80]!r}")  # a </script> broke out, or inline JSON
        self.text.append(data)


def audit_page(html: str) -> tuple[list[str], str]:
    """(problems, the page's decoded text and attribute values)."""
    parser = _MarkupAudit()
    parser.feed(html)
    parser.close()
    problems = list(parser.problems)
    for raw in ("<script>alert", "<img src=x", "</script><script>", "<svg onload"):
        if raw in html:
            problems.append(f"raw {raw!r} in the page")
    return problems, "\n".join(parser.text)


def test_the_audit_catches_what_it_is_meant_to_catch() -> None:
    """The checker itself: an unescaped payload, in text or in an attribute, is always reported."""
    assert audit_page('<p title="x">fine &lt;script&gt;</p><script src="/static/js/app.js" defer></script>')[0] == []
    assert audit_page(f"<p>{HOSTILE}</p>")[0]
    assert audit_page(f'<div data-label="{HOSTILE}"></div>')[0]  # attribute break-out
    assert audit_page(f'<script src="/static/js/app.js">{{"a": "{HOSTILE}"}}</script>')[0]  # JSON break-out
    assert audit_page('<a href="javascript:alert(1)">x</a>')[0]
    assert audit_page('<script type="application/json">{"a": 1}</script>')[0]  # inline JSON needs a nonce


@dataclass
class HostileWorld:
    """Two datasets full of hostile text: one filled through real uploads, one with a finished run."""

    admin_person: Person
    params: list[dict[str, int]] = field(default_factory=list)  # path parameters; each page is tried with each
    per_route: dict[str, dict[str, int]] = field(default_factory=dict)


def _ok(response: Any, *codes: int) -> Any:
    assert response.status_code in (codes or (200, 201, 202)), (response.request.url, response.text)
    return response.json() if response.headers.get("content-type", "").startswith("application/json") else None


@pytest.fixture
def hostile(ingest: Ingest) -> Iterator[HostileWorld]:  # noqa: F811
    password = "admin-password-123"
    with Session(ingest.engine) as session:
        admin_user = auth.create_user(session, name=f"admin-{uuid.uuid4().hex[:6]}", role="admin", password=password)
        admin_token = auth.create_token(session, user=admin_user, name="test")[1]
        session.commit()
        person = Person(admin_user.id, admin_user.name, "admin", admin_token, password)
    with api_client(ingest.app, admin_token) as admin:
        world = HostileWorld(admin_person=person)
        reviewer = ingest.reviewer

        # Users and API tokens (admin pages).
        _ok(admin.post("/api/users", json={"name": HOSTILE, "role": "viewer", "password": "password-123"}))
        _ok(admin.post("/api/tokens", json={"name": HOSTILE}))

        # A dataset filled through the upload API: hostile dataset name, description, label, source, file names.
        created = _ok(reviewer.post("/api/datasets", json={"name": f"{HOSTILE} uploaded", "description": HOSTILE}))
        dataset = created["id"]
        assert created["name"] == f"{HOSTILE} uploaded"  # stored as typed: escaping is the pages' job
        _ok(reviewer.post(f"/api/datasets/{dataset}/labels", json={"name": f"{HOSTILE} extra"}))
        files = [(f"{HOSTILE_FILE} {i}.jpg", noisy_jpeg(i)) for i in range(12)]
        files += [
            (f"{HOSTILE_FILE} copy.jpg", noisy_jpeg(0)),  # a duplicate, listed by name
            (
                f"{HOSTILE_FILE}.svg",
                f"<svg xmlns='http://www.w3.org/2000/svg' onload='alert(1)'>{HOSTILE}</svg>".encode(),
            ),
            (f"{HOSTILE_FILE}.html", f"<html><body>{HOSTILE}</body></html>".encode()),
        ]
        report = ingest.upload(dataset, files, label=HOSTILE, source=f"{HOSTILE} phone")
        assert report["accepted"] == 12, report
        conflicting = _ok(
            reviewer.post(
                f"/api/datasets/{dataset}/uploads",
                files=[("files", (f"{HOSTILE_FILE} again.jpg", noisy_jpeg(1), "image/jpeg"))],
                data={"label": f"{HOSTILE} extra", "source": f"{HOSTILE} phone"},
            )
        )
        ingest.run_jobs()
        _ok(reviewer.patch(f"/api/datasets/{dataset}", json={"target_source": f"{HOSTILE} phone"}))
        split = _ok(reviewer.post(f"/api/datasets/{dataset}/splits", json={"small_ratios": [0.5, 0.25, 0.25]}))
        ingest.run_jobs()
        images = _ok(reviewer.get(f"/api/datasets/{dataset}/images"))["items"]
        assert any(HOSTILE_FILE in item["filename"] for item in images)
        world.params.append({"upload_id": report["id"]})  # the report listing the refused and duplicate files
        world.params.append(
            {
                "dataset_id": dataset,
                "upload_id": conflicting["upload_id"],
                "image_id": images[0]["id"],
                "split_id": split["split_id"],
                "job_id": split["job_id"],
            }
        )

        # A dataset with a finished run: hostile labels, sources and file names, tags, notes, review reasons.
        with Session(ingest.engine, expire_on_commit=False) as session:
            fixture = make_run(
                session,
                name=f"{HOSTILE} trained",
                label_names=(f"{HOSTILE} a", f"{HOSTILE} b", f"{HOSTILE} c"),
                sizes={"train": 30, "dev": 30, "test": 30},
                error_rate=0.5,
                seed=3,
            )
            for subset_images in fixture.images.values():
                for index, image in enumerate(subset_images):
                    image.filename = f"{HOSTILE_FILE}/{index}.jpg"
                    image.source = f"{HOSTILE} phone"
            _results_as_training_leaves_them(fixture.run, list(fixture.run.label_names))
            fixture.split.counts = {
                subset: {
                    "total": len(fixture.images.get(subset, [])),
                    "by_source": {f"{HOSTILE} phone": len(fixture.images.get(subset, []))},
                    "by_label": {name: 10 if fixture.images.get(subset) else 0 for name in fixture.run.label_names},
                }
                for subset in ("train", "train_dev", "dev", "test")
            }
            fixture.split.warnings = [{"code": "small_class", "message": f"label {HOSTILE} a has few images"}]
            fixture.split.groups = {"count": 0, "straddling": 0, "listed": []}
            fixture.dataset.target_source = f"{HOSTILE} phone"
            fixture.dataset.description = HOSTILE
            job = Job(kind="demo", status="failed", message=HOSTILE, error=HOSTILE, progress=0.5)
            session.add(job)
            session.commit()
        run, run_dataset = fixture.run.id, fixture.dataset.id
        _ok(reviewer.post(f"/api/datasets/{run_dataset}/tags", json={"name": HOSTILE_SHORT}))
        sample = _ok(reviewer.get(f"/api/runs/{run}/errors"))
        tagged = next(item["image_id"] for item in sample["items"] if item["is_error"])
        _ok(
            reviewer.put(
                f"/api/runs/{run}/errors/{tagged}/tags", json={"tags": [HOSTILE_SHORT, "mislabeled"], "note": HOSTILE}
            )
        )
        review = _ok(
            reviewer.post(
                f"/api/datasets/{run_dataset}/reviews",
                json={"run_id": run, "suspicious_per_subset": 4, "correct_per_subset": 1},
            )
        )["review_id"]
        items = _ok(reviewer.get(f"/api/reviews/{review}"))["items"]
        relabeled, excluded = items[0], items[1]
        new_label = next(name for name in (f"{HOSTILE} a", f"{HOSTILE} b") if name != relabeled["label"])
        _ok(
            reviewer.post(
                f"/api/images/{relabeled['image_id']}/label",
                json={
                    "label": new_label,
                    "expected_version": relabeled["label_version"],
                    "review_id": review,
                    "reason": HOSTILE,
                },
            )
        )
        _ok(
            reviewer.post(
                f"/api/images/{excluded['image_id']}/exclude",
                json={"reason": HOSTILE, "expected_version": excluded["label_version"], "review_id": review},
            )
        )
        world.params.append(
            {
                "dataset_id": run_dataset,
                "run_id": run,
                "split_id": fixture.split.id,
                "image_id": relabeled["image_id"],
                "review_id": review,
                "job_id": job.id,
            }
        )
        world.per_route["/runs/{run_id}/errors/{image_id}"] = {"run_id": run, "image_id": tagged}
        for kind in ("thumb", "full"):  # only the uploaded images have files behind them
            world.per_route[f"/images/{{image_id}}/{kind}"] = {"image_id": images[0]["id"]}
        yield world


def _results_as_training_leaves_them(run: Run, labels: list[str]) -> None:
    """The fields a finished training job fills (tables and charts of the run page show the label names)."""
    run.config = {
        "backbone": "simple_cnn",
        "mode": "linear",
        "epochs": 2,
        "lr": 0.01,
        "batch_size": 32,
        "weight_decay": 0.0,
        "seed": 0,
        "human_error": 0.01,
    }
    run.metrics = {s: {"count": 30, "accuracy": 0.5, "error": 0.5, "loss": 0.9} for s in ("train", "dev", "test")}
    run.per_class = {name: {"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 10} for name in labels}
    run.confusion = {"labels": labels, "matrix": [[5 if i == j else 2 for j in labels] for i in labels]}
    run.history = [
        {"epoch": e, "train_loss": 1.0 / e, "dev_loss": 1.1 / e, "train_accuracy": 0.4, "dev_accuracy": 0.4}
        for e in (1, 2)
    ]
    run.diagnosis = {
        "human_error": 0.01,
        "gaps": {"avoidable_bias": 0.49, "variance": 0.0},
        "largest": "avoidable_bias",
        "advice": "a bigger model",
    }
    run.timings = {"total_s": 1.0}


def _page_routes(app: FastAPI) -> list[str]:
    """Every GET route of the UI (not in the API schema) from the route table: new pages are checked unasked."""
    paths = []
    for path, route in api_routes(app):
        if "GET" in route.methods and not route.include_in_schema and path != "/healthz":
            paths.append(path)
    return paths


def _urls(world: HostileWorld, path: str) -> list[str]:
    names = PAGE_PARAM.findall(path)
    choices = [world.per_route[path]] if path in world.per_route else world.params
    urls = []
    for params in choices:
        if all(name in params for name in names):
            urls.append(PAGE_PARAM.sub(lambda m, params=params: str(params[m.group(1)]), path))  # type: ignore[misc]
    return urls


EXTRA_PAGES = [
    # Hostile text that is reflected from the query string rather than stored.
    "/login?next=" + quote("/" + HOSTILE) + "&error=" + quote(HOSTILE),
    "/datasets/{dataset_id}?"
    + "&".join(f"{k}={quote(HOSTILE)}" for k in ("label", "source", "subset", "q", "split_id")),
    "/runs/{run_id}/errors?subset=dev&label=" + quote(f"{HOSTILE} a") + "&predicted=" + quote(f"{HOSTILE} b"),
    "/runs/{run_id}/errors?subset=" + quote(HOSTILE) + "&label=" + quote(HOSTILE),  # refused, with the value shown
    "/runs/new?split_id={split_id}",
    "/runs?dataset_id={dataset_id}",
]


def test_hostile_text_is_escaped_on_every_page(hostile: HostileWorld, ingest: Ingest) -> None:  # noqa: F811
    app = ingest.app
    checked: dict[str, str] = {}
    problems: dict[str, list[str]] = {}
    routes = _page_routes(app)
    assert len(routes) >= 25  # the whole UI, not just the routes declared on the app itself
    targets = [url for path in routes for url in _urls(hostile, path)]
    targets += [url for path in EXTRA_PAGES for url in (_urls(hostile, path) if "{" in path else [path])]
    reflected = {url for path in EXTRA_PAGES for url in (_urls(hostile, path) if "{" in path else [path])}
    targets = list(dict.fromkeys(targets))
    unreached = [path for path in routes if not _urls(hostile, path)]
    assert unreached == [], "pages the hostile world gives no ids for"
    with TestClient(app, follow_redirects=False) as browser:
        browser_login(browser, hostile.admin_person)
        for url in targets:
            for headers in ({}, {"hx-request": "true", "hx-target": "image-grid"}):
                response = browser.get(url, headers=headers)
                if response.status_code == 303 and not response.headers["location"].startswith("/login"):
                    response = browser.get(response.headers["location"], headers=headers)  # e.g. runs of a dataset
                expected = response.status_code < 500 if url in reflected else response.status_code == 200
                assert expected, (url, response.status_code, response.text[:300])
                if not response.headers["content-type"].startswith("text/html"):
                    assert response.headers["content-type"].startswith("image/"), url
                    continue
                label = url + (" (htmx)" if headers else "")
                problems[label], checked[label] = audit_page(response.text)
        # An error page that repeats the hostile text: a dataset name that is taken.
        token = re.search(r'<meta name="csrf-token" content="([^"]*)"', browser.get("/").text)
        assert token
        taken = browser.post("/datasets", data={"name": f"{HOSTILE} uploaded", "csrf_token": token.group(1)})
        assert taken.status_code == 409
        problems["POST /datasets (409)"], checked["POST /datasets (409)"] = audit_page(taken.text)
        fragment = browser.post(
            "/datasets", data={"name": f"{HOSTILE} uploaded"}, headers={"hx-request": "true", "x-csrf-token": "x"}
        )
        assert fragment.status_code == 403 and audit_page(fragment.text)[0] == []

    assert {url: found for url, found in problems.items() if found} == {}
    # The hostile text did reach the pages (as text): the sweep would have seen it had it been unescaped.
    showing = {url for url, text in checked.items() if HOSTILE in text or HOSTILE_FILE in text}
    must_show = [
        "/users",
        "/jobs",
        "/datasets",
        "/datasets/{dataset_id}",
        "/uploads/{upload_id}",
        "/images/{image_id}",
        "/splits/{split_id}",
        "/runs/{run_id}",
        "/runs/{run_id}/errors",
        "/runs/{run_id}/errors/{image_id}",
        "/runs/{run_id}/review",
        "/reviews/{review_id}",
        "/reviews/{review_id}/items/{image_id}",
    ]
    for path in must_show:
        urls = set(_urls(hostile, path))
        assert urls & showing, f"{path}: the hostile text never appeared, so the page was not really checked"


# ---- path traversal and how files are served ------------------------------------------------------------------


def raw_get(app: FastAPI, raw_path: bytes, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    """A GET exactly as an HTTP server hands it to the app: the raw path, percent-decoded once, with no client
    in between to normalise `..` or re-encode anything."""
    target, _, query = raw_path.partition(b"?")
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": unquote(target.decode("ascii")),
        "raw_path": target,
        "root_path": "",
        "query_string": query,
        "headers": [(b"host", b"testserver")] + [(k.encode(), v.encode()) for k, v in (headers or {}).items()],
        "client": ("127.0.0.1", 50000),
        "server": ("testserver", 80),
    }
    messages: list[dict[str, Any]] = []

    async def call() -> None:
        finished = asyncio.Event()
        requested = False

        async def receive() -> dict[str, Any]:
            nonlocal requested
            if not requested:
                requested = True
                return {"type": "http.request", "body": b"", "more_body": False}
            await finished.wait()
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            messages.append(message)
            if message["type"] == "http.response.body" and not message.get("more_body"):
                finished.set()

        await app(scope, receive, send)

    asyncio.run(call())
    start = next(m for m in messages if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in messages if m["type"] == "http.response.body")
    return start["status"], {k.decode().lower(): v.decode() for k, v in start["headers"]}, body


# Each is appended to a file-serving route's prefix; `{secret}` is a file outside every served root.
TRAVERSALS = [
    "../{secret}",
    "..%2f{secret}",
    "%2e%2e/{secret}",
    "%2e%2e%2f{secret}",
    "..%252f{secret}",
    "..\\{secret}",
    "..%5c{secret}",
    "%2f{abs}",
    "{abs}",
    "/{abs}",
    "%00",
    "labels.json%00",
    "labels.json%00.png",
    "..%00/{secret}",
    "%c0%ae%c0%ae/{secret}",
    "....//....//{secret}",
    "model.pt/../../{secret}",
]


def test_no_file_serving_route_reaches_outside_its_root(ingest: Ingest, tmp_path: Path) -> None:  # noqa: F811
    app = ingest.app
    marker = "errorbook-outside-root-" + uuid.uuid4().hex
    outside = tmp_path / "outside.txt"
    outside.write_text(marker)
    signing_key = ingest.settings.secret_key()
    with Session(ingest.engine, expire_on_commit=False) as session:
        fixture = make_run(session, sizes={"train": 4, "dev": 4, "test": 4}, seed=9)
        model_dir = tmp_path / "run-model"
        model_dir.mkdir()
        (model_dir / "labels.json").write_text('["cat", "dog", "fox"]')
        fixture.run.model_path = str(model_dir)
        session.commit()
    dataset_id = ingest.create_dataset()
    report = ingest.upload(dataset_id, [("cat/a.jpg", noisy_jpeg(1))])
    image_id = ingest.reviewer.get(f"/api/datasets/{dataset_id}/images").json()["items"][0]["id"]
    auth_header = ingest.reviewer.headers["authorization"]
    run = fixture.run.id
    served = {
        "static": "/static/",
        "thumb": f"/images/{image_id}/",
        "model": f"/api/runs/{run}/files/",
        "manifest": f"/api/splits/{fixture.split.id}/",
        "images csv": f"/api/datasets/{dataset_id}/",
        "upload report": f"/api/uploads/{report['id']}/",
    }
    relative_secret = quote(str(Path("..") / ".." / ".." / outside.relative_to(outside.anchor)))
    # The routes work with real names, so the refusals below are about the names, not the route.
    assert raw_get(app, b"/static/css/app.css")[0] == 200
    ok_status, ok_headers, ok_body = raw_get(
        app, f"/api/runs/{run}/files/labels.json".encode(), {"authorization": auth_header}
    )
    assert ok_status == 200 and ok_body == b'["cat", "dog", "fox"]'
    assert ok_headers["content-type"] == "application/octet-stream"
    assert ok_headers["content-disposition"].startswith("attachment;")

    leaks = []
    for what, prefix in served.items():
        for pattern in TRAVERSALS:
            suffix = pattern.format(secret=relative_secret, abs=quote(str(outside)).lstrip("/"))
            raw = (prefix + suffix).encode()
            status, _headers, body = raw_get(app, raw, {"authorization": auth_header})
            if status not in (400, 404, 405, 422) or marker.encode() in body or signing_key.encode() in body:
                leaks.append(f"{what}: {raw!r} -> {status} {body[:100]!r}")
        for secret_path in ("secret_key", "errorbook.db", "../secret_key", "..%2fsecret_key"):
            status, _headers, body = raw_get(app, (prefix + secret_path).encode(), {"authorization": auth_header})
            if status == 200 or signing_key.encode() in body:
                leaks.append(f"{what}: {secret_path} -> {status}")
    assert leaks == []


def test_an_accepted_image_is_served_as_an_image_that_cannot_run_script(ingest: Ingest) -> None:  # noqa: F811
    """A valid JPEG with HTML after its end, named .html: accepted (it is a JPEG), but always served as
    image/jpeg, never sniffed, inside a sandbox; an SVG or an HTML file is refused at upload."""
    dataset_id = ingest.create_dataset()
    polyglot = noisy_jpeg(5) + b"<html><script>alert(1)</script></html>"
    report = ingest.upload(
        dataset_id,
        [
            ("cat/page.html", polyglot),
            ("cat/drawing.svg", b"<svg xmlns='http://www.w3.org/2000/svg' onload='alert(1)'/>"),
            ("cat/real.html", b"<!DOCTYPE html><script>alert(1)</script>"),
        ],
    )
    assert report["accepted"] == 1 and {item["name"] for item in report["rejected"]} == {
        "cat/drawing.svg",
        "cat/real.html",
    }
    image_id = ingest.viewer.get(f"/api/datasets/{dataset_id}/images").json()["items"][0]["id"]
    for kind in ("full", "thumb"):
        response = ingest.viewer.get(f"/images/{image_id}/{kind}")
        assert response.status_code == 200
        assert response.headers["content-type"] == "image/jpeg"
        assert response.headers["x-content-type-options"] == "nosniff"
        assert "sandbox" in response.headers["content-security-policy"]
        assert "default-src 'none'" in response.headers["content-security-policy"]
        disposition = response.headers["content-disposition"]
        assert "\n" not in disposition and '"' not in disposition.split(";", 1)[1]


# ---- request size, login throttling, sessions, headers -------------------------------------------------------


@pytest.fixture
def strict_app(settings, session_maker) -> FastAPI:  # type: ignore[no-untyped-def]
    """An app with small, configured limits."""
    strict = settings.model_copy(
        update={
            "max_request_bytes": 300_000,
            "max_json_bytes": 20_000,
            "max_form_bytes": 20_000,
            "login_attempts_per_minute": 3,
        }
    )
    return create_app(strict, session_maker=session_maker)


def test_oversized_json_and_form_bodies_are_refused_before_they_are_read(strict_app, people, db) -> None:  # type: ignore[no-untyped-def]
    token = people["reviewer"].token
    body = b'{"name": "big", "description": "' + b"x" * 30_000 + b'"}'
    before = db.scalar(select(func.count()).select_from(Dataset))
    with api_client(strict_app, token) as client:
        declared = client.post("/api/datasets", content=body, headers={"content-type": "application/json"})
        assert declared.status_code == 413
        assert declared.json() == {"error": "too_large", "detail": "request body is over the 20000 byte limit"}

        def streamed() -> Iterator[bytes]:  # no Content-Length: the cap applies while the body arrives
            for start in range(0, len(body), 4096):
                yield body[start : start + 4096]

        chunked = client.post("/api/datasets", content=streamed(), headers={"content-type": "application/json"})
        assert chunked.status_code == 413
        small = client.post("/api/datasets", json={"name": f"small-{uuid.uuid4().hex[:6]}"})
        assert small.status_code == 201  # under the cap: accepted as usual
        # The same 30 KB as file content fits the (larger) file limit.
        files = client.post("/api/datasets/999999/uploads", files=[("files", ("a.jpg", b"x" * 30_000, "image/jpeg"))])
        assert files.status_code == 404
    # Anonymous oversized bodies are refused by size before anything else, pages' forms too.
    with TestClient(strict_app) as anonymous:
        form = anonymous.post("/login", data={"name": "x" * 30_000, "password": "p"})
        assert form.status_code == 413
    assert db.scalar(select(func.count()).select_from(Dataset)) == before + 1


def _login_form(client: TestClient) -> str:
    found = re.search(r'name="csrf_token" value="([^"]+)"', client.get("/login").text)
    assert found
    return found.group(1)


def test_login_attempts_are_throttled_even_for_the_right_password(strict_app, session_maker, people) -> None:  # type: ignore[no-untyped-def]
    victim, other = people["reviewer"], people["viewer"]
    with TestClient(strict_app, follow_redirects=False) as client:
        csrf = _login_form(client)
        wrong = [
            client.post("/login", data={"name": victim.name, "password": "guess", "csrf_token": csrf}).status_code
            for _ in range(3)
        ]
        assert wrong == [401, 401, 401]
        right = client.post("/login", data={"name": victim.name, "password": victim.password, "csrf_token": csrf})
        assert right.status_code == 429 and "try again" in right.text
        assert "eb_session" not in right.headers.get("set-cookie", "")
        # Changing the case or padding of the name does not reset the count.
        padded = client.post("/login", data={"name": f"  {victim.name.upper()} ", "password": "g", "csrf_token": csrf})
        assert padded.status_code == 429
        # Another account is not locked out by someone guessing at this one.
        fine = client.post("/login", data={"name": other.name, "password": other.password, "csrf_token": csrf})
        assert fine.status_code == 303
    # Another web process (a second replica on the same database) counts the same failures.
    with TestClient(create_app(strict_app.state.settings, session_maker=session_maker)) as replica:
        csrf = _login_form(replica)
        elsewhere = replica.post("/login", data={"name": victim.name, "password": victim.password, "csrf_token": csrf})
        assert elsewhere.status_code == 429


def test_a_session_cookie_planted_before_login_is_replaced_and_dies(app, people) -> None:  # type: ignore[no-untyped-def]
    """Session fixation: an attacker's cookie in the victim's browser is never the session the victim gets."""
    with TestClient(app, follow_redirects=False) as attacker:
        browser_login(attacker, people["viewer"])
        planted = attacker.cookies.get("eb_session")
    assert planted
    with TestClient(app, follow_redirects=False) as victim:
        victim.cookies.set("eb_session", planted, domain="testserver.local")
        browser_login(victim, people["admin"])
        after = victim.cookies.get("eb_session")
        assert after and after != planted
        assert victim.get("/users").status_code == 200
    with TestClient(app, follow_redirects=False) as replay:
        replay.cookies.set("eb_session", planted)
        assert replay.get("/jobs").status_code == 303  # the planted session was ended at the victim's login
    with TestClient(app, follow_redirects=False) as forged:
        forged.cookies.set("eb_session", "forged-value")
        page = forged.get("/login")
        assert page.status_code == 200 and forged.get("/jobs").status_code == 303


def test_logout_ends_the_session_on_the_server(app, people) -> None:  # type: ignore[no-untyped-def]
    with TestClient(app, follow_redirects=False) as client:
        csrf = browser_login(client, people["reviewer"])
        stolen = client.cookies.get("eb_session")
        assert stolen and client.post("/logout", data={"csrf_token": csrf}).status_code == 303
    with TestClient(app, follow_redirects=False) as replay:
        replay.cookies.set("eb_session", stolen)
        assert replay.get("/jobs").status_code == 303
        assert replay.get("/api/me").status_code == 401


@pytest.mark.parametrize(
    "target",
    [
        "//evil.example",
        "/\\evil.example",
        "https://evil.example/",
        "/\t/evil.example",
        "\\/evil.example",
        "/%2f/evil.example",
    ],
)
def test_login_only_ever_redirects_within_the_site(app, people, target: str) -> None:  # type: ignore[no-untyped-def]
    person = people["viewer"]
    with TestClient(app, follow_redirects=False) as client:
        csrf = _login_form(client)
        response = client.post(
            "/login", data={"name": person.name, "password": person.password, "csrf_token": csrf, "next": target}
        )
        assert response.status_code == 303
        location = response.headers["location"]
        # What a browser does with it: drop tabs and newlines, treat "\\" as "/", resolve against the page.
        cleaned = location.replace("\t", "").replace("\n", "").replace("\\", "/")
        assert urlsplit(urljoin("http://testserver/login", cleaned)).netloc == "testserver", location


def _assert_hardened(response: Any, where: str) -> None:
    headers = response.headers
    csp = headers.get("content-security-policy", "")
    directives = {part.split()[0]: part.split()[1:] for part in csp.split(";") if part.strip()}
    script_sources = directives.get("script-src") or directives.get("default-src") or []
    assert script_sources and "'unsafe-inline'" not in script_sources and "'unsafe-eval'" not in script_sources, where
    assert directives.get("frame-ancestors") == ["'none'"] or headers.get("x-frame-options") == "DENY", where
    assert headers.get("x-content-type-options") == "nosniff", where
    assert headers.get("referrer-policy") in ("same-origin", "no-referrer", "strict-origin-when-cross-origin"), where


def test_security_headers_on_pages_api_files_and_errors(app, people, db) -> None:  # type: ignore[no-untyped-def]
    fixture = make_run(db, sizes={"train": 2, "dev": 2, "test": 2}, seed=4)
    db.commit()
    with TestClient(app, follow_redirects=False) as browser:
        browser_login(browser, people["viewer"])
        responses = {
            "page": browser.get(f"/datasets/{fixture.dataset.id}"),
            "htmx fragment": browser.get("/jobs/table", headers={"hx-request": "true"}),
            "login": browser.get("/login"),
            "api": browser.get("/api/me"),
            "csv": browser.get(f"/api/splits/{fixture.split.id}/manifest.csv"),
            "static": browser.get("/static/js/app.js"),
            "missing image": browser.get("/images/999999/full"),
            "404 page": browser.get("/datasets/999999"),
            "unknown path": browser.get("/no/such/page"),
            "forbidden": browser.post("/jobs/demo"),
            "health": browser.get("/healthz"),
        }
    with TestClient(app, follow_redirects=False) as anonymous:
        responses["redirect"] = anonymous.get("/jobs")
        responses["401"] = anonymous.get("/api/me")
        responses["422"] = anonymous.post("/login", data={})
    for where, response in responses.items():
        _assert_hardened(response, where)
    assert responses["page"].status_code == 200 and responses["csv"].status_code == 200


# ---- model files -------------------------------------------------------------------------------------------------


class _WritesAMarker:
    """Unpickling this calls Path.touch on the marker: what a hostile checkpoint would do with os.system."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[Path]]:
        return (Path.touch, (self.marker,))


def test_a_checkpoint_that_would_run_code_is_refused_and_never_runs(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    hostile = tmp_path / "model.pt"
    torch.save({"format": "errorbook-checkpoint", "version": 1, "backbone_state": _WritesAMarker(marker)}, hostile)
    pickle.loads(pickle.dumps(_WritesAMarker(tmp_path / "proof")))  # the payload does work when unpickled
    assert (tmp_path / "proof").exists()

    with pytest.raises(IncompatibleCheckpoint, match="weights-only checkpoint"):
        model_from_checkpoint(hostile)
    assert not marker.exists()

    raw_pickle = tmp_path / "raw.pt"  # a plain pickle, not torch's zip format
    raw_pickle.write_bytes(pickle.dumps({"backbone_state": _WritesAMarker(marker)}, protocol=2))
    with pytest.raises(IncompatibleCheckpoint):
        model_from_checkpoint(raw_pickle)
    assert not marker.exists()


def _calls(tree: ast.AST, dotted: str) -> Iterator[ast.Call]:
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and ast.unparse(node.func) == dotted:
            yield node


def _keyword(call: ast.Call, name: str) -> Any:
    for keyword in call.keywords:
        if keyword.arg == name and isinstance(keyword.value, ast.Constant):
            return keyword.value.value
    return None


# The one pickle channel in app/: the ingest decoder's pipe to a child process we started ourselves.
TRUSTED_PICKLE = {"app/uploads/logic.py", "app/uploads/decode_pool.py"}


def test_every_model_load_in_the_app_is_weights_only() -> None:
    """Static check over app/: every torch.load and get_state_dict passes weights_only=True, no numpy load
    allows pickles, and no other code unpickles (a new loader cannot slip in unnoticed)."""
    loads, offenders = 0, []
    for path in sorted((PROJECT_ROOT / "app").rglob("*.py")):
        relative = str(path.relative_to(PROJECT_ROOT))
        tree = ast.parse(path.read_text(), filename=relative)
        for call in [*_calls(tree, "torch.load"), *_calls(tree, "weights.get_state_dict")]:
            loads += 1
            if _keyword(call, "weights_only") is not True:
                offenders.append(f"{relative}:{call.lineno}: without weights_only=True")
        for call in _calls(tree, "np.load"):
            if _keyword(call, "allow_pickle") is not False:
                offenders.append(f"{relative}:{call.lineno}: np.load without allow_pickle=False")
        for dotted in ("torch.jit.load", "jit.load", "pickle.load", "pickle.loads", "dill.load", "joblib.load"):
            for call in _calls(tree, dotted):
                if not (dotted.startswith("pickle.") and relative in TRUSTED_PICKLE):
                    offenders.append(f"{relative}:{call.lineno}: {dotted}")
    assert loads >= 3  # the checker does find the loads it is about
    assert offenders == []


def test_the_model_download_is_a_plain_attachment(as_viewer, db, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    fixture = make_run(db, sizes={"train": 2, "dev": 2, "test": 2}, seed=8)
    buffer = io.BytesIO()
    torch.save({"weights": torch.zeros(2)}, buffer)
    (tmp_path / "model.pt").write_bytes(buffer.getvalue())
    fixture.run.model_path = str(tmp_path)
    db.commit()
    response = as_viewer.get(f"/api/runs/{fixture.run.id}/files/model.pt")
    assert response.status_code == 200 and response.content == buffer.getvalue()
    assert response.headers["content-type"] == "application/octet-stream"
    assert response.headers["content-disposition"].startswith("attachment;")
    assert as_viewer.get(f"/api/runs/{fixture.run.id}/files/model.torchscript.pt").status_code == 404
    assert as_viewer.get(f"/api/runs/{fixture.run.id}/files/training_state.pt").status_code == 404


def test_hostile_image_rows_do_not_confuse_the_file_routes(as_viewer, db) -> None:  # type: ignore[no-untyped-def]
    """File routes find blobs by the sha256 in the row, never by a name: a row whose file name is a path
    elsewhere still serves nothing but 404."""
    fixture = make_run(db, sizes={"dev": 1}, seed=10)
    image: Image = fixture.images["dev"][0]
    image.filename = "../../../../etc/passwd"
    db.commit()
    for kind in ("thumb", "full"):
        response = as_viewer.get(f"/images/{image.id}/{kind}")
        assert response.status_code == 404 and b"root:" not in response.content


def test_the_api_docs_page_works_under_our_csp(anon) -> None:  # type: ignore[no-untyped-def]
    """FastAPI's Swagger and ReDoc pages need a CDN and inline script (blank under our CSP, and offline):
    /api/docs is a plain page that lists every operation, the multipart upload included."""
    page = anon.get("/api/docs")
    assert page.status_code == 200
    problems, text = audit_page(page.text)
    assert problems == [] and "cdn." not in page.text
    assert "/api/datasets/{dataset_id}/uploads" in text and "multipart/form-data" in text
    assert anon.get("/redoc").status_code == 404
    _assert_hardened(page, "/api/docs")
