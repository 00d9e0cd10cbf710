"""The error page, its htmx fragments and forms, through the app as a browser would call them."""

from __future__ import annotations

import re
from typing import Any

from fastapi import FastAPI
from fastapi.testclient import TestClient
from markupsafe import escape

from tests.conftest import Person, browser_login
from tests.error_analysis.conftest import errors_of
from tests.factories import make_run

HOSTILE = '<img src=x onerror="alert(1)">'


def _cards(page: str) -> list[int]:
    return [int(found) for found in re.findall(r'id="card-(\d+)" data-card', page)]


def _count_cell(page: str, tag: str) -> int:
    row = re.search(rf'data-tag-row="{re.escape(str(escape(tag)))}">.*?data-count>(\d+)<', page, re.S)
    assert row, f"no ceiling row for {tag!r}"
    return int(row.group(1))


def test_the_page_shows_the_counts_the_grid_and_the_table(db, as_viewer) -> None:
    fixture = make_run(db, sizes={"dev": 80, "test": 20}, error_rate=0.3, seed=21)
    db.commit()
    page = as_viewer.get(f"/runs/{fixture.run.id}/errors")
    assert page.status_code == 200
    errors = errors_of(fixture)
    assert f"<strong data-total-errors>{len(errors)}</strong> errors in dev" in page.text
    assert f"<strong data-sampled-errors>{len(errors)}</strong> in the sample" in page.text
    api = as_viewer.get(f"/api/runs/{fixture.run.id}/errors").json()
    assert _cards(page.text) == [item["image_id"] for item in api["items"]]  # sorted as sampled
    assert f'src="/images/{errors[0].id}/thumb?v=' in page.text
    assert _count_cell(page.text, "mislabeled") == 0
    assert "tagging needs the reviewer role" in page.text and " disabled" in page.text
    assert 'method="post" action="/runs/' not in page.text and '/tags" class' not in page.text  # no forms
    test_page = as_viewer.get(f"/runs/{fixture.run.id}/errors?subset=test")
    assert _cards(test_page.text) and set(_cards(test_page.text)) <= {i.id for i in errors_of(fixture, "test")}


def test_tag_names_are_escaped_in_every_place_they_appear(db, as_reviewer) -> None:
    fixture = make_run(db, sizes={"dev": 30}, error_rate=0.5, seed=22)
    db.commit()
    image = errors_of(fixture)[0]
    assert as_reviewer.post(f"/api/datasets/{fixture.dataset.id}/tags", json={"name": HOSTILE}).status_code == 201
    as_reviewer.put(f"/api/runs/{fixture.run.id}/errors/{image.id}/tags", json={"tags": [HOSTILE], "note": HOSTILE})
    page = as_reviewer.get(f"/runs/{fixture.run.id}/errors").text
    detail = as_reviewer.get(f"/runs/{fixture.run.id}/errors/{image.id}").text
    for text in (page, detail):
        assert HOSTILE not in text
        assert "<img src=x" not in text
    assert page.count(str(escape(HOSTILE))) >= 4  # toolbar, card, table row, chart label, category forms
    assert str(escape(HOSTILE)) in detail
    assert _count_cell(page, HOSTILE) == 1


def test_a_key_press_toggle_returns_the_card_and_the_updated_table(app, db, people) -> None:
    fixture = make_run(db, sizes={"dev": 40}, error_rate=0.5, seed=23)
    db.commit()
    image = errors_of(fixture)[0]
    mislabeled = next(t for t in _tags(app, people, fixture.dataset.id) if t["name"] == "mislabeled")
    url = f"/runs/{fixture.run.id}/errors/{image.id}/tags/{mislabeled['id']}/toggle?subset=dev"
    with TestClient(app, follow_redirects=False) as client:
        token = browser_login(client, people["reviewer"])
        headers = {"x-csrf-token": token, "hx-request": "true"}
        on = client.post(url, headers=headers)
        assert on.status_code == 200, on.text
        assert f'id="card-{image.id}"' in on.text and 'data-tag-name="mislabeled"' in on.text
        assert f"by {people['reviewer'].name}" in on.text
        assert 'id="ceiling" hx-swap-oob="true"' in on.text
        assert _count_cell(on.text, "mislabeled") == 1
        off = client.post(url, headers=headers)
        assert 'data-tag-name="mislabeled"' not in off.text and _count_cell(off.text, "mislabeled") == 0
        assert client.post(url).status_code == 403  # no CSRF token
        page = client.get(f"/runs/{fixture.run.id}/errors").text
        assert f"by {people['reviewer'].name}" in page  # who tagged survives a reload


def _tags(app: FastAPI, people: dict[str, Person], dataset_id: int) -> list[dict[str, Any]]:
    with TestClient(app, headers={"authorization": f"Bearer {people['viewer'].token}"}) as client:
        return list(client.get(f"/api/datasets/{dataset_id}/tags").json())


def test_a_viewer_cannot_tag_from_the_page(app, db, people) -> None:
    fixture = make_run(db, sizes={"dev": 20}, error_rate=0.5, seed=24)
    db.commit()
    image = errors_of(fixture)[0]
    tag_id = _tags(app, people, fixture.dataset.id)[0]["id"]
    with TestClient(app, follow_redirects=False) as client:
        token = browser_login(client, people["viewer"])
        refused = client.post(
            f"/runs/{fixture.run.id}/errors/{image.id}/tags/{tag_id}/toggle",
            headers={"x-csrf-token": token, "hx-request": "true"},
        )
        assert refused.status_code == 403
        assert "reviewer role" in refused.text
        page = client.get(f"/runs/{fixture.run.id}/errors").text
        assert 'data-tag-name="mislabeled"' not in page


def test_new_sample_and_correct_examples_toggle_through_the_forms(app, db, people) -> None:
    fixture = make_run(db, sizes={"dev": 120}, error_rate=0.3, seed=25)
    db.commit()
    page_url = f"/runs/{fixture.run.id}/errors?subset=dev"
    with TestClient(app, follow_redirects=False) as client:
        token = browser_login(client, people["reviewer"])
        first = _cards(client.get(page_url).text)
        form = {"csrf_token": token, "subset": "dev", "size": "10", "seed": "", "include_correct": "0"}
        drawn = client.post(f"/runs/{fixture.run.id}/errors/sample", data=form)
        assert drawn.status_code == 303 and drawn.headers["location"] == page_url
        second_page = client.get(page_url).text
        second = _cards(second_page)
        assert len(second) == 10 and second != first[:10]
        assert "Random seed 1" in second_page and "Mix in 1 correctly classified example<" in second_page

        client.post(f"/runs/{fixture.run.id}/errors/sample", data={**form, "seed": "1", "include_correct": "1"})
        mixed_page = client.get(page_url).text
        mixed = _cards(mixed_page)
        assert len(mixed) == 11 and [i for i in mixed if i in second] == second  # same errors, one correct added
        assert mixed_page.count("thumb ecard correct") == 1
        assert "Hide the correctly classified examples" in mixed_page
        assert client.post(f"/runs/{fixture.run.id}/errors/sample", data={**form, "seed": "x"}).status_code == 422


def test_notes_and_categories_from_the_page(app, db, people) -> None:
    fixture = make_run(db, sizes={"dev": 30}, error_rate=0.5, seed=26)
    db.commit()
    image = errors_of(fixture)[0]
    dataset_id, run_id = fixture.dataset.id, fixture.run.id
    back = f"/runs/{run_id}/errors?subset=dev"
    with TestClient(app, follow_redirects=False) as client:
        token = browser_login(client, people["reviewer"])
        headers = {"x-csrf-token": token, "hx-request": "true"}
        detail = client.get(f"/runs/{run_id}/errors/{image.id}", headers=headers)
        assert detail.status_code == 200 and "<html" not in detail.text and "Top 5 classes" in detail.text
        assert "<html" in client.get(f"/runs/{run_id}/errors/{image.id}").text  # without htmx: a whole page
        noted = client.post(f"/runs/{run_id}/errors/{image.id}/note", data={"note": "fence"}, headers=headers)
        assert noted.status_code == 200 and ">fence</textarea>" in noted.text
        assert f'id="card-{image.id}"' in noted.text and 'hx-swap-oob="true"' in noted.text

        added = client.post(f"/datasets/{dataset_id}/tags", data={"csrf_token": token, "name": "blurry", "next": back})
        assert added.status_code == 303 and added.headers["location"] == back
        assert (
            client.post(
                f"/datasets/{dataset_id}/tags", data={"csrf_token": token, "name": "x", "next": "//evil.example"}
            ).headers["location"]
            == "/"
        )
        page = client.get(back).text
        key_two = re.search(r'data-key="2"[^>]*>(.*?)</button>', page, re.S)
        assert key_two and key_two.group(1).strip().endswith("blurry")  # the new category got the next key
