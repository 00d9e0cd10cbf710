"""Request counters for bench/scale.py, loaded by every Python process the bench starts (PYTHONPATH puts this folder
first): SQL statements through SQLAlchemy and S3 API calls through botocore, per process, written every 0.25 s to
$ERRORBOOK_BENCH_COUNTS/<pid>.json (cumulative), so the bench can take per-stage deltas of processes it does not
control (workers, job runners, decoders). Does nothing unless that variable is set."""

from __future__ import annotations

import os

if os.environ.get("ERRORBOOK_BENCH_COUNTS"):
    import atexit
    import collections
    import json
    import threading
    import time

    _counts: collections.Counter[str] = collections.Counter()
    _lock = threading.Lock()
    _dir = os.environ["ERRORBOOK_BENCH_COUNTS"]

    def _flush() -> None:
        with _lock:
            data = json.dumps(dict(_counts))
        tmp = os.path.join(_dir, f".{os.getpid()}.tmp")
        with open(tmp, "w") as fh:
            fh.write(data)
        os.replace(tmp, os.path.join(_dir, f"{os.getpid()}.json"))

    def _loop() -> None:
        while True:
            time.sleep(0.25)
            _flush()

    try:
        from sqlalchemy import event
        from sqlalchemy.engine import Engine

        @event.listens_for(Engine, "before_cursor_execute")
        def _statement(conn, cursor, statement, parameters, context, executemany):  # type: ignore[no-untyped-def]
            with _lock:
                _counts["sql"] += 1
    except ImportError:
        pass
    try:
        from botocore.client import BaseClient

        _make_api_call = BaseClient._make_api_call

        def _counted(self, operation_name, api_params):  # type: ignore[no-untyped-def]
            with _lock:
                _counts[f"s3.{operation_name}"] += 1
            return _make_api_call(self, operation_name, api_params)

        BaseClient._make_api_call = _counted  # type: ignore[method-assign]
    except ImportError:
        pass
    threading.Thread(target=_loop, name="bench-counts", daemon=True).start()
    atexit.register(_flush)
