"""Multi-host tests: a deployment of separate hosts made of network namespaces (see hosts.py); they need root."""

from __future__ import annotations

from functools import cache

import pytest

from tests.multihost.hosts import unavailable_reason

cached_reason = cache(unavailable_reason)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if item.get_closest_marker("multihost") is not None and (reason := cached_reason()):
            item.add_marker(pytest.mark.skip(reason=f"multihost: {reason}"))
