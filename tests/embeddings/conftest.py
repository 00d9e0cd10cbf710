"""Fixtures of the embeddings tests."""

from tests.datasets.conftest import ingest  # noqa: F401  (uploads that really ingest)
