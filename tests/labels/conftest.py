"""The label tests upload through the same inline-ingest app as the dataset tests."""

from tests.datasets.conftest import ingest, workers  # noqa: F401  (fixtures re-exported for this folder)
