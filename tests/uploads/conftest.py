"""Fixtures of the upload tests: the ingest app and the job workers of the dataset tests (uploads that really
ingest), re-exported for this folder."""

from tests.datasets.conftest import ingest, workers  # noqa: F401
