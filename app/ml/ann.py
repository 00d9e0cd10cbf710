"""The approximate-nearest-neighbour library (usearch), always loaded after ONNX Runtime.

Imported the other way round, ONNX Runtime's extension crashes the process while loading (a segfault, seen with
usearch 2.26.6 and onnxruntime 1.32.0 on this Linux): a worker that served a similar-images query or built an
index before its first ONNX extraction would die. Every use of usearch goes through `usearch_index`, which a test
enforces.
"""

from __future__ import annotations

from types import ModuleType


def usearch_index() -> ModuleType:
    import onnxruntime  # noqa: F401  (load order: see the module docstring)
    import usearch.index

    return usearch.index
