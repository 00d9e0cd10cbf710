"""A whole install on the S3 backend: an upload is stored in and ingested from the object store (an S3-protocol
test server on loopback), pages serve its thumbnails, and nothing is written to the local blob folder."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest

from tests.datasets.conftest import Ingest, ingest, noisy_jpeg, stored_blobs  # noqa: F401  (the fixture)
from tests.s3_server import S3Server, s3_server, set_credentials


@pytest.fixture(scope="module")
def server() -> Iterator[S3Server]:
    with s3_server() as running:
        yield running


@pytest.fixture
def s3_env(server: S3Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """Settings for the S3 backend, in the environment the app and the inline job runner read."""
    set_credentials(server, monkeypatch)
    bucket = f"install-{hashlib.sha1(str(tmp_path).encode()).hexdigest()[:12]}"
    boto3.client("s3", endpoint_url=server.endpoint_url).create_bucket(Bucket=bucket)
    monkeypatch.setenv("ERRORBOOK_STORAGE", "s3")
    monkeypatch.setenv("ERRORBOOK_S3_BUCKET", bucket)
    monkeypatch.setenv("ERRORBOOK_S3_ENDPOINT_URL", server.endpoint_url)
    return bucket


def test_upload_ingest_and_thumbnails_live_in_the_object_store(
    s3_env: str, server: S3Server, ingest: Ingest
) -> None:
    dataset = ingest.create_dataset()
    files = [(f"cat/{i}.jpg", noisy_jpeg(i)) for i in range(3)]
    report = ingest.upload(dataset, files, label="cat")
    assert report["accepted"] == 3, report
    images = ingest.reviewer.get(f"/api/datasets/{dataset}/images").json()["items"]
    client = boto3.client("s3", endpoint_url=server.endpoint_url)
    keys = {item["Key"].rsplit("/", 1)[-1] for item in client.list_objects_v2(Bucket=s3_env)["Contents"]}
    originals = {hashlib.sha256(data).hexdigest() for _, data in files}
    assert originals <= keys  # the uploaded bytes are objects under their digests
    assert {image["sha256"] for image in images} == originals
    assert stored_blobs(ingest.settings.blob_dir) == set()  # the local blob folder holds nothing
    for image in images:
        thumb = ingest.viewer.get(f"/images/{image['id']}/thumb")
        assert thumb.status_code == 200 and thumb.content[:2] == b"\xff\xd8"
        assert hashlib.sha256(thumb.content).hexdigest() in keys  # served from the stored object
