"""The whole product under load: 20 people browsing grids, tagging errors and relabeling while a model trains.

For each backend a real ``errorbook serve --no-worker`` and a separate ``errorbook worker`` run on a fresh
database (SQLite: a file in a temp dir; Postgres: a new schema, dropped afterwards) and a fresh data dir, on
loopback only. Seeding goes through the real HTTP API and the real jobs, nothing through the ORM: a zip of small
generated JPEGs is uploaded and ingested, split, and a first model trained (``simple_cnn``, a few epochs); then
error categories, a label-review campaign over dev and test, and one user per client (each logs in through the
login form, keeps its session cookie for pages and htmx, and makes its own API token).

Then a second training job starts and, while it runs, every client loops for ``--seconds`` over: the dataset page
and its grid, the error grid and the ceiling API, the campaign page, an item and the progress panel, tags replaced
through the API (``PUT``) and toggled as the keyboard does (htmx ``POST``), claims, and relabels with the version
it last saw (some on images every client shares, so stale versions meet the 409 rule). Afterwards the database is
checked for lost updates: every accepted relabel must be in the image's history with its label and version, no
two accepted relabels share a version, each image ends on the last accepted label, no relabel from a refused or
failed request is in the history; each tagged example ends with the tags of its last accepted ``PUT`` (ordered
by the tagged-at time each response returned) and with the parity of the toggles accepted on it.

    python bench/load.py                                  # both backends, 60 s each
    python bench/load.py --backend sqlite --seconds 20    # a quick check
    ERRORBOOK_BENCH_POSTGRES_URL=postgresql://postgres@127.0.0.1:5432/test python bench/load.py --backend postgres

The process exits non-zero if a request answered 5xx (or another unexpected status), an update was lost, or a
request failed outright. Everything it starts is stopped, and its temp dir and Postgres schema removed, on the
way out (also on Ctrl-C).
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import random
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
import zipfile
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from PIL import Image, ImageDraw
from sqlalchemy import create_engine, text

ROOT = Path(__file__).resolve().parents[1]
POSTGRES_URL = os.environ.get(
    "ERRORBOOK_BENCH_POSTGRES_URL",
    os.environ.get("ERRORBOOK_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"),
)
CLASSES = [f"class_{i}" for i in range(10)]
TAGS = ["blurry", "occluded", "look-alike classes"]
PASSWORD = "load-test-password"
HOT_IMAGES = 12  # campaign images every client relabels now and then: where stale versions meet
TARGET_MS = 150.0
SLOW_REQUEST_SECONDS = 60.0

# (action, weight): what a client does next, drawn at random.
ACTIONS = [
    ("dataset page", 6),
    ("dataset grid (htmx)", 6),
    ("error grid page", 12),
    ("error analysis API", 4),
    ("review page", 8),
    ("review item", 10),
    ("review progress", 5),
    ("tags PUT (API)", 14),
    ("tag toggle (htmx)", 10),
    ("relabel (API)", 20),
]
PAGES = {"dataset page", "dataset grid (htmx)", "error grid page", "review page", "review item", "review progress"}
CHANGES = {"tags PUT (API)", "tag toggle (htmx)", "relabel (API)"}


# --- processes ------------------------------------------------------------------------------------------------------


def say(message: str) -> None:
    """Progress, on stderr: the table alone goes to stdout."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Processes:
    """The server and worker, each in a process group of its own so their job runners go with them."""

    def __init__(self, env: dict[str, str], logs: Path) -> None:
        self.env = env
        self.logs = logs
        self.started: list[subprocess.Popen[bytes]] = []

    def start(self, name: str, *args: str) -> subprocess.Popen[bytes]:
        with open(self.logs / f"{name}.log", "wb") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "app.cli", *args],
                cwd=ROOT,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.started.append(process)
        return process

    def run(self, *args: str) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "app.cli", *args], cwd=ROOT, env=self.env, capture_output=True, text=True
        )
        if done.returncode != 0:
            raise RuntimeError(f"errorbook {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}")
        return done.stdout

    def stop(self) -> None:
        for process in self.started:
            with suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + 15
        for process in self.started:
            with suppress(subprocess.TimeoutExpired):
                process.wait(max(0.1, deadline - time.monotonic()))
        for process in self.started:  # whatever is left of each group, job runners included
            with suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)
            with suppress(subprocess.TimeoutExpired):
                process.wait(5)
        self.started.clear()


@contextmanager
def database(backend: str, tmp: Path) -> Iterator[str]:
    if backend == "sqlite":
        yield f"sqlite:///{tmp / 'errorbook.db'}"
        return
    from app.core.settings import normalise_database_url

    schema = f"eb_load_{uuid.uuid4().hex[:8]}"
    admin = create_engine(normalise_database_url(POSTGRES_URL), isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as connection:
            connection.execute(text(f'CREATE SCHEMA "{schema}"'))
        separator = "&" if "?" in POSTGRES_URL else "?"
        yield POSTGRES_URL + f"{separator}options=-csearch_path%3D{schema}"
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        admin.dispose()


# --- seeding through the API ----------------------------------------------------------------------------------------


def small_jpeg(rng: np.random.Generator, class_index: int) -> bytes:
    """64x64: a class colour, a few random shapes and noise, so a small CNN learns something but not everything."""
    base = np.array([(37 * class_index) % 256, (91 * class_index + 60) % 256, (173 * class_index + 30) % 256])
    pixels = np.clip(base + rng.normal(0, 40, (64, 64, 3)), 0, 255).astype(np.uint8)
    image = Image.fromarray(pixels)
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(1, 4))):
        x, y = (int(v) for v in rng.integers(0, 48, 2))
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        draw.ellipse([x, y, x + int(rng.integers(8, 24)), y + int(rng.integers(8, 24))], fill=colour)
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=85)
    return buffer.getvalue()


def make_zip(count: int, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED) as archive:
        for index in range(count):
            class_index = index % len(CLASSES)
            archive.writestr(f"load/{CLASSES[class_index]}/img_{index:05d}.jpg", small_jpeg(rng, class_index))
    return buffer.getvalue()


def wait_job(client: httpx.Client, job_id: int, *, timeout: float, until: tuple[str, ...] = ("succeeded",)) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/api/jobs/{job_id}").raise_for_status().json()
        if job["status"] in until:
            return job
        if job["status"] in ("failed", "cancelled"):
            raise RuntimeError(f"job {job_id} ({job['kind']}) ended {job['status']}: {job['error']}")
        time.sleep(0.3)
    raise TimeoutError(f"job {job_id} is not {' or '.join(until)} after {timeout:.0f} s")


@dataclass
class Seeded:
    dataset_id: int
    run_id: int
    review_id: int
    sample: list[int]  # image ids of the error sample
    campaign: list[int]  # image ids of the review campaign
    seconds: dict[str, float]


def seed(client: httpx.Client, *, images: int) -> Seeded:
    seconds: dict[str, float] = {}
    started = time.perf_counter()
    dataset_id = client.post("/api/datasets", json={"name": "load"}).raise_for_status().json()["id"]
    archive = make_zip(images)
    upload = client.post(
        f"/api/datasets/{dataset_id}/uploads", files={"files": ("load.zip", archive)}, data={"source": "phone"}
    ).raise_for_status()
    wait_job(client, upload.json()["job_id"], timeout=900)
    seconds["upload + ingest"] = time.perf_counter() - started

    started = time.perf_counter()
    split = client.post(
        f"/api/datasets/{dataset_id}/splits", json={"seed": 0, "target_source": "phone"}
    ).raise_for_status()
    wait_job(client, split.json()["job_id"], timeout=600)
    split_id = split.json()["split_id"]
    seconds["split"] = time.perf_counter() - started

    started = time.perf_counter()
    first = client.post(
        "/api/runs",
        json={"dataset_id": dataset_id, "split_id": split_id, "backbone": "simple_cnn", "mode": "linear", "epochs": 3},
    ).raise_for_status()
    wait_job(client, first.json()["job_id"], timeout=1200)
    run_id = first.json()["run_id"]
    seconds["first training run"] = time.perf_counter() - started

    for name in TAGS:
        client.post(f"/api/datasets/{dataset_id}/tags", json={"name": name}).raise_for_status()
    sample = client.get(f"/api/runs/{run_id}/errors", params={"subset": "dev"}).raise_for_status().json()
    review = client.post(
        f"/api/datasets/{dataset_id}/reviews",
        json={"run_id": run_id, "subsets": ["dev", "test"], "suspicious_per_subset": 150, "correct_per_subset": 20},
    ).raise_for_status()
    review_id = review.json()["review_id"]
    campaign = client.get(f"/api/reviews/{review_id}").raise_for_status().json()
    return Seeded(
        dataset_id=dataset_id,
        run_id=run_id,
        review_id=review_id,
        sample=[item["image_id"] for item in sample["items"]],
        campaign=[item["image_id"] for item in campaign["items"]],
        seconds=seconds,
    )


def start_training(client: httpx.Client, seeded: Seeded) -> int:
    """A long from-scratch training on the worker (cancelled at the end): the load runs beside it."""
    run = client.get(f"/api/runs/{seeded.run_id}").raise_for_status().json()
    body = {
        "dataset_id": seeded.dataset_id,
        "split_id": run["split_id"],
        "backbone": "simple_cnn",
        "mode": "full",
        "epochs": 1000,
        "patience": 1000,
    }
    job_id = int(client.post("/api/runs", json=body).raise_for_status().json()["job_id"])
    wait_job(client, job_id, timeout=120, until=("running",))
    return job_id


# --- the clients ----------------------------------------------------------------------------------------------------


@dataclass
class Accepted:
    """What the server said yes to; the database must agree afterwards."""

    relabels: list[dict[str, Any]] = field(default_factory=list)  # image_id, change_id, label, version
    puts: list[dict[str, Any]] = field(default_factory=list)  # image_id, tags, tagged_at
    toggles: dict[tuple[int, int], int] = field(default_factory=lambda: defaultdict(int))  # (image, tag) -> n
    uncertain_relabels: set[int] = field(default_factory=set)  # image ids whose relabel request failed in flight
    uncertain_tags: set[int] = field(default_factory=set)


@dataclass
class Stats:
    latency: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    conflicts: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    server_errors: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    unexpected: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    failures: dict[str, int] = field(default_factory=lambda: defaultdict(int))  # no answer at all
    examples: list[str] = field(default_factory=list)

    def note(self, line: str) -> None:
        if len(self.examples) < 20:
            self.examples.append(line)


@dataclass
class Shared:
    seeded: Seeded
    tag_ids: dict[str, int]
    put_images: list[int]
    toggle_images: list[int]
    hot: list[int]
    stats: Stats
    accepted: Accepted
    think: float
    until: float


CSRF_META = re.compile(r'<meta name="csrf-token" content="([^"]+)"')
CSRF_FIELD = re.compile(r'name="csrf_token" value="([^"]+)"')


async def login(client: httpx.AsyncClient, name: str) -> tuple[str, str]:
    """Log in through the form (session cookie), then make an API token with the page's CSRF token."""
    page = (await client.get("/login")).raise_for_status()
    login_csrf = CSRF_FIELD.search(page.text)
    assert login_csrf, "the login page has no CSRF field"
    answer = await client.post(
        "/login", data={"name": name, "password": PASSWORD, "csrf_token": login_csrf.group(1), "next": "/"}
    )
    if answer.status_code != 303:
        raise RuntimeError(f"login of {name} answered {answer.status_code}: {answer.text[:300]}")
    home = (await client.get("/")).raise_for_status()
    csrf = CSRF_META.search(home.text)
    assert csrf, "the home page has no CSRF meta tag"
    made = await client.post("/api/tokens", json={"name": "load"}, headers={"x-csrf-token": csrf.group(1)})
    return csrf.group(1), made.raise_for_status().json()["token"]


class Client:
    def __init__(self, index: int, base: str, shared: Shared) -> None:
        self.name = f"load-{index:02d}"
        self.rng = random.Random(index)
        self.shared = shared
        self.http = httpx.AsyncClient(base_url=base, timeout=SLOW_REQUEST_SECONDS, follow_redirects=False)
        self.csrf = ""
        self.token = ""
        self.claimed: list[int] = []
        self.versions: dict[int, int] = {}  # image id -> label version this client last saw
        self.labels: dict[int, str] = {}

    async def prepare(self) -> None:
        self.csrf, self.token = await login(self.http, self.name)

    async def close(self) -> None:
        await self.http.aclose()

    def _api(self) -> dict[str, str]:
        return {"authorization": f"Bearer {self.token}"}

    def _htmx(self, target: str | None = None) -> dict[str, str]:
        headers = {"hx-request": "true", "x-csrf-token": self.csrf}
        if target:
            headers["hx-target"] = target
        return headers

    async def _call(
        self, name: str, method: str, url: str, *, ok: tuple[int, ...] = (200,), **kwargs: Any
    ) -> httpx.Response | None:
        stats = self.shared.stats
        started = time.perf_counter()
        try:
            response = await self.http.request(method, url, **kwargs)
        except httpx.HTTPError as exc:
            stats.failures[name] += 1
            stats.note(f"{name}: {method} {url}: {type(exc).__name__}: {exc}")
            return None
        stats.latency[name].append(time.perf_counter() - started)
        if response.status_code in ok:
            return response
        if response.status_code == 409:
            stats.conflicts[name] += 1
        elif response.status_code >= 500:
            stats.server_errors[name] += 1
            stats.note(f"{name}: {method} {url}: HTTP {response.status_code}: {response.text[:300]}")
        else:
            stats.unexpected[name] += 1
            stats.note(f"{name}: {method} {url}: HTTP {response.status_code}: {response.text[:300]}")
        return response

    async def loop(self) -> None:
        names = [name for name, _ in ACTIONS]
        weights = [weight for _, weight in ACTIONS]
        actions = {
            "dataset page": self.dataset_page,
            "dataset grid (htmx)": self.dataset_grid,
            "error grid page": self.error_grid,
            "error analysis API": self.error_analysis,
            "review page": self.review_page,
            "review item": self.review_item,
            "review progress": self.review_progress,
            "tags PUT (API)": self.put_tags,
            "tag toggle (htmx)": self.toggle_tag,
            "relabel (API)": self.relabel,
        }
        if self.shared.think:  # start spread out, as people do
            await asyncio.sleep(self.rng.uniform(0, self.shared.think))
        await self.claim()
        while time.monotonic() < self.shared.until:
            await actions[self.rng.choices(names, weights)[0]]()
            if self.shared.think:
                await asyncio.sleep(self.rng.uniform(0.5, 1.5) * self.shared.think)

    # pages

    async def dataset_page(self) -> None:
        offset = self.rng.randrange(0, 20) * 60
        await self._call("dataset page", "GET", f"/datasets/{self.shared.seeded.dataset_id}?offset={offset}")

    async def dataset_grid(self) -> None:
        label = self.rng.choice(CLASSES)
        url = f"/datasets/{self.shared.seeded.dataset_id}?label={label}&offset={self.rng.randrange(0, 4) * 60}"
        await self._call("dataset grid (htmx)", "GET", url, headers=self._htmx("image-grid"))

    async def error_grid(self) -> None:
        subset = self.rng.choice(["dev", "dev", "dev", "test"])
        await self._call("error grid page", "GET", f"/runs/{self.shared.seeded.run_id}/errors?subset={subset}")

    async def error_analysis(self) -> None:
        url = f"/api/runs/{self.shared.seeded.run_id}/error-analysis?subset=dev"
        await self._call("error analysis API", "GET", url, headers=self._api())

    async def review_page(self) -> None:
        view = self.rng.choice(["mine", "all"])
        await self._call("review page", "GET", f"/reviews/{self.shared.seeded.review_id}?view={view}")

    async def review_item(self) -> None:
        image_id = self.rng.choice(self.claimed or self.shared.seeded.campaign)
        url = f"/reviews/{self.shared.seeded.review_id}/items/{image_id}"
        await self._call("review item", "GET", url, headers=self._htmx("detail"))

    async def review_progress(self) -> None:
        url = f"/reviews/{self.shared.seeded.review_id}/progress"
        await self._call("review progress", "GET", url, headers=self._htmx())

    # changes

    async def put_tags(self) -> None:
        image_id = self.rng.choice(self.shared.put_images)
        tags = sorted(self.rng.sample(["mislabeled", *TAGS], self.rng.randint(0, 2)))
        url = f"/api/runs/{self.shared.seeded.run_id}/errors/{image_id}/tags"
        response = await self._call("tags PUT (API)", "PUT", url, json={"tags": tags, "note": ""}, headers=self._api())
        if response is None or response.status_code >= 500:
            self.shared.accepted.uncertain_tags.add(image_id)
            return
        if response.status_code != 200:
            return
        body = response.json()
        if sorted(body["tags"]) != tags:
            self.shared.stats.note(f"PUT tags {tags} on {image_id} answered with {body['tags']}")
            self.shared.accepted.uncertain_tags.add(image_id)
        self.shared.accepted.puts.append({"image_id": image_id, "tags": tags, "tagged_at": body["tagged_at"]})

    async def toggle_tag(self) -> None:
        image_id = self.rng.choice(self.shared.toggle_images)
        tag_id = self.shared.tag_ids[self.rng.choice(["mislabeled", *TAGS])]
        url = f"/runs/{self.shared.seeded.run_id}/errors/{image_id}/tags/{tag_id}/toggle?subset=dev"
        response = await self._call("tag toggle (htmx)", "POST", url, headers=self._htmx(f"card-{image_id}"))
        if response is None or response.status_code >= 500:
            self.shared.accepted.uncertain_tags.add(image_id)
        elif response.status_code == 200:
            self.shared.accepted.toggles[(image_id, tag_id)] += 1

    async def claim(self) -> None:
        url = f"/api/reviews/{self.shared.seeded.review_id}/claim"
        response = await self._call("claim (API)", "POST", url, json={"count": 10}, headers=self._api())
        if response is not None and response.status_code == 200:
            for item in response.json():
                self.versions[item["image_id"]] = item["label_version"]
                self.labels[item["image_id"]] = item["label"]
            self.claimed = [item["image_id"] for item in response.json()]

    async def relabel(self) -> None:
        hot = self.rng.random() < 0.3 or not self.claimed
        image_id = self.rng.choice(self.shared.hot if hot else self.claimed)
        if image_id not in self.versions:
            response = await self._call("label (API)", "GET", f"/api/images/{image_id}/label", headers=self._api())
            if response is None or response.status_code != 200:
                return
            self.versions[image_id] = response.json()["label_version"]
            self.labels[image_id] = response.json()["label"]
        label = self.rng.choice([name for name in CLASSES if name != self.labels.get(image_id)])
        body = {
            "label": label,
            "expected_version": self.versions[image_id],
            "review_id": self.shared.seeded.review_id,
            "reason": f"load {self.name}",
        }
        response = await self._call(
            "relabel (API)", "POST", f"/api/images/{image_id}/label", json=body, headers=self._api()
        )
        if response is None or response.status_code >= 500:
            self.shared.accepted.uncertain_relabels.add(image_id)
            self.versions.pop(image_id, None)
            return
        answer = response.json()
        if response.status_code == 409:
            self.versions[image_id], self.labels[image_id] = answer["label_version"], answer["label"]
            return
        if response.status_code != 200:
            return
        self.versions[image_id], self.labels[image_id] = answer["label_version"], answer["label"]
        self.shared.accepted.relabels.append(
            {"image_id": image_id, "change_id": answer["change_id"], "label": label, "version": answer["label_version"]}
        )
        if answer["label"] != label:
            self.shared.stats.note(f"relabel of {image_id} to {label} answered with {answer['label']}")
        if not hot and self.rng.random() < 0.15:
            await self.claim()


async def run_clients(base: str, shared: Shared, clients: int, seconds: float) -> float:
    """Log every client in, then let them loop for ``seconds``; returns how long the loops took."""
    workers = [Client(index, base, shared) for index in range(clients)]
    try:
        await asyncio.gather(*(worker.prepare() for worker in workers))
        started = time.monotonic()
        shared.until = started + seconds
        await asyncio.gather(*(worker.loop() for worker in workers))
        return time.monotonic() - started
    finally:
        await asyncio.gather(*(worker.close() for worker in workers))


# --- afterwards: did every accepted change stick? -------------------------------------------------------------------


def _stamp(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def lost_updates(client: httpx.Client, shared: Shared, initial_tags: dict[int, set[str]]) -> list[str]:
    accepted, seeded = shared.accepted, shared.seeded
    problems: list[str] = []
    by_image: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for change in accepted.relabels:
        by_image[change["image_id"]].append(change)
    load_users = {f"load-{index:02d}" for index in range(100)}
    for image_id in sorted(set(by_image) | accepted.uncertain_relabels):
        history = client.get(f"/api/images/{image_id}/history").raise_for_status().json()
        state = client.get(f"/api/images/{image_id}/label").raise_for_status().json()
        rows = {row["id"]: row for row in history}
        mine = by_image.get(image_id, [])
        for change in mine:
            row = rows.get(change["change_id"])
            if row is None:
                problems.append(f"image {image_id}: accepted change {change['change_id']} is not in its history")
            elif (row["new_label"], row["version"]) != (change["label"], change["version"]):
                problems.append(
                    f"image {image_id}: change {change['change_id']} is {row['new_label']} v{row['version']} in "
                    f"the history, {change['label']} v{change['version']} in the answer"
                )
        versions = [change["version"] for change in mine]
        if len(versions) != len(set(versions)):
            problems.append(f"image {image_id}: two accepted relabels share a version: {sorted(versions)}")
        if image_id in accepted.uncertain_relabels:
            continue  # a request without an answer may or may not have been applied
        accepted_ids = {change["change_id"] for change in mine}
        for row in history:
            if row["kind"] == "relabel" and row["user"] in load_users and row["id"] not in accepted_ids:
                problems.append(f"image {image_id}: history has relabel {row['id']} that no answer accepted")
        if mine:
            last = max(mine, key=lambda change: change["version"])
            if (state["label"], state["label_version"]) != (last["label"], last["version"]):
                problems.append(
                    f"image {image_id}: ends as {state['label']} v{state['label_version']}, the last accepted "
                    f"relabel was {last['label']} v{last['version']}"
                )

    puts: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for write in accepted.puts:
        puts[write["image_id"]].append(write)
    tag_names = {tag_id: name for name, tag_id in shared.tag_ids.items()}
    for image_id in sorted(set(shared.put_images) | set(shared.toggle_images)):
        if image_id in accepted.uncertain_tags:
            continue
        item = client.get(f"/api/runs/{seeded.run_id}/errors/{image_id}").raise_for_status().json()["item"]
        final = set(item["tags"])
        if image_id in puts:
            writes = puts[image_id]
            newest = max(_stamp(write["tagged_at"]) for write in writes)
            candidates = [set(w["tags"]) for w in writes if _stamp(w["tagged_at"]) == newest]
            if final not in candidates:
                problems.append(f"example {image_id}: tags {sorted(final)}, last accepted PUT {candidates}")
        elif image_id in shared.toggle_images:
            expected = set(initial_tags.get(image_id, set()))
            for (toggled_image, tag_id), count in accepted.toggles.items():
                if toggled_image == image_id and count % 2:
                    expected ^= {tag_names[tag_id]}
            if final != expected:
                problems.append(f"example {image_id}: tags {sorted(final)} after toggles, expected {sorted(expected)}")
    return problems


# --- one backend ----------------------------------------------------------------------------------------------------


def _percentile(samples: list[float], q: int) -> float:
    if len(samples) == 1:
        return samples[0] * 1000
    return statistics.quantiles(samples, n=100, method="inclusive")[q - 1] * 1000


def measure(backend: str, args: argparse.Namespace) -> tuple[list[str], bool]:
    tmp = Path(tempfile.mkdtemp(prefix=f"errorbook-load-{backend}-"))
    keep_logs = False
    try:
        with database(backend, tmp) as url:
            env = {key: value for key, value in os.environ.items() if not key.startswith("ERRORBOOK_")}
            env |= {"ERRORBOOK_DATA_DIR": str(tmp / "data"), "ERRORBOOK_DATABASE_URL": url, "PYTHONUNBUFFERED": "1"}
            processes = Processes(env, tmp)
            try:  # stopped before the schema is dropped: a live connection would hold the DROP up
                return load_one(backend, args, processes, tmp)
            finally:
                processes.stop()
    except BaseException:
        keep_logs = True
        print(f"{backend}: logs kept under {tmp}", file=sys.stderr)
        raise
    finally:
        if not keep_logs:
            shutil.rmtree(tmp, ignore_errors=True)


def load_one(backend: str, args: argparse.Namespace, processes: Processes, tmp: Path) -> tuple[list[str], bool]:
    admin_token = processes.run("users", "add", "load-admin", "--role", "admin").strip().splitlines()[-1]
    port = _free_port()
    server = processes.start("serve", "serve", "--no-worker", "--host", "127.0.0.1", "--port", str(port))
    processes.start("worker", "worker")
    base = f"http://127.0.0.1:{port}"
    with httpx.Client(base_url=base, headers={"authorization": f"Bearer {admin_token}"}, timeout=300) as admin:
        deadline = time.monotonic() + 120
        while True:
            if server.poll() is not None:
                raise RuntimeError((tmp / "serve.log").read_text()[-3000:])
            with suppress(httpx.HTTPError):
                if admin.get("/healthz", timeout=2).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise TimeoutError("the server did not come up")
            time.sleep(0.3)

        say(f"{backend}: server up; seeding {args.images:,} images through the API (upload, split, first run)")
        seeded = seed(admin, images=args.images)
        for index in range(args.clients):
            user = {"name": f"load-{index:02d}", "role": "reviewer", "password": PASSWORD}
            admin.post("/api/users", json=user).raise_for_status()
        tags = admin.get(f"/api/datasets/{seeded.dataset_id}/tags").raise_for_status().json()
        half = len(seeded.sample) // 2
        shared = Shared(
            seeded=seeded,
            tag_ids={tag["name"]: tag["id"] for tag in tags},
            put_images=seeded.sample[:half],
            toggle_images=seeded.sample[half:],
            hot=random.Random(0).sample(seeded.campaign, min(HOT_IMAGES, len(seeded.campaign))),
            stats=Stats(),
            accepted=Accepted(),
            think=args.think,
            until=0.0,
        )
        initial_tags = {
            image_id: set(
                admin.get(f"/api/runs/{seeded.run_id}/errors/{image_id}").raise_for_status().json()["item"]["tags"]
            )
            for image_id in shared.toggle_images
        }
        job_id = None if args.no_training else start_training(admin, seeded)
        say(f"{backend}: training job {job_id} running; {args.clients} clients for {args.seconds:.0f} s")
        elapsed = asyncio.run(run_clients(base, shared, args.clients, args.seconds))
        job = None
        if job_id is not None:
            job = admin.get(f"/api/jobs/{job_id}").raise_for_status().json()
            admin.post(f"/api/jobs/{job_id}/cancel").raise_for_status()
        say(f"{backend}: checking every accepted change against the database")
        problems = lost_updates(admin, shared, initial_tags)
    stats = shared.stats
    failed = bool(
        problems or sum(stats.server_errors.values()) or sum(stats.unexpected.values()) or sum(stats.failures.values())
    )
    return report(backend, args, seeded, shared, job, elapsed, problems), failed


def report(
    backend: str,
    args: argparse.Namespace,
    seeded: Seeded,
    shared: Shared,
    job: dict[str, Any] | None,
    elapsed: float,
    problems: list[str],
) -> list[str]:
    stats = shared.stats
    total = sum(len(samples) for samples in stats.latency.values())
    seeding = ", ".join(f"{name} {seconds:.0f} s" for name, seconds in seeded.seconds.items())
    training = (
        "no training job (--no-training)"
        if job is None
        else f"training job {job['status']} at {100 * job['progress']:.0f}% ({job['message']!r}) when the load stopped"
    )
    lines = [
        f"{backend}: {args.images:,} images seeded through the API ({seeding}); {args.clients} clients for "
        f"{elapsed:.0f} s, think {args.think:.2f} s; {total} requests ({total / elapsed:.0f}/s); {training}",
        f"  {'endpoint':<22}{'n':>6}{'p50 ms':>9}{'p95 ms':>9}{'p99 ms':>9}{'409':>6}{'5xx':>6}{'other':>7}  target",
    ]
    names = [name for name, _ in ACTIONS] + ["claim (API)", "label (API)"]
    for name in names:
        samples = stats.latency.get(name, [])
        if not samples:
            continue
        p95 = _percentile(samples, 95)
        target = ""
        if name in PAGES or name in CHANGES:
            target = f"p95 < {TARGET_MS:.0f} ms {'ok' if p95 < TARGET_MS else 'MISSED'}"
        lines.append(
            f"  {name:<22}{len(samples):>6}{_percentile(samples, 50):>9.1f}{p95:>9.1f}{_percentile(samples, 99):>9.1f}"
            f"{stats.conflicts.get(name, 0):>6}{stats.server_errors.get(name, 0):>6}"
            f"{stats.unexpected.get(name, 0) + stats.failures.get(name, 0):>7}  {target}"
        )
    accepted = shared.accepted
    lines.append(
        f"  accepted: {len(accepted.relabels)} relabels, {len(accepted.puts)} tag PUTs, "
        f"{sum(accepted.toggles.values())} toggles; 409 (stale version, not errors): {sum(stats.conflicts.values())}; "
        f"5xx: {sum(stats.server_errors.values())}; lost updates: {len(problems)}"
    )
    lines += [f"  LOST: {problem}" for problem in problems[:20]]
    lines += [f"  note: {example}" for example in stats.examples]
    return lines


def _interrupted(_signal: int, _frame: Any) -> None:
    raise KeyboardInterrupt  # SIGTERM ends the run as Ctrl-C does, so every finally block cleans up


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=60.0, help="how long the clients run (default 60)")
    parser.add_argument("--backend", choices=("sqlite", "postgres", "both"), default="both")
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--images", type=int, default=2000, help="images in the seeded dataset")
    parser.add_argument(
        "--think",
        type=float,
        default=0.5,
        help="mean pause between a client's actions, seconds (0: every client keeps the server busy)",
    )
    parser.add_argument(
        "--no-training", action="store_true", help="no training job during the load (to see what it costs)"
    )
    args = parser.parse_args()
    backends = ["sqlite", "postgres"] if args.backend == "both" else [args.backend]
    load = os.getloadavg()
    report_lines = [
        f"load benchmark on {os.cpu_count()} CPUs (server, worker, training and clients share them); "
        f"load average before: {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}"
    ]
    failed = False
    signal.signal(signal.SIGTERM, _interrupted)
    for backend in backends:
        lines, backend_failed = measure(backend, args)
        report_lines += lines
        failed |= backend_failed
    load = os.getloadavg()
    report_lines.append(f"load average after: {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}")
    print("\n".join(report_lines))
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
