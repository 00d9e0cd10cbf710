"""Domain logic stays framework-free: no web framework or ORM imports in app/ml or app/*/logic.py."""

from __future__ import annotations

import ast
from pathlib import Path

APP = Path(__file__).resolve().parents[2] / "app"
FORBIDDEN = ("fastapi", "starlette", "sqlalchemy", "alembic", "app.models", "app.core.db", "app.web")


def _pure_modules() -> list[Path]:
    return sorted([*APP.glob("ml/**/*.py"), *APP.glob("*/logic.py")])


def test_pure_modules_exist() -> None:
    assert any(p.name == "logic.py" for p in _pure_modules()) or list(APP.glob("ml/*.py"))


def test_no_framework_imports_in_domain_logic() -> None:
    offenders = []
    for path in _pure_modules():
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            for name in names:
                if any(name == f or name.startswith(f + ".") for f in FORBIDDEN):
                    offenders.append(f"{path.relative_to(APP.parent)}: {name}")
    assert offenders == []
