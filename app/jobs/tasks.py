"""Built-in job kinds: a demo job for the jobs page (and the queue's own tests)."""

from __future__ import annotations

import os
import time
from typing import Any

from app.jobs.context import JobContext, TaskError
from app.jobs.registry import task


@task("demo.sleep")
def demo_sleep(ctx: JobContext) -> dict[str, Any]:
    """Sleep in steps, reporting progress.

    Fault drills for operators (and the queue's tests): ``fail`` fails with that message at the end;
    ``stubborn`` sleeps without checking for cancellation (so only a hard cancel stops it);
    ``allocate_mb`` holds that much memory (to see the memory limit kill the job, not the worker).
    """
    seconds = float(ctx.payload.get("seconds", 5.0))
    steps = max(1, int(ctx.payload.get("steps", 10)))
    ballast = bytearray(int(ctx.payload.get("allocate_mb", 0)) * 1024 * 1024)
    ballast[::4096] = b"x" * len(ballast[::4096])  # touch every page so it is really resident
    if ctx.payload.get("stubborn"):
        ctx.progress(0.0, "sleeping without checking for cancellation", force=True)
        time.sleep(seconds)
    for step in range(steps):
        ctx.progress(step / steps, f"step {step + 1} of {steps}")
        time.sleep(seconds / steps)
    if ctx.payload.get("fail"):
        raise TaskError(str(ctx.payload["fail"]))
    ctx.progress(1.0, "done")
    return {"runner_pid": os.getpid(), "attempt": ctx.attempt}
