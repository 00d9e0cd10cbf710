"""Fixtures of the object-store tests: one S3-protocol test server per module, and installs that really upload and
ingest (the datasets fixture), here on the object-store backend."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest

from tests.datasets.conftest import ingest  # noqa: F401  (the fixture)
from tests.s3_server import S3Server, s3_server, set_credentials


@pytest.fixture(scope="module")
def server() -> Iterator[S3Server]:
    with s3_server() as running:
        yield running


def use_bucket(server: S3Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A new bucket on `server`, and the settings for the S3 backend on it in the environment that the app and
    the inline job runner read."""
    set_credentials(server, monkeypatch)
    bucket = f"install-{hashlib.sha1(str(tmp_path).encode()).hexdigest()[:12]}"
    boto3.client("s3", endpoint_url=server.endpoint_url).create_bucket(Bucket=bucket)
    monkeypatch.setenv("ERRORBOOK_STORAGE", "s3")
    monkeypatch.setenv("ERRORBOOK_S3_BUCKET", bucket)
    monkeypatch.setenv("ERRORBOOK_S3_ENDPOINT_URL", server.endpoint_url)
    return bucket


@pytest.fixture
def s3_env(server: S3Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    return use_bucket(server, tmp_path, monkeypatch)
