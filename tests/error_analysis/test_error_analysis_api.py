"""The error-analysis API on a real database: sampling, tagging, categories and the ceiling table."""

from __future__ import annotations

import csv
import io
from typing import Any

import httpx
import pytest

from app.models import Prediction
from tests.error_analysis.conftest import change_label, correct_of, errors_of
from tests.factories import make_run


def _ids(response: httpx.Response) -> list[int]:
    assert response.status_code == 200, response.text
    return [item["image_id"] for item in response.json()["items"]]


def test_same_seed_gives_the_same_items_and_only_errors(db, as_reviewer, as_viewer) -> None:
    fixture = make_run(db, sizes={"dev": 120, "test": 30}, error_rate=0.3, seed=11)
    db.commit()
    url = f"/api/runs/{fixture.run.id}/errors?subset=dev&sample=15&seed=3"
    first, again, other = as_reviewer.get(url), as_viewer.get(url), as_reviewer.get(url.replace("seed=3", "seed=4"))
    assert _ids(first) == _ids(again)  # reproducible, whoever asks
    assert _ids(other) != _ids(first)
    errors = {image.id for image in errors_of(fixture)}
    body = first.json()
    assert body["total_errors"] == len(errors)
    assert body["sample_size"] == 15 == len(body["items"])
    assert set(_ids(first)) <= errors
    assert all(item["is_error"] and item["label"] != item["predicted"] for item in body["items"])


def test_a_subset_with_fewer_errors_than_asked_is_sampled_whole(db, as_viewer) -> None:
    fixture = make_run(db, sizes={"dev": 40, "test": 40}, error_rate=0.2, seed=2)
    db.commit()
    for subset in ("dev", "test"):
        body = as_viewer.get(f"/api/runs/{fixture.run.id}/errors?subset={subset}&sample=100&seed=9").json()
        assert {item["image_id"] for item in body["items"]} == {image.id for image in errors_of(fixture, subset)}
        assert body["sample_size"] == body["total_errors"] == len(errors_of(fixture, subset))


def test_the_stored_sample_stays_until_someone_draws_a_new_one(db, as_reviewer, as_viewer) -> None:
    fixture = make_run(db, sizes={"dev": 200}, error_rate=0.3, seed=5)
    db.commit()
    url = f"/api/runs/{fixture.run.id}/errors?subset=dev"
    shown = _ids(as_viewer.get(url))
    assert len(shown) == min(100, len(errors_of(fixture)))
    assert _ids(as_reviewer.get(url)) == shown == _ids(as_viewer.get(url))

    drawn = as_reviewer.post(f"/api/runs/{fixture.run.id}/errors/sample", json={"subset": "dev", "size": 20})
    assert drawn.status_code == 201, drawn.text
    assert drawn.json()["seed"] == 1  # the next unused seed, so the sample differs
    fresh = _ids(as_viewer.get(url))
    assert fresh == [item["image_id"] for item in drawn.json()["items"]]
    assert len(fresh) == 20 and set(fresh) != set(shown[:20])
    assert _ids(as_viewer.get(url + "&seed=1&sample=20")) == fresh


def test_correct_examples_appear_only_when_asked_and_leave_the_errors_alone(db, as_reviewer) -> None:
    fixture = make_run(db, sizes={"dev": 150}, error_rate=0.3, seed=8)
    db.commit()
    base = f"/api/runs/{fixture.run.id}/errors?subset=dev&sample=12&seed=2"
    plain = as_reviewer.get(base).json()
    mixed = as_reviewer.get(base + "&include_correct=5").json()
    assert all(item["is_error"] for item in plain["items"])
    correct_ids = {image.id for image in correct_of(fixture)}
    mixed_correct = [item["image_id"] for item in mixed["items"] if not item["is_error"]]
    assert len(mixed_correct) == 5 == mixed["correct_in_sample"]
    assert set(mixed_correct) <= correct_ids
    assert [item["image_id"] for item in mixed["items"] if item["is_error"]] == _ids_of(plain)

    stored = as_reviewer.post(
        f"/api/runs/{fixture.run.id}/errors/sample", json={"size": 12, "seed": 2, "include_correct": 5}
    ).json()
    assert [item["image_id"] for item in stored["items"]] == [item["image_id"] for item in mixed["items"]]


def _ids_of(body: dict[str, Any]) -> list[int]:
    return [item["image_id"] for item in body["items"]]


def test_current_labels_decide_what_counts_as_an_error(db, as_reviewer) -> None:
    fixture = make_run(db, sizes={"dev": 60}, error_rate=0.3, seed=4)
    db.commit()
    analysis_url = f"/api/runs/{fixture.run.id}/error-analysis?subset=dev"
    before = as_reviewer.get(analysis_url).json()
    errors = errors_of(fixture)
    assert before["total_errors"] == len(errors) and before["subset_size"] == 60

    fixed, ambiguous = errors[0], errors[1]
    change_label(db, fixed, label_id=fixture.predicted[fixed.id])  # the model was right: a wrong label
    change_label(db, ambiguous, excluded="ambiguous")
    after = as_reviewer.get(analysis_url).json()
    assert after["total_errors"] == len(errors) - 2
    assert after["subset_size"] == 59
    assert after["subset_error"] == pytest.approx((len(errors) - 2) / 59)
    items = {item["image_id"]: item for item in as_reviewer.get(f"/api/runs/{fixture.run.id}/errors").json()["items"]}
    assert items[fixed.id]["is_error"] is False  # still in the stored sample, now shown as correct
    assert items[ambiguous.id]["is_error"] is False


def test_ceiling_table_of_a_worked_example(db, as_reviewer) -> None:
    """50 dev examples, 10 errors (dev error 20%); 8 errors reviewed: 5 mislabeled, 4 blurry (one has both)."""
    fixture = make_run(db, sizes={"dev": 50}, error_rate=0.0, seed=1)
    wrong = fixture.images["dev"][:10]
    for image in wrong:
        other = next(label.id for label in fixture.labels if label.id != image.label_id)
        prediction = db.get(Prediction, (fixture.run.id, image.id))
        assert prediction is not None
        prediction.predicted_label_id, prediction.is_error = other, True
    db.commit()
    run_id = fixture.run.id
    assert as_reviewer.post(f"/api/datasets/{fixture.dataset.id}/tags", json={"name": "blurry"}).status_code == 201
    for index, image in enumerate(wrong[:8]):
        tags = (["mislabeled"] if index <= 4 else []) + (["blurry"] if index >= 4 else [])
        response = as_reviewer.put(f"/api/runs/{run_id}/errors/{image.id}/tags", json={"tags": tags})
        assert response.status_code == 200, response.text

    body = as_reviewer.get(f"/api/runs/{run_id}/error-analysis?subset=dev").json()
    assert body["subset_error"] == pytest.approx(0.2)
    assert (body["total_errors"], body["reviewed"], body["sampled_errors"]) == (10, 8, 10)
    mislabeled, blurry = body["categories"]  # sorted by share
    assert (mislabeled["tag"], mislabeled["count"], blurry["tag"], blurry["count"]) == ("mislabeled", 5, "blurry", 4)
    assert mislabeled["share"] == pytest.approx(0.625)
    assert mislabeled["estimated_errors"] == pytest.approx(6.25)
    assert mislabeled["ceiling_error"] == pytest.approx(0.075)  # 20% x (1 - 5/8)
    assert (mislabeled["share_low"], mislabeled["share_high"]) == pytest.approx((0.3057, 0.8632), abs=1e-4)
    assert blurry["ceiling_error"] == pytest.approx(0.1)
    assert (blurry["share_low"], blurry["share_high"]) == pytest.approx((0.2152, 0.7848), abs=1e-4)
    assert mislabeled["description"] == "Fixing mislabeled completely brings dev error from 20.0% to at best 7.5%."

    exported = as_reviewer.get(f"/api/runs/{run_id}/error-analysis.csv?subset=dev")
    assert exported.status_code == 200 and exported.headers["content-type"].startswith("text/csv")
    rows = list(csv.reader(io.StringIO(exported.text)))
    assert rows[0][0] == "tag" and rows[1][:3] == ["mislabeled", "5", "0.6250"]
    assert rows[1][-1] == "0.0750"


def test_put_tags_replaces_tags_and_note_and_records_who(db, as_reviewer, people) -> None:
    fixture = make_run(db, sizes={"dev": 30}, error_rate=0.5, seed=6)
    db.commit()
    image = errors_of(fixture)[0]
    as_reviewer.post(f"/api/datasets/{fixture.dataset.id}/tags", json={"name": "Occluded"})
    url = f"/api/runs/{fixture.run.id}/errors/{image.id}/tags"
    first = as_reviewer.put(url, json={"tags": ["mislabeled", "occluded"], "note": "  cat behind a fence  "})
    assert first.status_code == 200, first.text
    assert first.json()["tags"] == ["mislabeled", "Occluded"]
    assert first.json()["note"] == "cat behind a fence"
    assert first.json()["tagged_by"] == people["reviewer"].name
    second = as_reviewer.put(url, json={"tags": ["Occluded"]}).json()
    assert second["tags"] == ["Occluded"] and second["note"] == "cat behind a fence"  # note left as it was

    unknown = as_reviewer.put(url, json={"tags": ["Occluded", "sunset"]})
    assert unknown.status_code == 422 and unknown.json()["unknown"] == ["sunset"]
    too_long = as_reviewer.put(url, json={"note": "x" * 1001})
    assert too_long.status_code == 422
    not_in_run = as_reviewer.put(f"/api/runs/{fixture.run.id}/errors/999999/tags", json={"tags": []})
    assert not_in_run.status_code == 404
    listed = as_reviewer.get(f"/api/runs/{fixture.run.id}/errors?sample=100").json()["items"]
    assert next(item for item in listed if item["image_id"] == image.id)["tags"] == ["Occluded"]


def test_a_viewer_cannot_tag_or_change_categories(db, as_viewer, as_reviewer) -> None:
    fixture = make_run(db, sizes={"dev": 30}, error_rate=0.5, seed=7)
    db.commit()
    image = errors_of(fixture)[0]
    run_id, dataset_id = fixture.run.id, fixture.dataset.id
    refused = [
        as_viewer.put(f"/api/runs/{run_id}/errors/{image.id}/tags", json={"tags": ["mislabeled"]}),
        as_viewer.post(f"/api/runs/{run_id}/errors/sample", json={}),
        as_viewer.post(f"/api/datasets/{dataset_id}/tags", json={"name": "blurry"}),
    ]
    assert [response.status_code for response in refused] == [403, 403, 403]
    item = next(i for i in as_reviewer.get(f"/api/runs/{run_id}/errors").json()["items"] if i["image_id"] == image.id)
    assert item["tags"] == [] and item["tagged_by"] is None
    assert [tag["name"] for tag in as_viewer.get(f"/api/datasets/{dataset_id}/tags").json()] == ["mislabeled"]


def test_categories_can_be_added_renamed_recoloured_and_merged(db, as_reviewer) -> None:
    fixture = make_run(db, sizes={"dev": 40}, error_rate=0.5, seed=9)
    db.commit()
    base = f"/api/datasets/{fixture.dataset.id}/tags"
    blurry = as_reviewer.post(base, json={"name": "blurry", "color": "#00AA00"}).json()
    dark = as_reviewer.post(base, json={"name": "dark"}).json()
    assert blurry["color"] == "#00aa00"
    assert as_reviewer.post(base, json={"name": "  Blurry "}).status_code == 409
    assert as_reviewer.post(base, json={"name": "x", "color": "red"}).status_code == 422
    renamed = as_reviewer.patch(f"{base}/{dark['id']}", json={"name": "low light", "color": "#123456"}).json()
    assert (renamed["name"], renamed["color"]) == ("low light", "#123456")

    first, second = errors_of(fixture)[:2]
    tags_url = f"/api/runs/{fixture.run.id}/errors/{{}}/tags"
    as_reviewer.put(tags_url.format(first.id), json={"tags": ["blurry", "low light"]})
    as_reviewer.put(tags_url.format(second.id), json={"tags": ["blurry"]})
    merged = as_reviewer.post(f"{base}/{blurry['id']}/merge", json={"into": dark["id"]})
    assert merged.status_code == 200, merged.text
    assert [tag["name"] for tag in as_reviewer.get(base).json()] == ["mislabeled", "low light"]
    items = {i["image_id"]: i for i in as_reviewer.get(f"/api/runs/{fixture.run.id}/errors").json()["items"]}
    assert items[first.id]["tags"] == ["low light"] and items[second.id]["tags"] == ["low light"]

    mislabeled = as_reviewer.get(base).json()[0]
    assert as_reviewer.patch(f"{base}/{mislabeled['id']}", json={"name": "wrong"}).status_code == 409
    assert as_reviewer.post(f"{base}/{mislabeled['id']}/merge", json={"into": dark["id"]}).status_code == 409
    assert as_reviewer.post(f"{base}/{dark['id']}/merge", json={"into": dark["id"]}).status_code == 422


def test_label_filters_narrow_what_is_shown_not_what_was_sampled(db, as_viewer) -> None:
    fixture = make_run(db, sizes={"dev": 150}, error_rate=0.4, seed=12)
    db.commit()
    url = f"/api/runs/{fixture.run.id}/errors?subset=dev&sample=30&seed=0"
    everything = as_viewer.get(url).json()
    cat_id = fixture.labels[0].id
    filtered = as_viewer.get(url + "&label=cat&predicted=dog").json()
    expected = [i["image_id"] for i in everything["items"] if i["label"] == "cat" and i["predicted"] == "dog"]
    assert [item["image_id"] for item in filtered["items"]] == expected
    assert filtered["matching_errors"] == sum(
        1
        for image in errors_of(fixture)
        if image.label_id == cat_id and fixture.predicted[image.id] == fixture.labels[1].id
    )
    assert filtered["total_errors"] == everything["total_errors"]
    assert as_viewer.get(url + "&label=zebra").status_code == 422


def test_unfinished_runs_unknown_runs_and_other_subsets_are_refused(db, as_viewer) -> None:
    fixture = make_run(db, sizes={"dev": 20}, seed=13)
    fixture.run.status = "running"
    db.commit()
    assert as_viewer.get(f"/api/runs/{fixture.run.id}/errors").status_code == 409
    fixture.run.status = "succeeded"
    db.commit()
    assert as_viewer.get(f"/api/runs/{fixture.run.id}/errors?subset=train").status_code == 422
    assert as_viewer.get(f"/api/runs/{fixture.run.id}/errors?subset=train-dev").json()["total_errors"] == 0
    assert as_viewer.get("/api/runs/987654/error-analysis").status_code == 404
    assert as_viewer.get(f"/api/runs/{fixture.run.id}/errors?sample=0").status_code == 422


def test_large_view_has_top5_probabilities_and_label_history(db, as_reviewer) -> None:
    fixture = make_run(db, label_names=("a", "b", "c", "d", "e", "f", "g"), sizes={"dev": 30}, error_rate=0.5, seed=3)
    db.commit()
    image = errors_of(fixture)[0]
    change_label(db, image, label_id=fixture.predicted[image.id])
    detail = as_reviewer.get(f"/api/runs/{fixture.run.id}/errors/{image.id}").json()
    probabilities = [top["probability"] for top in detail["top"]]
    assert len(probabilities) == 5 and probabilities == sorted(probabilities, reverse=True)
    predicted_name = next(label.name for label in fixture.labels if label.id == fixture.predicted[image.id])
    assert detail["top"][0]["label"] == predicted_name
    assert [change["kind"] for change in detail["history"]] == ["import", "relabel"]
    assert detail["history"][1]["new_label"] == predicted_name
    assert detail["item"]["is_error"] is False


def test_csv_export_neutralises_formula_tag_names(db, as_reviewer) -> None:
    fixture = make_run(db, sizes={"dev": 20}, error_rate=0.5, seed=14)
    db.commit()
    as_reviewer.post(f"/api/datasets/{fixture.dataset.id}/tags", json={"name": '=HYPERLINK("http://x")'})
    text = as_reviewer.get(f"/api/runs/{fixture.run.id}/error-analysis.csv").text
    assert "'=HYPERLINK" in text and "\n=HYPERLINK" not in text


def test_a_merged_label_stands_for_the_label_it_was_merged_into(db, as_viewer) -> None:
    fixture = make_run(db, sizes={"dev": 90}, error_rate=0.4, seed=15)
    _, dog, fox = fixture.labels
    fox.merged_into_id = dog.id  # as label merging leaves it: fox's images moved to dog, each with a trace
    for image in fixture.images["dev"]:
        if image.label_id == fox.id:
            change_label(db, image, label_id=dog.id)
    db.commit()

    def merged(label_id: int) -> int:
        return dog.id if label_id == fox.id else label_id

    expected = sum(
        1 for image in fixture.images["dev"] if merged(image.label_id) != merged(fixture.predicted[image.id])
    )
    body = as_viewer.get(f"/api/runs/{fixture.run.id}/errors?sample=100").json()
    assert body["total_errors"] == expected < len(errors_of(fixture))  # "fox" for a (former) fox is no error
    assert all(item["predicted"] != "fox" and item["label"] != item["predicted"] for item in body["items"])
    assert as_viewer.get(f"/api/runs/{fixture.run.id}/errors?predicted=fox").status_code == 422
    page = as_viewer.get(f"/runs/{fixture.run.id}/errors").text
    assert '<option value="fox"' not in page and '<option value="dog"' in page
