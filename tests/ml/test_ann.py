"""usearch and ONNX Runtime in one process: through `usearch_index` in either order, and nothing imports usearch
any other way (imported first, it crashes ONNX Runtime's loading: see app/ml/ann.py)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    "code",
    [
        "from app.ml.ann import usearch_index; usearch_index().Index(ndim=4); import onnxruntime",
        "import onnxruntime; from app.ml.ann import usearch_index; usearch_index().Index(ndim=4)",
        "from app.ml import similarity; import numpy as np;"
        " similarity.dot_scores(np.ones((3, 4), np.float32), np.ones(4)); import onnxruntime",
    ],
)
def test_usearch_then_onnx_runtime_load_in_one_process(code: str) -> None:
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, (done.returncode, done.stderr[-2000:])


def test_only_the_loader_imports_usearch() -> None:
    direct = re.compile(r"^\s*(from usearch\b|import usearch\b)", re.MULTILINE)
    offenders = [
        str(path.relative_to(ROOT))
        for path in (ROOT / "app").rglob("*.py")
        if path.name != "ann.py" and direct.search(path.read_text())
    ]
    assert offenders == []
