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


def test_web_and_workers_share_only_postgres_and_the_object_store() -> None:
    """No named volume is mounted by both the web and a worker: every file they both need is in the store."""
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]

    def named_volumes(name: str) -> set[str]:
        mounts = services[name].get("volumes", compose["x-errorbook"].get("volumes", []))
        return {mount.split(":", 1)[0] for mount in mounts if ":" in mount}  # "/data" alone: anonymous, its own

    web = named_volumes("web")
    for worker in ("worker", "gpu-worker"):
        assert not web & named_volumes(worker), worker
        assert services[worker]["volumes"] == ["/data"]  # per-container scratch
    assert set(compose["volumes"]) == {"web-data", "postgres-data", "seaweedfs-data"}
