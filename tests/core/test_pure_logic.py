"""Layering, checked on the source: domain logic stays framework-free (no web framework or ORM imports in app/ml
or app/*/logic.py); services, repositories and job handlers never import the web layer; and only the
composition roots read the global settings object, everything else is handed its settings."""

from __future__ import annotations

import ast
from collections.abc import Iterable
from pathlib import Path

APP = Path(__file__).resolve().parents[2] / "app"
FORBIDDEN = ("fastapi", "starlette", "sqlalchemy", "alembic", "app.models", "app.core.db", "app.web")
WEB = ("app.web",)
# Where a process is put together: the app factory, the CLI entries, the job runner process's entry.
COMPOSITION_ROOTS = {"app/core/settings.py", "app/web/app.py", "app/cli.py", "app/jobs/runner.py"}
# Still reading the global settings for callers in app/datasets that do not pass theirs yet (issue 14, item 6):
# jobs.service.enqueue's max_attempts default (upload finish/retry) and db.session_scope's engine default
# (the dataset CLI commands). Remove each once those callers pass settings / an engine.


def _pure_modules() -> list[Path]:
    return sorted([*APP.glob("ml/**/*.py"), *APP.glob("*/logic.py")])


def _layer_modules() -> list[Path]:
    """Services, repositories and job handlers: by module name, or inside a package named for the layer."""
    layers = ("service", "repository", "tasks")
    return sorted(
        path
        for path in APP.glob("**/*.py")
        if any(layer in path.stem for layer in layers)
        or any(layer in part for part in path.parts[:-1] for layer in layers)
    )


def _imports(path: Path) -> Iterable[str]:
    """Every module a file imports, at the top or inside a function."""
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            yield node.module


def _offenders(paths: Iterable[Path], forbidden: tuple[str, ...]) -> list[str]:
    return [
        f"{path.relative_to(APP.parent)}: {name}"
        for path in paths
        for name in _imports(path)
        if any(name == f or name.startswith(f + ".") for f in forbidden)
    ]


def test_pure_modules_exist() -> None:
    assert any(p.name == "logic.py" for p in _pure_modules()) or list(APP.glob("ml/*.py"))


def test_no_framework_imports_in_domain_logic() -> None:
    assert _offenders(_pure_modules(), FORBIDDEN) == []


def test_layer_modules_are_found() -> None:
    found = {str(p.relative_to(APP.parent)) for p in _layer_modules()}
    assert {"app/training/service.py", "app/training/repository.py", "app/training/tasks.py"} <= found


def test_services_repositories_and_tasks_do_not_import_the_web_layer() -> None:
    assert _offenders(_layer_modules(), WEB) == []


def _reads_global_settings(path: Path) -> bool:
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.ImportFrom) and any(alias.name == "get_settings" for alias in node.names):
            return True
        if isinstance(node, ast.Attribute) and node.attr == "get_settings":
            return True
    return False


def test_only_composition_roots_read_the_global_settings() -> None:
    readers = {
        str(path.relative_to(APP.parent))
        for path in APP.glob("**/*.py")
        if path.name != "cli.py" and _reads_global_settings(path)  # each CLI command is an entry
    }
    assert readers - COMPOSITION_ROOTS == set()
