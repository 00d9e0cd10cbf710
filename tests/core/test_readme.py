"""Issue 15 item 11: the README's quick start works from a clone: its relative links exist (the workflow is
shipped in docs/), `serve` keeps its terminal and `demo` goes in a second one, install size and CPU-only torch."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def test_every_relative_link_of_the_readme_exists_in_the_clone() -> None:
    links = [target for target in re.findall(r"\]\(([^)#\s]+)", README) if "://" not in target]
    assert links
    inside = [(ROOT / target).resolve() for target in links]
    missing = [str(path) for path in inside if not path.is_relative_to(ROOT) or not path.exists()]
    assert missing == []
    assert "docs/model-training-process.en.md" in links


def test_the_quick_start_says_where_each_command_runs_and_what_installing_costs() -> None:
    quick_start = README.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    assert "keeps this terminal" in quick_start and "second terminal" in quick_start
    assert quick_start.index("errorbook serve") < quick_start.index("errorbook demo")
    assert "download.pytorch.org/whl/cpu" in quick_start and " GB" in quick_start
