"""Fixtures of the split tests."""

from tests.datasets.conftest import ingest  # noqa: F401  (re-exported for this folder: uploads that really ingest)
