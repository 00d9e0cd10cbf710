"""No lost updates: 10 clients relabel the same 20 images for 10 s over real HTTP against ``errorbook serve``, on
SQLite and on Postgres. Every accepted change is in the history, every refused one got 409 with the current label,
the final label is the last accepted change, and nothing failed with a 5xx."""

from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.auth import service as auth_service
from app.models import Image, Label, LabelChange
from tests.browser import serve, server_env
from tests.factories import make_run

pytestmark = pytest.mark.slow

CLIENTS = 10
IMAGES = 20
SECONDS = 10.0


@dataclass
class Accepted:
    image_id: int
    change_id: int
    version: int
    label: str
    user: str


@dataclass
class Outcomes:
    accepted: list[Accepted] = field(default_factory=list)
    refused: int = 0
    unexpected: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


def _client_loop(
    base_url: str, token: str, user: str, image_ids: list[int], labels: list[str], seed: int, outcomes: Outcomes
) -> None:
    rng = random.Random(seed)
    seen: dict[int, tuple[str, int]] = {}  # what this client believes: image -> (label, version)
    deadline = time.monotonic() + SECONDS
    with httpx.Client(base_url=base_url, headers={"authorization": f"Bearer {token}"}, timeout=60) as client:
        while time.monotonic() < deadline:
            image_id = rng.choice(image_ids)
            if image_id not in seen or rng.random() < 0.2:
                state = client.get(f"/api/images/{image_id}/label").json()
                seen[image_id] = (state["label"], state["label_version"])
            label, version = seen[image_id]
            new_label = rng.choice([name for name in labels if name != label])
            response = client.post(
                f"/api/images/{image_id}/label",
                json={"label": new_label, "expected_version": version, "reason": f"client {seed}"},
            )
            body = response.json() if response.headers.get("content-type", "").startswith("application/json") else {}
            with outcomes.lock:
                if response.status_code == 200:
                    outcomes.accepted.append(
                        Accepted(image_id, body["change_id"], body["label_version"], new_label, user)
                    )
                    seen[image_id] = (body["label"], body["label_version"])
                elif (
                    response.status_code == 409
                    and {"label", "label_version", "changed_by"} <= body.keys()
                    and body["label_version"] > version  # refused because someone else got there first
                ):
                    outcomes.refused += 1
                    seen[image_id] = (body["label"], body["label_version"])
                else:
                    outcomes.unexpected.append(f"{response.status_code}: {response.text[:300]}")


def test_ten_clients_relabeling_the_same_twenty_images_lose_no_update(fresh_database, tmp_path: Path) -> None:
    with Session(fresh_database.engine) as session:
        fixture = make_run(session, label_names=("cat", "dog", "fox", "owl"), sizes={"dev": IMAGES}, seed=3)
        tokens = []
        for index in range(CLIENTS):
            user = auth_service.create_user(session, name=f"reviewer-{index}", role="reviewer")
            tokens.append((auth_service.create_token(session, user=user, name="load")[1], user.name))
        session.commit()
        image_ids = [image.id for image in fixture.images["dev"]]
        labels = [label.name for label in fixture.labels]
        dataset_id = fixture.dataset.id

    outcomes = Outcomes()
    env = server_env(data_dir=tmp_path / "data", database_url=fresh_database.url)
    with serve(env, tmp_path / "serve.log") as base_url:
        threads = [
            threading.Thread(
                target=_client_loop, args=(base_url, token, name, image_ids, labels, seed, outcomes), daemon=True
            )
            for seed, (token, name) in enumerate(tokens)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(SECONDS + 90)
        assert not any(thread.is_alive() for thread in threads)
    log = (tmp_path / "serve.log").read_text(errors="replace")
    assert outcomes.unexpected == [], outcomes.unexpected[:5]
    assert " 500 " not in log and "Traceback" not in log, log[-3000:]
    assert len(outcomes.accepted) > IMAGES and outcomes.refused > 0  # there was real contention
    print(f"{fresh_database.backend}: {len(outcomes.accepted)} changes accepted, {outcomes.refused} refused with 409")

    with Session(fresh_database.engine) as session:
        query = select(Label.id, Label.name).where(Label.dataset_id == dataset_id)
        names = {label_id: name for label_id, name in session.execute(query)}
        for image_id in image_ids:
            accepted = sorted((a for a in outcomes.accepted if a.image_id == image_id), key=lambda a: a.version)
            history = list(
                session.scalars(
                    select(LabelChange).where(LabelChange.image_id == image_id).order_by(LabelChange.version)
                )
            )
            relabels = [change for change in history if change.kind == "relabel"]
            # Exactly the accepted changes are in the history (none lost, none invented), with their versions.
            assert [(c.id, c.version, names.get(c.new_label_id or 0)) for c in relabels] == [
                (a.change_id, a.version, a.label) for a in accepted
            ]
            assert [c.version for c in history] == list(range(1, len(history) + 1))  # no gaps, no duplicates
            for previous, change in zip(history, history[1:], strict=False):
                assert change.old_label_id == previous.new_label_id  # each change starts from the one before
            image = session.get(Image, image_id)
            assert image is not None
            final = accepted[-1] if accepted else None
            assert image.label_version == (final.version if final else 1)
            if final is not None:
                assert names[image.label_id] == final.label
