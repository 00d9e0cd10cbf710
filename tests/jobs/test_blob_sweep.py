"""A real `errorbook worker` sweeps unreferenced blobs at start (and then periodically), sparing young ones and
any a row refers to."""

from __future__ import annotations

import os
import time

from sqlalchemy.orm import Session

from app.core.storage import LocalBlobStore
from app.models import Dataset, Image, Label
from tests.jobs.conftest import WorkerProcesses, wait_until


def test_a_worker_deletes_old_unreferenced_blobs(workers: WorkerProcesses, fresh_database) -> None:  # type: ignore[no-untyped-def]
    blobs = LocalBlobStore(workers.data_dir / "blobs")
    orphan, young, used = (blobs.put_bytes(data) for data in (b"orphan", b"young orphan", b"an image"))
    for sha in (orphan, used):
        os.utime(blobs.path(sha), (time.time() - 7200, time.time() - 7200))
    with Session(fresh_database.engine) as session:
        dataset = Dataset(name="swept")
        session.add(dataset)
        session.flush()
        label = Label(dataset_id=dataset.id, name="cat")
        session.add(label)
        session.flush()
        session.add(Image(dataset_id=dataset.id, sha256=used, filename="a.jpg", label_id=label.id))
        session.commit()
    workers.start(ERRORBOOK_BLOB_GC_GRACE_HOURS="1")
    wait_until(lambda: not blobs.exists(orphan), timeout=120)
    assert blobs.exists(young) and blobs.exists(used)
    assert "deleted 1 unreferenced blob(s)" in workers.logs()
