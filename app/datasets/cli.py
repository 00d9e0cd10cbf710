"""Dataset commands for the ``errorbook`` CLI."""

from __future__ import annotations

import typer


def register(cli: typer.Typer) -> None:
    """Add this domain's commands to the CLI (import, demo)."""
