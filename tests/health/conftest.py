"""Fixtures of the health tests."""

from tests.datasets.conftest import ingest  # noqa: F401  (uploads that really ingest)
