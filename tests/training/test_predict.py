"""Predictions on new images and the downloadable model.onnx, end to end: a real linear run on the pretrained
EfficientNet-Lite0 through the job code path, then the API, on SQLite and on Postgres."""

from __future__ import annotations

import io

import numpy as np
import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.ml.decoding import decode_array, normalised
from app.ml.images import ImageLimits, Rejection, inspect_image
from app.ml.input_spec import InputSpec
from app.ml.runtime import MIN_COSINE
from app.models import Image as ImageRow
from tests.factories import COLOURS, colour_jpeg
from tests.training.test_runs import _train, trained  # noqa: F401  (the fixture)

pytestmark = pytest.mark.slow


def _dev_images(client, engine, run_id: int) -> list[tuple[int, bytes, list[float]]]:  # type: ignore[no-untyped-def]
    """(image id, bytes, the app's own stored probabilities) of every dev image of the run."""
    items = client.get(f"/api/runs/{run_id}/predictions", params={"subset": "dev", "limit": 1000}).json()["items"]
    blobs = client.app.state.blobs
    with Session(engine) as session:
        shas = {image_id: sha for image_id, sha in session.execute(select(ImageRow.id, ImageRow.sha256))}
    return [(item["image_id"], blobs.path(shas[item["image_id"]]).read_bytes(), item["probs"]) for item in items]


def test_a_finished_run_predicts_new_images_as_it_scored_dev_and_its_onnx_model_agrees(trained) -> None:  # noqa: F811
    client, engine, dataset_id, split_id = trained
    run = _train(client, engine, dataset_id, split_id)
    inference = run["timings"]["inference"]
    assert (inference["runtime"], inference["provider"], inference["precision"]) == (
        "onnxruntime",
        "CPUExecutionProvider",
        "float32",
    )
    assert inference["min_cosine"] >= MIN_COSINE and inference["fallback_reason"] is None
    page = client.get(f"/runs/{run['id']}").text
    assert "Scored in <strong>ONNX Runtime</strong>" in page and "Try the model" in page
    assert "shorter side is 256 px" in page and "centre-crop 224 × 224" in page

    dev = _dev_images(client, engine, run["id"])
    not_an_image = b"these are my notes, not a picture"
    files = [
        ("files", ("first.jpg", dev[0][1], "image/jpeg")),
        ("files", ("notes.jpg", not_an_image, "image/jpeg")),
        ("files", ("second.jpg", dev[1][1], "image/jpeg")),
        ("files", ("fresh-red.jpg", colour_jpeg(COLOURS["red"], seed=999), "image/jpeg")),
    ]
    answer = client.post(f"/api/runs/{run['id']}/predict", files=files)

    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["runtime"] == "onnxruntime (model.onnx)"
    assert [item["filename"] for item in body["items"]] == ["first.jpg", "notes.jpg", "second.jpg", "fresh-red.jpg"]
    refused = body["items"][1]
    ingest_says = inspect_image(not_an_image, filename="notes.jpg", limits=ImageLimits())
    assert isinstance(ingest_says, Rejection)
    assert refused["top"] == [] and refused["refused"] == {"code": ingest_says.code, "reason": ingest_says.reason}
    labels = run["label_names"]
    for item, (_image_id, _data, stored) in zip((body["items"][0], body["items"][2]), dev[:2], strict=True):
        assert item["refused"] is None and len(item["top"]) == len(labels) == 3  # top-5 of three classes
        shown = [guess["probability"] for guess in item["top"]]
        assert shown == sorted(shown, reverse=True) and sum(shown) == pytest.approx(1.0, abs=1e-4)
        by_label = {guess["label"]: guess["probability"] for guess in item["top"]}
        np.testing.assert_allclose([by_label[name] for name in labels], stored, atol=1e-4)  # the same scoring
    assert body["items"][3]["top"][0]["label"] == "red"

    import onnxruntime

    model = client.get(f"/api/runs/{run['id']}/files/model.onnx")
    assert model.status_code == 200
    session = onnxruntime.InferenceSession(model.content, providers=["CPUExecutionProvider"])
    (model_input,) = session.get_inputs()
    assert model_input.name == "images" and model_input.shape[1:] == [3, 224, 224]
    spec = InputSpec.from_dict(run["timings"]["model_input"])
    for _image_id, data, stored in dev:
        pixels = decode_array(io.BytesIO(data), spec.preprocessing)[None]  # the documented preprocessing
        (probabilities,) = session.run(["probabilities"], {"images": normalised(pixels, spec.preprocessing)})
        assert int(np.argmax(probabilities[0])) == int(np.argmax(stored))
        np.testing.assert_allclose(probabilities[0], stored, atol=1e-4)


def test_predict_refuses_unknown_and_unfinished_runs_too_many_files_and_anonymous_callers(trained) -> None:  # noqa: F811
    client, _engine, dataset_id, split_id = trained
    one = [("files", ("a.jpg", colour_jpeg(COLOURS["blue"], seed=1), "image/jpeg"))]
    queued = client.post("/api/runs", json={"dataset_id": dataset_id, "split_id": split_id}).json()

    unknown = client.post("/api/runs/999999/predict", files=one)
    unfinished = client.post(f"/api/runs/{queued['run_id']}/predict", files=one)
    client.app.state.settings = client.app.state.settings.model_copy(update={"predict_max_files": 2})
    too_many = client.post(f"/api/runs/{queued['run_id']}/predict", files=one * 3)
    anonymous = client.post(f"/api/runs/{queued['run_id']}/predict", files=one, headers={"authorization": ""})

    assert unknown.status_code == 404 and "999999" in unknown.json()["detail"]
    assert unfinished.status_code == 409 and "only a finished run" in unfinished.json()["detail"]
    assert too_many.status_code == 413
    assert "at most 2 files" in too_many.json()["detail"] and "ERRORBOOK_PREDICT_MAX_FILES" in too_many.json()["detail"]
    assert anonymous.status_code == 401
    no_model = client.get(f"/api/runs/{queued['run_id']}/files/model.onnx")
    assert no_model.status_code == 404
