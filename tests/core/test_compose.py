"""docker-compose.yml runs only real commands of our CLI, with options they accept."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
import yaml

from app.cli import cli

ROOT = Path(__file__).resolve().parents[2]


def _resolve(group: Any, words: list[str]) -> tuple[Any, list[str]]:
    """Walk sub-commands the way the CLI parser would (typer vendors its own click, so duck-type it)."""
    command, rest = group, list(words)
    while hasattr(command, "get_command") and rest and not rest[0].startswith("-"):
        ctx = command.make_context(command.name or "errorbook", [], resilient_parsing=True)
        sub = command.get_command(ctx, rest[0])
        assert sub is not None, f"`errorbook {' '.join(words)}`: no command {rest[0]!r}"
        command, rest = sub, rest[1:]
    return command, rest


def test_every_compose_command_is_a_real_cli_command() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    group = typer.main.get_command(cli)
    checked = 0
    for name, service in compose["services"].items():
        command = service.get("command")
        if "errorbook" not in service.get("image", ""):
            continue  # another project's image (Postgres, the object store): its own command
        assert command is not None, name
        assert command[0] == "errorbook", name
        resolved, rest = _resolve(group, command[1:])
        accepted = {opt for param in resolved.params for opt in param.opts}
        for word in rest:
            if word.startswith("-"):
                assert word in accepted, f"{name}: `{word}` is not an option of `errorbook {command[1]}`"
        ctx = resolved.make_context(resolved.name or "", list(rest), resilient_parsing=False)
        assert ctx is not None
        checked += 1
    assert checked >= 4
    assert compose["services"]["storage-init"]["command"] == ["errorbook", "storage", "init"]
    # Images go to the object store the compose file runs.
    assert compose["x-errorbook"]["environment"]["ERRORBOOK_STORAGE"] == "s3"
    assert "seaweedfs" in compose["services"]
    assert compose["services"]["gpu-worker"]["command"][-2:] == ["--queue", "gpu"]
    assert "no-worker" in " ".join(compose["services"]["web"]["command"])
