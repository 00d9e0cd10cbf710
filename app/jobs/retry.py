"""Riding out a database that drops its connections (a restart, a failover, an admin ending sessions).

The pool's pre-ping replaces connections that died while idle; a connection that dies in the middle of a
transaction surfaces as ``OperationalError``. Writes that are safe to repeat (progress, heartbeats, a job's
completion, which is fenced by its lease token) are tried again after a short pause instead of failing the
job or ending the worker.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

from sqlalchemy.exc import OperationalError

log = logging.getLogger("errorbook.jobs")
T = TypeVar("T")

PAUSES = (0.1, 0.3, 1.0, 3.0)  # seconds before each further try: about 4.4 s in all


def retry_transient(write: Callable[[], T], *, what: str, pauses: tuple[float, ...] = PAUSES) -> T:
    """Run ``write`` (which opens and commits its own transaction) again after an ``OperationalError``;
    the last failure is raised."""
    for pause in pauses:
        try:
            return write()
        except OperationalError as error:
            log.warning("%s failed (%s); trying again in %.1f s", what, _first_line(error), pause)
            time.sleep(pause)
    return write()


def _first_line(error: OperationalError) -> str:
    return str(error.orig or error).strip().splitlines()[0] if str(error.orig or error).strip() else "?"
