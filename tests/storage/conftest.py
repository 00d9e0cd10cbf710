"""Installs that really upload and ingest (the datasets fixture), here on the object-store backend."""

from tests.datasets.conftest import ingest  # noqa: F401  (the fixture)
