"""A worker killed in the middle of an ingest: the next one finishes it, and every file is added exactly once."""

from __future__ import annotations

import signal
from datetime import timedelta

import pytest
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from app.core.settings import Settings
from app.core.storage import LocalBlobStore
from app.datasets import service as datasets
from app.models import Image, Job, LabelChange, Upload, UploadEntry, utcnow
from app.uploads import service
from tests.datasets.conftest import noisy_jpeg, orphan_blobs, stored_blobs
from tests.jobs.conftest import wait_until

pytestmark = pytest.mark.slow

FILES = 600


def _upload_state(engine, upload_id: int) -> tuple[int, str, str]:  # type: ignore[no-untyped-def]
    with Session(engine) as session:
        upload = session.get(Upload, upload_id)
        assert upload is not None and upload.job_id is not None
        job = session.get(Job, upload.job_id)
        assert job is not None
        return upload.accepted, upload.status, job.status


def test_an_ingest_killed_midway_is_finished_by_the_next_worker_without_orphans(fresh_database, workers) -> None:  # type: ignore[no-untyped-def]
    engine = fresh_database.engine
    settings = Settings(data_dir=workers.data_dir, database_url=fresh_database.url)
    blobs = LocalBlobStore(settings.blob_dir)
    files = [(f"{'cat' if i % 2 else 'dog'}/{i:04d}.jpg", noisy_jpeg(i)) for i in range(FILES)]
    files.append(("dog/copy.jpg", files[0][1]))
    with Session(engine) as session:
        dataset = datasets.create_dataset(session, name="crash test", user_id=None)
        upload, _ = service.start_upload(session, dataset_id=dataset.id, user_id=None, resume=False)
        staged = [service.StagedBlob(name, blobs.put_bytes(data), len(data)) for name, data in files]
        service.stage_files(session, upload_id=upload.id, files=staged)
        job = service.finish_upload(session, upload_id=upload.id, user_id=None, blobs=blobs, settings=settings)
        session.commit()
        upload_id, job_id, dataset_id = upload.id, job.id, dataset.id

    (first,) = workers.start(1)
    wait_until(lambda: _upload_state(engine, upload_id)[0] >= 64, timeout=120, interval=0.02)
    first.send_signal(signal.SIGKILL)
    first.wait(10)
    accepted_at_kill, status_at_kill, job_status = _upload_state(engine, upload_id)
    assert (status_at_kill, job_status) == ("ingesting", "running"), workers.logs()[-3000:]
    assert accepted_at_kill < FILES  # really killed in the middle
    with Session(engine) as session:  # move time on: the dead worker's lease has expired
        session.execute(update(Job).where(Job.id == job_id).values(lease_expires_at=utcnow() - timedelta(seconds=1)))
        session.commit()
    workers.start(1)
    wait_until(lambda: _upload_state(engine, upload_id)[2] in ("succeeded", "failed"), timeout=180, interval=0.2)

    with Session(engine) as session:
        job = session.get(Job, job_id)
        assert job is not None and (job.status, job.attempts) == ("succeeded", 2), job.error
        outcomes = dict(
            session.execute(
                select(UploadEntry.outcome, func.count())
                .where(UploadEntry.upload_id == upload_id)
                .group_by(UploadEntry.outcome)
            ).all()
        )
        assert outcomes == {"accepted": FILES, "duplicate": 1}
        images = session.scalars(select(Image).where(Image.dataset_id == dataset_id)).all()
        assert len(images) == FILES
        assert len({image.sha256 for image in images}) == FILES
        # Every image is named by exactly one accepted entry and has exactly one import record.
        accepted_ids = session.scalars(
            select(UploadEntry.image_id).where(UploadEntry.upload_id == upload_id, UploadEntry.outcome == "accepted")
        ).all()
        assert sorted(accepted_ids) == sorted(image.id for image in images)
        imports = session.execute(
            select(LabelChange.image_id, func.count())
            .where(LabelChange.kind == "import")
            .group_by(LabelChange.image_id)
        ).all()
        assert {image_id for image_id, _ in imports} == {image.id for image in images}
        assert {count for _, count in imports} == {1}
        assert all(image.thumb_sha256 and blobs.exists(image.thumb_sha256) for image in images)
        upload = session.get(Upload, upload_id)
        assert upload is not None and (upload.status, upload.accepted, upload.duplicates) == ("done", FILES, 1)
    # Thumbnails written by the killed attempt for a batch it never committed were written again, to the same
    # content addresses, by the retry: every blob file is referred to by a row.
    assert orphan_blobs(engine, settings.blob_dir) == set()
    assert stored_blobs(settings.blob_dir) >= {image.sha256 for image in images}
