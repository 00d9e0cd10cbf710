"""Run a downloadable model.onnx (backbone + head, probabilities out) in ONNX Runtime, without torch.

The web process answers predictions with this: the same decode as every other scoring path
(`app.ml.decoding`), the documented normalisation, then the graph.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from app.ml.decoding import decode_array, normalised
from app.ml.input_spec import Preprocessing
from app.ml.prefetch import overlapped

INPUT_NAME, OUTPUT_NAME = "images", "probabilities"
CPU_PROVIDER = "CPUExecutionProvider"
PREDICT_BATCH = 16


def new_session(path: Path, *, provider: str = CPU_PROVIDER, threads: int = 1) -> Any:
    """An onnxruntime session on `threads` threads that do not spin between runs."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = max(1, threads)
    options.inter_op_num_threads = 1
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Spinning threads would take the core that a decoding thread (or the web server) needs between runs.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    providers = [provider] if provider == CPU_PROVIDER else [provider, CPU_PROVIDER]
    return onnxruntime.InferenceSession(str(path), options, providers=providers)


class OnnxClassifier:
    """model.onnx in a session: `probabilities_of` normalised inputs, or `predict` image files."""

    def __init__(self, path: Path, *, threads: int) -> None:
        self.session = new_session(path, threads=threads)
        self.threads = threads

    def probabilities_of(self, inputs: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        outputs = self.session.run([OUTPUT_NAME], {INPUT_NAME: np.ascontiguousarray(inputs, dtype=np.float32)})
        return np.asarray(outputs[0], dtype=np.float32)

    def predict(self, paths: Sequence[Path], preprocessing: Preprocessing) -> npt.NDArray[np.float32]:
        """Probabilities [N, classes] of image files, decoding the next batch while one computes."""
        batches = overlapped(
            paths,
            decode=lambda path: decode_array(path, preprocessing),
            batch_size=PREDICT_BATCH,
            threads=1,
            compute=lambda images: self.probabilities_of(normalised(images, preprocessing)),
        )
        results = list(batches)
        return np.concatenate(results) if results else np.zeros((0, 0), dtype=np.float32)
