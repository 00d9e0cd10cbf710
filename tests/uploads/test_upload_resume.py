"""The browser's upload protocol: batches keyed by content hash, resumable chunks, finish, retry."""

from __future__ import annotations

import hashlib
from typing import Any

from sqlalchemy import update
from sqlalchemy.orm import Session

from app.models import Job
from tests.datasets.conftest import Ingest, noisy_jpeg, zip_of


def claims(files: list[tuple[str, bytes]]) -> dict[str, Any]:
    return {"files": [{"name": n, "sha256": hashlib.sha256(d).hexdigest(), "size": len(d)} for n, d in files]}


def send(ingest: Ingest, upload_id: int, files: list[tuple[str, bytes]]) -> dict[str, Any]:
    response = ingest.reviewer.post(
        f"/api/uploads/{upload_id}/files", files=[("files", (name, data, "image/jpeg")) for name, data in files]
    )
    assert response.status_code == 200, response.text
    return dict(response.json())


def test_a_reload_resumes_the_upload_without_resending_what_arrived(ingest: Ingest) -> None:
    dataset = ingest.create_dataset()
    files = [(f"cat/{i}.jpg", noisy_jpeg(i)) for i in range(4)] + [("dog/4.jpg", noisy_jpeg(4))]
    opened = ingest.reviewer.post(f"/api/datasets/{dataset}/uploads/open", json={"source": "phone"}).json()
    assert (opened["resumed"], opened["files"]) == (False, 0)
    upload_id = opened["upload_id"]
    first = ingest.reviewer.post(f"/api/uploads/{upload_id}/have", json=claims(files[:3])).json()
    assert first["missing"] == ["cat/0.jpg", "cat/1.jpg", "cat/2.jpg"]
    assert send(ingest, upload_id, files[:2]) == {"staged": 2, "already": 0, "rejected": 0, "skipped": 0}

    # The page reloads: the same user opening an upload into this dataset gets the unfinished one back.
    again = ingest.reviewer.post(f"/api/datasets/{dataset}/uploads/open", json={"source": "phone"}).json()
    assert (again["upload_id"], again["resumed"], again["files"]) == (upload_id, True, 2)
    copy_of_first = ("cat/copy-of-0.jpg", files[0][1])
    answer = ingest.reviewer.post(f"/api/uploads/{upload_id}/have", json=claims([*files, copy_of_first])).json()
    assert answer["missing"] == ["cat/2.jpg", "cat/3.jpg", "dog/4.jpg"]  # known content needs no bytes
    assert answer["registered"] == 1
    assert send(ingest, upload_id, files[2:] + files[:1])["already"] == 1  # a resent batch is harmless

    finished = ingest.reviewer.post(f"/api/uploads/{upload_id}/finish", data={"source": "phone"})
    assert finished.status_code == 202, finished.text
    assert ingest.reviewer.post(f"/api/uploads/{upload_id}/have", json=claims(files)).status_code == 409
    ingest.run_jobs()
    report = ingest.reviewer.get(f"/api/uploads/{upload_id}").json()
    assert report["status"] == "done"
    assert (report["files"], report["accepted"], report["duplicates"]) == (6, 5, 1)
    labels = ingest.viewer.get(f"/api/datasets/{dataset}").json()
    assert (labels["labels"], labels["sources"]) == ({"cat": 4, "dog": 1}, {"phone": 5})
    # A new upload starts fresh: the finished one is not resumed.
    fresh = ingest.reviewer.post(f"/api/datasets/{dataset}/uploads/open", json={}).json()
    assert fresh["upload_id"] != upload_id and not fresh["resumed"]


def test_big_files_arrive_in_chunks_that_resume_at_the_servers_offset(ingest: Ingest) -> None:
    dataset = ingest.create_dataset()
    archive = zip_of([(f"bird/{i}.jpg", noisy_jpeg(100 + i, size=(320, 240))) for i in range(12)])
    sha = hashlib.sha256(archive).hexdigest()
    upload_id = ingest.reviewer.post(f"/api/datasets/{dataset}/uploads/open", json={}).json()["upload_id"]
    step = len(archive) // 3 + 1

    def chunk(offset: int, data: bytes, name: str = "birds.zip", digest: str = sha) -> Any:
        params: dict[str, str | int] = {"name": name, "sha256": digest, "size": len(archive), "offset": offset}
        return ingest.reviewer.post(f"/api/uploads/{upload_id}/chunks", params=params, content=data)

    first = chunk(0, archive[:step])
    assert first.json() == {"received": step, "complete": False}
    repeated = chunk(0, archive[:step])  # the answer was lost and the browser sent it again
    assert repeated.status_code == 409 and repeated.json()["received"] == step
    assert chunk(2 * step, archive[2 * step :]).json()["received"] == step  # out of order: refused
    assert ingest.reviewer.post(f"/api/uploads/{upload_id}/have", json=claims([("birds.zip", archive)])).json()[
        "partial"
    ] == {"birds.zip": step}
    too_long = chunk(step, archive[step:] + b"extra")
    assert too_long.status_code == 413
    assert chunk(step, archive[step : 2 * step]).json() == {"received": 2 * step, "complete": False}
    assert chunk(2 * step, archive[2 * step :]).json() == {"received": len(archive), "complete": True}
    assert not (ingest.settings.staging_dir / str(upload_id)).exists() or not any(
        (ingest.settings.staging_dir / str(upload_id)).iterdir()
    )

    abandoned = chunk(0, archive[:step], name="abandoned.zip", digest=hashlib.sha256(b"other").hexdigest())
    assert abandoned.json() == {"received": step, "complete": False}
    assert ingest.reviewer.post(f"/api/uploads/{upload_id}/finish").status_code == 202
    assert not (ingest.settings.staging_dir / str(upload_id)).exists()  # an unfinished file's chunks are dropped
    ingest.run_jobs()
    report = ingest.reviewer.get(f"/api/uploads/{upload_id}").json()
    assert (report["files"], report["accepted"]) == (12, 12)


def test_a_file_that_changes_while_it_is_sent_is_refused(ingest: Ingest) -> None:
    dataset = ingest.create_dataset()
    upload_id = ingest.reviewer.post(f"/api/datasets/{dataset}/uploads/open", json={}).json()["upload_id"]
    data = b"z" * 5000
    claimed = hashlib.sha256(b"something else").hexdigest()
    params: dict[str, str | int] = {"name": "big.zip", "sha256": claimed, "size": len(data), "offset": 0}
    response = ingest.reviewer.post(f"/api/uploads/{upload_id}/chunks", params=params, content=data)
    assert response.status_code == 422
    assert response.json()["detail"] == "big.zip changed while it was sent (its sha256 differs); send it again"
    params["sha256"] = "not-a-hash"
    assert ingest.reviewer.post(f"/api/uploads/{upload_id}/chunks", params=params, content=data).status_code == 422
    bad_name = {**params, "sha256": claimed, "name": "../big.zip"}
    refused = ingest.reviewer.post(f"/api/uploads/{upload_id}/chunks", params=bad_name, content=data)
    assert refused.status_code == 422 and "'..'" in refused.json()["detail"]


def test_unsafe_names_are_refused_without_their_bytes_and_reported(ingest: Ingest) -> None:
    dataset = ingest.create_dataset()
    upload_id = ingest.reviewer.post(f"/api/datasets/{dataset}/uploads/open", json={}).json()["upload_id"]
    files = [("../../etc/x.jpg", noisy_jpeg(1)), ("cat/.DS_Store", b"meta"), ("cat/ok.jpg", noisy_jpeg(2))]
    answer = ingest.reviewer.post(f"/api/uploads/{upload_id}/have", json=claims(files)).json()
    assert answer["missing"] == ["cat/ok.jpg"]
    assert answer["refused"] == {"../../etc/x.jpg": "name contains a '..' component"}
    send(ingest, upload_id, files[2:])
    ingest.reviewer.post(f"/api/uploads/{upload_id}/finish")
    ingest.run_jobs()
    report = ingest.reviewer.get(f"/api/uploads/{upload_id}").json()
    assert [(r["name"], r["reason"]) for r in report["rejected"]] == [
        ("../../etc/x.jpg", "name contains a '..' component")
    ]
    assert report["accepted"] == 1 and report["files"] == 2


def test_an_open_upload_can_be_discarded_and_an_empty_one_not_finished(ingest: Ingest) -> None:
    dataset = ingest.create_dataset()
    upload_id = ingest.reviewer.post(f"/api/datasets/{dataset}/uploads/open", json={}).json()["upload_id"]
    empty = ingest.reviewer.post(f"/api/uploads/{upload_id}/finish")
    assert empty.status_code == 422 and "nothing was uploaded" in empty.json()["detail"]
    send(ingest, upload_id, [("cat/a.jpg", noisy_jpeg(1))])
    assert ingest.viewer.delete(f"/api/uploads/{upload_id}").status_code == 403
    assert ingest.reviewer.delete(f"/api/uploads/{upload_id}").status_code == 204
    assert ingest.reviewer.get(f"/api/uploads/{upload_id}").status_code == 404


def test_a_cancelled_ingest_can_be_retried_and_adds_each_file_once(ingest: Ingest) -> None:
    dataset = ingest.create_dataset()
    files = [(f"cat/{i}.jpg", noisy_jpeg(i)) for i in range(40)]
    started = ingest.reviewer.post(
        f"/api/datasets/{dataset}/uploads", files=[("files", (n, d, "image/jpeg")) for n, d in files]
    ).json()
    with Session(ingest.engine) as session:  # asked to stop before it ran: it stops at its first report
        session.execute(update(Job).where(Job.id == started["job_id"]).values(cancel_requested=True))
        session.commit()
    ingest.run_jobs()
    cancelled = ingest.reviewer.get(f"/api/uploads/{started['upload_id']}").json()
    assert cancelled["status"] == "cancelled"
    assert ingest.viewer.post(f"/api/uploads/{started['upload_id']}/retry").status_code == 403
    retried = ingest.reviewer.post(f"/api/uploads/{started['upload_id']}/retry")
    assert retried.status_code == 202
    assert ingest.reviewer.post(f"/api/uploads/{started['upload_id']}/retry").status_code == 409
    ingest.run_jobs()
    report = ingest.reviewer.get(f"/api/uploads/{started['upload_id']}").json()
    assert (report["status"], report["accepted"], report["files"]) == ("done", 40, 40)
