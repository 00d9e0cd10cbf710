"""A whole install on the S3 backend: an upload is stored in and ingested from the object store (an S3-protocol
test server on loopback), pages serve its thumbnails, and nothing is written to the local blob folder."""

from __future__ import annotations

import hashlib
from pathlib import Path

import boto3
import pytest

from tests.datasets.conftest import Ingest, noisy_jpeg, stored_blobs
from tests.s3_server import S3Server, set_credentials


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


def test_upload_ingest_and_thumbnails_live_in_the_object_store(s3_env: str, server: S3Server, ingest: Ingest) -> None:
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


def test_presigned_mode_redirects_checked_users_to_a_short_lived_url(
    s3_env: str, monkeypatch: pytest.MonkeyPatch, ingest: Ingest
) -> None:
    import urllib.request

    from fastapi.testclient import TestClient

    dataset = ingest.create_dataset()
    ingest.upload(dataset, [("cat/0.jpg", noisy_jpeg(7))], label="cat")
    image = ingest.reviewer.get(f"/api/datasets/{dataset}/images").json()["items"][0]
    ingest.app.state.settings = ingest.settings.model_copy(update={"s3_serve": "presigned"})
    with TestClient(ingest.app, follow_redirects=False) as anonymous:
        refused = anonymous.get(f"/images/{image['id']}/thumb")
        assert refused.status_code in (303, 401) and "X-Amz-Signature" not in refused.headers.get("location", "")
    moved = ingest.viewer.get(f"/images/{image['id']}/full", follow_redirects=False)
    assert moved.status_code == 307
    url = moved.headers["location"]
    assert s3_env in url and "X-Amz-Expires=300" in url
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.read() == noisy_jpeg(7)
        assert response.headers["content-type"] == "image/jpeg"
        assert "0.jpg" in response.headers["content-disposition"]
