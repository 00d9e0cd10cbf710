"""Built-in job kinds: a demo job for the jobs page (and the queue's own tests)."""

from __future__ import annotations

import os
import time
from typing import Any

from app.jobs.context import JobContext, TaskError
from app.jobs.registry import task


@task("demo.sleep")
def demo_sleep(ctx: JobContext) -> dict[str, Any]:
    """Sleep in steps, reporting progress; ``fail`` makes it fail with that message at the end."""
    seconds = float(ctx.payload.get("seconds", 5.0))
    steps = max(1, int(ctx.payload.get("steps", 10)))
    for step in range(steps):
        ctx.progress(step / steps, f"step {step + 1} of {steps}")
        time.sleep(seconds / steps)
    if ctx.payload.get("fail"):
        raise TaskError(str(ctx.payload["fail"]))
    ctx.progress(1.0, "done")
    return {"runner_pid": os.getpid(), "attempt": ctx.attempt}
