"""Deciding a proposal at once cannot let two reviewers win, over real HTTP against ``errorbook serve`` on SQLite and
Postgres: for each proposed relabel, three reviewers confirm, one rejects and one relabels the image outside the
campaign, all released together. Exactly one of the confirmations or the rejection decides the proposal, the label
changes exactly once (by the confirmation or by the direct relabel, never both), and nothing fails with a 5xx."""

from __future__ import annotations

import threading
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.auth import service as auth_service
from app.models import Image, LabelChange, LabelProposal
from tests.browser import serve, server_env
from tests.factories import make_run

pytestmark = pytest.mark.slow

PROPOSALS = 8
CONFIRMERS = 3


def test_two_reviewers_deciding_a_proposal_at_once_cannot_both_win(fresh_database, tmp_path: Path) -> None:
    with Session(fresh_database.engine) as session:
        fixture = make_run(session, label_names=("cat", "dog", "fox"), sizes={"dev": 20, "test": 20}, seed=5)
        tokens = {}
        for name in ["proposer", "rejecter", "direct", *(f"confirmer-{i}" for i in range(CONFIRMERS))]:
            user = auth_service.create_user(session, name=name, role="reviewer")
            tokens[name] = auth_service.create_token(session, user=user, name="race")[1]
        session.commit()
        dataset_id, run_id = fixture.dataset.id, fixture.run.id
        labels = [label.name for label in fixture.labels]

    env = server_env(data_dir=tmp_path / "data", database_url=fresh_database.url)
    results: dict[tuple[int, str], int] = {}
    with serve(env, tmp_path / "serve.log") as base_url:

        def client(name: str) -> httpx.Client:
            return httpx.Client(base_url=base_url, headers={"authorization": f"Bearer {tokens[name]}"}, timeout=60)

        with client("proposer") as proposer:
            created = proposer.post(
                f"/api/datasets/{dataset_id}/reviews",
                json={"run_id": run_id, "suspicious_per_subset": PROPOSALS // 2, "correct_per_subset": 0},
            )
            review_id = created.json()["review_id"]
            items = proposer.get(f"/api/reviews/{review_id}").json()["items"][:PROPOSALS]
            for item in items:
                new = next(name for name in labels if name != item["label"])
                body = {"label": new, "expected_version": item["label_version"], "review_id": review_id}
                assert proposer.post(f"/api/images/{item['image_id']}/label", json=body).json()["review_status"] == (
                    "proposed"
                )

        def contender(name: str, image_id: int, label: str, barrier: threading.Barrier) -> None:
            with client(name) as http:
                if name == "direct":
                    url, body = f"/api/images/{image_id}/label", {"label": label, "expected_version": 1}
                else:
                    verb = "reject" if name == "rejecter" else "confirm"
                    url, body = f"/api/reviews/{review_id}/items/{image_id}/{verb}", {}
                barrier.wait()
                results[(image_id, name)] = http.post(url, json=body).status_code

        for item in items:
            names = ["rejecter", "direct", *(f"confirmer-{i}" for i in range(CONFIRMERS))]
            barrier = threading.Barrier(len(names))
            third = labels[-1] if labels[-1] != item["label"] else labels[0]
            threads = [
                threading.Thread(target=contender, args=(name, item["image_id"], third, barrier), daemon=True)
                for name in names
            ]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(90)
            assert not any(thread.is_alive() for thread in threads)
    log = (tmp_path / "serve.log").read_text(errors="replace")
    assert " 500 " not in log and "Traceback" not in log, log[-3000:]
    assert set(results.values()) <= {200, 409}, results

    with Session(fresh_database.engine) as session:
        for item in items:
            image_id = item["image_id"]
            confirms = [results[(image_id, f"confirmer-{i}")] for i in range(CONFIRMERS)]
            rejected = results[(image_id, "rejecter")] == 200
            direct = results[(image_id, "direct")] == 200
            assert confirms.count(200) + rejected == 1, (image_id, confirms, rejected)  # one decision, one winner
            assert (200 in confirms) != direct  # the label changes by exactly one of them
            proposal = session.scalar(select(LabelProposal).where(LabelProposal.image_id == image_id))
            assert proposal is not None
            assert proposal.state == ("confirmed" if 200 in confirms else "rejected")
            changes = list(
                session.scalars(
                    select(LabelChange).where(LabelChange.image_id == image_id).order_by(LabelChange.version)
                )
            )
            assert [change.version for change in changes] == [1, 2]
            image = session.get(Image, image_id)
            assert image is not None and image.label_version == 2
            assert (changes[1].confirmed_by_id is not None) == (200 in confirms)
            assert image.label_id == changes[1].new_label_id
