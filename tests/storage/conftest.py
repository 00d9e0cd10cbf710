"""Fixtures of the object-store tests: one S3-protocol test server per module, and installs that really upload and
ingest (the datasets fixture), here on the object-store backend."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.datasets.conftest import ingest  # noqa: F401  (the fixture)
from tests.s3_server import S3Server, s3_server


@pytest.fixture(scope="module")
def server() -> Iterator[S3Server]:
    with s3_server() as running:
        yield running
