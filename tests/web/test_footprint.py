"""The web process stays light: torch (~450 MB resident) is imported only by job runners, never by the web app,
the CLI or the task registry, so `errorbook serve` fits the ingest benchmark's 400 MB budget."""

from __future__ import annotations

import subprocess
import sys

PROBE = """
import sys
from app.web.app import create_app
from app.jobs.registry import load_all
import app.cli
create_app()
load_all()
heavy = sorted(name for name in ("torch", "torchvision") if name in sys.modules)
print(",".join(heavy))
"""


def test_the_web_app_the_cli_and_the_task_registry_do_not_import_torch() -> None:
    probe = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=120, check=True)

    assert probe.stdout.strip() == ""
