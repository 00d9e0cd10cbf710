"""Schemathesis fuzzing of every operation in our OpenAPI schema (/api/openapi.json): no input, valid or not,
may make the API answer with a 5xx.

Requests go in-process through the ASGI transport as an admin (Bearer token), on SQLite and on Postgres, against a
small world of real rows (a dataset with a finished run, tags, an upload, a review campaign) so that half of the
generated cases reach existing ids instead of stopping at 404. Both positive (schema-valid) and negative
(schema-violating) cases are generated, multipart uploads and raw chunk bodies included.

The CI run is bounded: ``ERRORBOOK_FUZZ_EXAMPLES`` cases per operation and mode (default 12, i.e. about 24 per
operation; the whole test takes well under two minutes per backend). A longer local run:

    ERRORBOOK_FUZZ_EXAMPLES=500 ERRORBOOK_TEST_POSTGRES_URL=postgresql://postgres@127.0.0.1:5432/test \\
        pytest tests/web/test_fuzz.py -q -p no:cacheprovider --timeout=0

(``--timeout=0`` lifts the suite's 10-minute limit per test. Measured on the 2-core CI-class machine at load
average ~8: 12 examples ~65 s per backend, 150 examples ~9.5 min per backend, so 500 take about half an hour each.)

Every failure lists the operation, the status (or exception) and a curl-like reproduction of the request.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from typing import Any

import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from sqlalchemy.orm import Session

from app.error_analysis import service as error_analysis
from app.models import ApiToken, Job, User
from tests.conftest import Person, api_client
from tests.factories import make_run

EXAMPLES = int(os.environ.get("ERRORBOOK_FUZZ_EXAMPLES", "12"))


@dataclass
class World:
    ids: dict[str, int | str]
    protected_token_id: int


def _world(db: Session, app: Any, admin: Person) -> World:
    """Existing rows for the path parameters, made through the services and the API as users would."""
    fixture = make_run(db, sizes={"train": 20, "dev": 20, "test": 20}, error_rate=0.4, seed=5)
    actor = db.get(User, admin.user_id)
    assert actor is not None
    tag = error_analysis.add_tag(db, dataset_id=fixture.dataset.id, name="blurry")
    sample = error_analysis.error_sample(db, run_id=fixture.run.id, subset="dev")
    first_error = next(item for item in sample.items if item.is_error)
    error_analysis.set_annotation(
        db, run_id=fixture.run.id, image_id=first_error.image_id, tags=["blurry"], note="n", actor=actor
    )
    for images in fixture.images.values():  # the blobs behind the rows, so exports run to the end
        for image in images:
            path = app.state.blobs.path(image.sha256)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(image.sha256.encode())
    job = Job(kind="demo", payload={})
    db.add(job)
    db.commit()
    with api_client(app, admin.token) as client:
        review = client.post(
            f"/api/datasets/{fixture.dataset.id}/reviews",
            json={"run_id": fixture.run.id, "suspicious_per_subset": 3, "correct_per_subset": 1},
        )
        assert review.status_code == 201, review.text
        image = fixture.images["dev"][0]
        other_label = next(label.name for label in fixture.labels if label.id != image.label_id)
        relabel = client.post(
            f"/api/images/{image.id}/label",
            json={"label": other_label, "expected_version": image.label_version, "reason": "r"},
        )
        assert relabel.status_code == 200, relabel.text
        upload = client.post(f"/api/datasets/{fixture.dataset.id}/uploads/open", json={})
        assert upload.status_code == 200, upload.text
        spare = client.post("/api/tokens", json={"name": "spare"})
        history = client.get(f"/api/images/{image.id}/history").json()
    protected = db.query(ApiToken).filter(ApiToken.user_id == admin.user_id, ApiToken.name == "test").one()
    change_ids = [entry["id"] for entry in history]
    return World(
        ids={
            "dataset_id": fixture.dataset.id,
            "run_id": fixture.run.id,
            "split_id": fixture.split.id,
            "image_id": first_error.image_id,
            "label_id": fixture.labels[0].id,
            "tag_id": tag.id,
            "job_id": job.id,
            "review_id": review.json()["review_id"],
            "upload_id": upload.json()["upload_id"],
            "token_id": spare.json()["id"],
            "entry_id": 1,
            "change_id": change_ids[-1],
            "name": "labels.json",
        },
        protected_token_id=protected.id,
    )


ODD_NUMBERS = (math.nan, math.inf, -math.inf)


def _oddified(value: Any, draw: st.DrawFn) -> Any:
    """`value` with some numbers made NaN or ±Infinity and some strings given a lone surrogate: JSON that Python
    parses but that no schema strategy produces (schemathesis only generates finite numbers and encodable text)."""
    if isinstance(value, dict):
        return {key: _oddified(item, draw) for key, item in value.items()}
    if isinstance(value, list):
        return [_oddified(item, draw) for item in value]
    if isinstance(value, int | float) and not isinstance(value, bool) and draw(st.booleans()):
        return draw(st.sampled_from(ODD_NUMBERS))
    if isinstance(value, str) and draw(st.booleans()):
        return draw(st.sampled_from([value + "\ud800", "\udfff" + value]))
    return value


def _describe(case: Any) -> str:
    try:
        return str(case.as_curl_command(headers={"authorization": "Bearer ***"}))
    except Exception:  # a description must never hide the failure it describes
        return f"{case.method} {case.formatted_path} query={case.query} body={case.body!r:.300}"


def test_no_input_makes_the_api_answer_with_a_server_error(app, db, people) -> None:
    admin = people["admin"]
    world = _world(db, app, admin)
    schema = schemathesis.openapi.from_asgi("/api/openapi.json", app)
    headers = {"authorization": f"Bearer {admin.token}"}
    failures: list[str] = []
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) > 50  # the whole API, multipart uploads included

    for operation in operations:
        modes = [GenerationMode.POSITIVE, GenerationMode.NEGATIVE]
        cases = st.one_of(*(operation.as_strategy(generation_mode=mode) for mode in modes))

        @st.composite
        def aimed(draw: st.DrawFn, cases: st.SearchStrategy[Any] = cases) -> Any:
            case = draw(cases)
            # Half the cases address rows that exist, so they get past the 404 into the real work.
            if case.path_parameters and draw(st.booleans()):
                for name in list(case.path_parameters):
                    if name in world.ids:
                        case.path_parameters[name] = world.ids[name]
            # A third of the JSON bodies carry NaN, Infinity or lone surrogates (sent as raw JSON text: the
            # client's own encoder refuses NaN).
            if (
                isinstance(case.body, dict | list)
                and case.media_type == "application/json"
                and draw(st.integers(0, 2)) == 0
            ):
                case.body = json.dumps(_oddified(case.body, draw), ensure_ascii=True).encode()
            return case

        def keeps_our_credentials(case: Any) -> bool:
            # Revoking the token this test authenticates with would turn every later case into a 401.
            token_id = (case.path_parameters or {}).get("token_id")
            return not (case.method == "DELETE" and str(token_id) == str(world.protected_token_id))

        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            database=None,
            derandomize=True,
            phases=[Phase.explicit, Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
        @given(case=aimed().filter(keeps_our_credentials))
        def run(case: Any) -> None:
            try:
                response = case.call(headers=headers)
            except Exception as error:  # an exception escaping the app is a server error too
                failures.append(f"{case.operation.label}: {type(error).__name__}: {error}\n  {_describe(case)}")
                return
            if response.status_code >= 500:
                answer = f"{response.status_code} {response.text[:300]}"
                failures.append(f"{case.operation.label}: {answer}\n  {_describe(case)}")

        run()

    assert failures == [], "\n".join(dict.fromkeys(failures))


def test_what_the_fuzzer_found_stays_fixed(as_admin, db) -> None:  # type: ignore[no-untyped-def]
    """Each of these answered 500 before (on Postgres, most on SQLite too); now a 4xx that says why."""
    fixture = make_run(db, sizes={"train": 2, "dev": 2, "test": 2}, seed=6)
    db.commit()
    huge = 2**70  # past SQLite's int64 and, far, past Postgres' INTEGER ids
    for method, url, body, statuses in [
        ("GET", f"/api/datasets/{huge}", None, {422}),
        ("GET", f"/api/datasets/{2**40}/images", None, {404, 422}),  # fits SQLite's int64, not Postgres' INTEGER
        (
            "POST",
            f"/api/datasets/{fixture.dataset.id}/labels/{fixture.labels[0].id}/merge",
            {"into_label_id": -huge},
            {422},
        ),
        ("GET", f"/api/runs/{fixture.run.id}/predictions?offset={huge}", None, {422}),
    ]:
        response = as_admin.request(method, url, json=body)
        assert response.status_code in statuses, (url, response.text)
        assert response.status_code == 404 or "out of range" in response.json()["detail"]
    assert as_admin.get("/api/jobs?limit=-5").status_code == 200  # a negative LIMIT reached the database
    for url, body, reason in [
        ("/api/datasets", {"name": "a\x00b"}, "control characters"),
        ("/api/datasets", {"name": "fine", "description": "a\x00b"}, "NUL"),
        ("/api/tokens", {"name": "a\x00b"}, "control characters"),
        ("/api/users", {"name": "a\x00b", "role": "viewer"}, "control characters"),
    ]:
        refused = as_admin.post(url, json=body)
        assert refused.status_code == 422 and reason in refused.json()["detail"], (url, refused.text)
    missing_blobs = as_admin.get(f"/api/splits/{fixture.split.id}/export.zip")
    assert missing_blobs.status_code == 404 and "missing from the blob store" in missing_blobs.json()["detail"]
