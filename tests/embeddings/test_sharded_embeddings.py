"""An embeddings job over more images than ERRORBOOK_EXTRACT_SHARD_SIZE extracts them in shard jobs and stores the
same vectors as a job that extracted them in one piece (issue 18)."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.core.settings import Settings, get_settings
from app.embeddings.store import EmbeddingStore
from app.jobs.states import JobStatus
from app.ml.demo import generate_demo_dataset
from app.models import JobShard
from app.training.shards import FEATURE_SHARD_JOB
from tests.datasets.conftest import Ingest, zip_of

pytestmark = pytest.mark.slow
BACKBONE = "efficientnet_lite0"


def _embedded(ingest: Ingest, files: list[tuple[str, bytes]]) -> tuple[dict[str, np.ndarray], list, int]:
    """(file name -> stored vector, the jobs run, the embeddings job id) of a new dataset of `files`."""
    dataset_id = ingest.create_dataset()
    assert ingest.upload(dataset_id, [("batch.zip", zip_of(files))])["accepted"] == len(files)
    started = ingest.reviewer.post(f"/api/datasets/{dataset_id}/embeddings", json={"backbone": BACKBONE})
    assert started.status_code == 202, started.text
    jobs = ingest.run_jobs()
    names = {
        item["id"]: item["filename"]
        for item in ingest.viewer.get(f"/api/datasets/{dataset_id}/images", params={"limit": 100}).json()["items"]
    }
    store = EmbeddingStore(Settings().embeddings_dir, dataset_id=dataset_id, backbone=BACKBONE)
    vectors = {names[int(i)]: v.astype(np.float32) for i, v in zip(store.ids(), store.vectors(), strict=True)}
    return vectors, jobs, started.json()["job_id"]


def test_a_sharded_embeddings_job_stores_the_vectors_of_one_piece(ingest: Ingest, monkeypatch) -> None:
    demo = generate_demo_dataset(n_images=16, size=96, seed=4)
    files = [(f"{item.true_label}/{i}.jpg", item.jpeg) for i, item in enumerate(demo)]
    whole, _, _ = _embedded(ingest, files)
    shutil.rmtree(Settings().cache_dir / "features")  # the sharded job computes every vector again

    monkeypatch.setenv("ERRORBOOK_EXTRACT_SHARD_SIZE", "6")
    get_settings.cache_clear()
    sharded, jobs, job_id = _embedded(ingest, files)
    assert [job.kind for job in jobs].count(FEATURE_SHARD_JOB) == 3  # 6 + 6 + 4
    # The job waits while its shards run, then the last shard queues it again and it stores them.
    assert [job.status for job in jobs] == [JobStatus.WAITING] + [JobStatus.SUCCEEDED] * 4, [j.error for j in jobs]
    with Session(ingest.engine) as session:
        assert len(session.scalars(select(JobShard).where(JobShard.parent_job_id == job_id)).all()) == 3
    assert jobs[-1].id == job_id and jobs[-1].result is not None and jobs[-1].result["embedded"] == 16
    assert set(sharded) == set(whole)
    for name, vector in whole.items():
        np.testing.assert_allclose(sharded[name], vector, rtol=0, atol=1e-3)  # float16 rows
