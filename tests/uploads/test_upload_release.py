"""No orphan bytes: what can be refused is refused before it is stored, a refused zip and a discarded upload
release their blobs, and `errorbook storage gc` (and the worker's sweep) deletes old blobs nobody refers to.
Uploads in the making belong to their creator, and a discarded upload's id is never handed out again."""

from __future__ import annotations

import io
import os
import time
import zipfile
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import update
from sqlalchemy.orm import Session
from typer.testing import CliRunner

from app.auth import service as auth
from app.cli import cli
from app.core.settings import get_settings
from app.core.storage import LocalBlobStore
from app.models import Job, utcnow
from tests.conftest import api_client
from tests.datasets.conftest import Ingest, noisy_jpeg, orphan_blobs, stored_blobs, zip_of


def _written_by_this_process() -> int:
    return int(dict(line.split(": ") for line in Path("/proc/self/io").read_text().splitlines())["wchar"])


def _blob_bytes(blob_dir: Path) -> int:
    return sum(path.stat().st_size for path in blob_dir.glob("??/??/*"))


def test_a_refused_request_stores_nothing(ingest: Ingest) -> None:
    dataset = ingest.create_dataset()
    files = [("files", (f"cat/{i}.jpg", noisy_jpeg(i), "image/jpeg")) for i in range(5)]
    files.append(("labels_csv", ("labels.csv", b"filename,label\ncat/0.jpg,cat\n", "text/csv")))
    refused = ingest.reviewer.post(f"/api/datasets/{dataset}/uploads", files=files, data={"label": "cat"})
    assert refused.status_code == 422 and "not both" in refused.json()["detail"]
    assert stored_blobs(ingest.settings.blob_dir) == set()


def test_zip_members_that_cannot_be_images_are_never_written(ingest: Ingest) -> None:
    rng = np.random.default_rng(0)
    junk = [(f"cat/{i}.jpg", rng.bytes(2**20)) for i in range(20)]  # 20 MiB that no decoder could read
    archive = zip_of([*junk, ("cat/real.jpg", noisy_jpeg(1))], compression=zipfile.ZIP_DEFLATED)
    dataset = ingest.create_dataset()
    started = ingest.reviewer.post(
        f"/api/datasets/{dataset}/uploads", files=[("files", ("a.zip", archive, "application/zip"))]
    )
    assert started.status_code == 202, started.text
    before = _written_by_this_process()
    ingest.run_jobs()
    written = _written_by_this_process() - before
    assert written < 4 * 2**20, f"the ingest wrote {written:,} bytes"  # the junk (20 MiB) was not stored
    report = ingest.reviewer.get(f"/api/uploads/{started.json()['upload_id']}").json()
    assert report["accepted"] == 1 and len(report["rejected"]) == 20
    assert {item["reason"] for item in report["rejected"]} == {
        "not an image (content is not JPEG, PNG, WebP, BMP, GIF or TIFF)"
    }
    assert orphan_blobs(ingest.engine, ingest.settings.blob_dir) == set()


def test_an_upload_s_zips_share_one_expansion_budget(ingest: Ingest, monkeypatch: pytest.MonkeyPatch) -> None:
    first = zip_of([(f"cat/{i}.jpg", noisy_jpeg(i, (96, 96))) for i in range(10)])
    second = zip_of([(f"dog/{i}.jpg", noisy_jpeg(100 + i, (96, 96))) for i in range(10)])
    monkeypatch.setenv("ERRORBOOK_MAX_UPLOAD_EXPANDED_BYTES", str(int(len(first) * 1.5)))
    get_settings.cache_clear()  # the inline job runner reads the settings from the environment
    dataset = ingest.create_dataset()
    parts = [("files", ("one.zip", first, "application/zip")), ("files", ("two.zip", second, "application/zip"))]
    started = ingest.reviewer.post(f"/api/datasets/{dataset}/uploads", files=parts)
    ingest.run_jobs()
    report = ingest.reviewer.get(f"/api/uploads/{started.json()['upload_id']}").json()
    assert report["accepted"] == 10
    (refused,) = [item for item in report["rejected"] if item["name"] == "two.zip"]
    assert "archive expands to more than" in refused["reason"]
    assert orphan_blobs(ingest.engine, ingest.settings.blob_dir) == set()


def test_duplicate_and_control_character_names_in_a_zip_are_reported(ingest: Ingest) -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("cat/a.jpg", noisy_jpeg(1))
        archive.writestr("cat/a.jpg", noisy_jpeg(2))
        archive.writestr("cat/b\x01.jpg", noisy_jpeg(3))
    report = ingest.upload(ingest.create_dataset(), [("x.zip", buffer.getvalue())])
    reasons = {item["name"]: item["reason"] for item in report["rejected"]}
    assert reasons["x.zip/cat/a.jpg (duplicate 2)"] == "another entry of the archive is also named cat/a.jpg"
    assert reasons["x.zip/cat/b\\x01.jpg"] == "name contains control characters"
    assert report["accepted"] == 1


def test_a_cancelled_upload_releases_its_bytes_when_discarded(ingest: Ingest) -> None:
    dataset = ingest.create_dataset()
    files = [("files", (f"cat/{i}.jpg", noisy_jpeg(i, (96, 72)), "image/jpeg")) for i in range(12)]
    started = ingest.reviewer.post(f"/api/datasets/{dataset}/uploads", files=files).json()
    with Session(ingest.engine) as session:
        session.execute(update(Job).where(Job.id == started["job_id"]).values(cancel_requested=True))
        session.commit()
    ingest.run_jobs()
    upload = f"/api/uploads/{started['upload_id']}"
    assert ingest.reviewer.get(upload).json()["status"] == "cancelled"
    assert _blob_bytes(ingest.settings.blob_dir) > 0  # kept for a retry...
    assert ingest.viewer.delete(upload).status_code == 403
    assert ingest.reviewer.delete(upload).status_code == 204  # ...until it is discarded
    assert ingest.reviewer.get(upload).status_code == 404
    assert ingest.reviewer.post(f"{upload}/retry").status_code == 404
    assert _blob_bytes(ingest.settings.blob_dir) == 0
    assert orphan_blobs(ingest.engine, ingest.settings.blob_dir) == set()


def _second_reviewer(ingest: Ingest, role: str = "reviewer") -> str:
    with Session(ingest.engine) as session:
        user = auth.create_user(session, name=f"other-{role}-{time.monotonic_ns()}", role=role)
        token = auth.create_token(session, user=user, name="t")[1]
        session.commit()
    return token


def test_only_the_creator_or_an_admin_touches_an_open_upload(ingest: Ingest) -> None:
    dataset = ingest.create_dataset()
    upload_id = ingest.reviewer.post(f"/api/datasets/{dataset}/uploads/open", json={}).json()["upload_id"]
    path = f"/api/uploads/{upload_id}"
    with api_client(ingest.app, _second_reviewer(ingest)) as other:
        files = [("files", ("cat/a.jpg", noisy_jpeg(1), "image/jpeg"))]
        assert other.post(f"{path}/files", files=files).status_code == 403
        claim = {"files": [{"name": "cat/a.jpg", "sha256": "0" * 64, "size": 10}]}
        assert other.post(f"{path}/have", json=claim).status_code == 403
        chunk = {"name": "a.zip", "sha256": "0" * 64, "size": 3, "offset": 0}
        assert other.post(f"{path}/chunks", params=chunk, content=b"abc").status_code == 403
        assert other.post(f"{path}/finish", data={"label": "cat"}).status_code == 403
        assert other.delete(path).status_code == 403
    assert stored_blobs(ingest.settings.blob_dir) == set()  # refused before anything was stored
    with api_client(ingest.app, _second_reviewer(ingest, "admin")) as admin:
        assert admin.post(f"{path}/files", files=[("files", ("cat/a.jpg", noisy_jpeg(1), "image/jpeg"))]).is_success
    assert ingest.reviewer.post(f"{path}/finish", data={"label": "cat"}).status_code == 202


def test_a_discarded_upload_s_id_is_never_reused(ingest: Ingest) -> None:
    dataset = ingest.create_dataset()
    first = ingest.reviewer.post(f"/api/datasets/{dataset}/uploads/open", json={}).json()["upload_id"]
    assert ingest.reviewer.delete(f"/api/uploads/{first}").status_code == 204
    second = ingest.reviewer.post(f"/api/datasets/{dataset}/uploads/open", json={}).json()["upload_id"]
    assert second > first
    assert (
        ingest.reviewer.post(
            f"/api/uploads/{first}/files", files=[("files", ("a.jpg", b"x", "image/jpeg"))]
        ).status_code
        == 404
    )


def _plant(blob_dir: Path, data: bytes, *, age_hours: float) -> str:
    sha = LocalBlobStore(blob_dir).put_bytes(data)
    path = LocalBlobStore(blob_dir).path(sha)
    then = time.time() - age_hours * 3600
    os.utime(path, (then, then))
    return sha


def test_storage_gc_deletes_old_unreferenced_blobs_only(ingest: Ingest) -> None:
    report = ingest.upload(ingest.create_dataset(), [("cat/a.jpg", noisy_jpeg(1))])
    assert report["accepted"] == 1
    blob_dir = ingest.settings.blob_dir
    kept = stored_blobs(blob_dir)
    for sha in kept:  # referenced blobs are kept however old
        os.utime(LocalBlobStore(blob_dir).path(sha), (0, 0))
    old = _plant(blob_dir, b"left by a request that failed" * 1000, age_hours=5)
    young = _plant(blob_dir, b"an upload in flight, not yet committed", age_hours=0)
    dry = CliRunner().invoke(cli, ["storage", "gc", "--dry-run"])
    assert dry.exit_code == 0 and "would delete 1 unreferenced (29,000 bytes)" in dry.output, dry.output
    assert old in stored_blobs(blob_dir)
    done = CliRunner().invoke(cli, ["storage", "gc"])
    assert done.exit_code == 0 and "deleted 1 unreferenced" in done.output, done.output
    assert stored_blobs(blob_dir) == kept | {young}
    # A blob stored again (another upload of the same bytes) counts as young: the sweep spares it.
    _plant(blob_dir, b"an upload in flight, not yet committed", age_hours=5)
    LocalBlobStore(blob_dir).put_bytes(b"an upload in flight, not yet committed")
    assert CliRunner().invoke(cli, ["storage", "gc", "--grace-hours", "1"]).exit_code == 0
    assert young in stored_blobs(blob_dir)
    assert CliRunner().invoke(cli, ["storage", "gc", "--grace-hours", "0"]).exit_code == 0
    assert stored_blobs(blob_dir) == kept
    assert orphan_blobs(ingest.engine, blob_dir) == set()


def test_a_failed_upload_not_retried_in_time_is_released_by_the_sweep(ingest: Ingest) -> None:
    dataset = ingest.create_dataset()
    files = [("files", (f"cat/{i}.jpg", noisy_jpeg(i, (96, 72)), "image/jpeg")) for i in range(6)]
    started = ingest.reviewer.post(f"/api/datasets/{dataset}/uploads", files=files).json()
    with Session(ingest.engine) as session:
        session.execute(update(Job).where(Job.id == started["job_id"]).values(cancel_requested=True))
        session.commit()
    ingest.run_jobs()
    assert CliRunner().invoke(cli, ["storage", "gc"]).exit_code == 0
    assert _blob_bytes(ingest.settings.blob_dir) > 0  # within the retry window: kept
    with Session(ingest.engine) as session:  # eight days later
        session.execute(update(Job).where(Job.id == started["job_id"]).values(finished_at=utcnow() - timedelta(days=8)))
        session.commit()
    swept = CliRunner().invoke(cli, ["storage", "gc"])
    assert swept.exit_code == 0 and "released 6 blobs" in swept.output, swept.output
    assert ingest.reviewer.get(f"/api/uploads/{started['upload_id']}").status_code == 404
    assert _blob_bytes(ingest.settings.blob_dir) == 0
