"""Bounds every route applies to the same kind of value."""

from __future__ import annotations

# Random seeds: numpy, torch and Python's random all take 32-bit seeds; a bigger one would fail in the job.
MAX_SEED = 2**32 - 1
# Images one action on a selection (a map lasso, a grid of neighbours) applies to, in one request and transaction.
MAX_SELECTION = 5_000
