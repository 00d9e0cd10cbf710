"""An embedding set on the object-store backend: the job publishes its files under embeddings/dataset-<id>/<backbone>/
before the set is recorded ready; a host with no copy of its own (caches wiped) fetches them and answers the same."""

from __future__ import annotations

import shutil

import boto3

from tests.datasets.conftest import Ingest, zip_of
from tests.embeddings.test_embeddings_api import _demo_files, _image_ids
from tests.s3_server import S3Server


def test_embeddings_live_in_the_object_store_and_any_host_reads_them(
    s3_env: str, server: S3Server, ingest: Ingest
) -> None:
    dataset_id = ingest.create_dataset()
    assert ingest.upload(dataset_id, [("batch.zip", zip_of(_demo_files(8)))])["accepted"] == 8
    ids = _image_ids(ingest, dataset_id)
    started = ingest.reviewer.post(f"/api/datasets/{dataset_id}/embeddings", json={"backbone": "efficientnet_lite0"})
    assert started.status_code == 202, started.text
    jobs = ingest.run_jobs()
    assert [job.status for job in jobs] == ["succeeded"], [job.error for job in jobs]

    client = boto3.client("s3", endpoint_url=server.endpoint_url)
    prefix = f"errorbook/embeddings/dataset-{dataset_id}/efficientnet_lite0/"
    listed = client.list_objects_v2(Bucket=s3_env, Prefix=prefix).get("Contents", ())
    assert {"meta.json", "ids.i64", "vectors.f16", "map.npz", "neighbours.npz"} <= {
        item["Key"][len(prefix) :] for item in listed
    }
    assert not (ingest.settings.embeddings_dir).exists()  # nothing in the local data dir's embeddings/

    first = ids["0.jpg"]
    similar = ingest.viewer.get(f"/api/images/{first}/similar", params={"k": 3})
    assert similar.status_code == 200, similar.text
    # Another host: no local copy at all (its caches and the job's scratch are gone).
    shutil.rmtree(ingest.settings.cache_dir)
    shutil.rmtree(ingest.settings.resolved_data_dir / "jobs", ignore_errors=True)
    again = ingest.viewer.get(f"/api/images/{first}/similar", params={"k": 3})
    assert again.status_code == 200 and again.json() == similar.json()
    points = ingest.viewer.get(f"/api/datasets/{dataset_id}/map").json()["points"]
    assert sorted(point["image_id"] for point in points) == sorted(ids.values())

    # New images: the next job starts from the stored set and embeds only those.
    assert ingest.upload(dataset_id, [("more.zip", zip_of(_demo_files(2, start=8)))])["accepted"] == 2
    ingest.reviewer.post(f"/api/datasets/{dataset_id}/embeddings", json={"backbone": "efficientnet_lite0"})
    (job,) = ingest.run_jobs()
    assert job.result is not None and (job.result["embedded"], job.result["count"]) == (2, 10)
    assert len(ingest.viewer.get(f"/api/datasets/{dataset_id}/map").json()["points"]) == 10
