"""A run's model as one ONNX graph: backbone and head, normalised float32 images in, class probabilities out.

The graph's input `images` is [N, 3, crop, crop] float32, made as `app.ml.decoding` does: decode, resize the
shorter side, centre-crop, x / 255, minus mean, over std (the run page lists the numbers; they are also in the
model's metadata). Its output `probabilities` is [N, classes] in labels.json order.

It is built from the backbone's verified export (`app.ml.runtime`: minimum cosine to PyTorch >= MIN_COSINE)
with the linear head and a softmax appended as ONNX nodes, so no second trace is needed; before it is kept
its probabilities on the probe batch must match the head applied to the verified features within
`MAX_PROBABILITY_DIFFERENCE`, with the same argmax; else nothing is written and the caller records why.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt

from app.ml.decoding import normalised
from app.ml.input_spec import InputSpec
from app.ml.onnx_classifier import INPUT_NAME, OUTPUT_NAME, OnnxClassifier

MAX_PROBABILITY_DIFFERENCE = 1e-4


class ExportRefused(RuntimeError):
    """The composed graph did not compute what it should; the message says by how much."""


def compose_classifier(
    *,
    backbone_path: Path,
    weight: npt.NDArray[np.float32],
    bias: npt.NDArray[np.float32],
    label_names: Sequence[str],
    input_spec: InputSpec,
    path: Path,
    probe: npt.NDArray[np.uint8],
) -> float:
    """Write backbone + head + softmax to `path` (atomically); returns the largest probability difference
    found on `probe` (uint8 [N, 3, crop, crop]). Raises `ExportRefused` (nothing written) past the tolerance."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load(str(backbone_path))
    graph = model.graph
    features_name = graph.output[0].name
    graph.initializer.extend(
        [
            numpy_helper.from_array(np.ascontiguousarray(weight, dtype=np.float32), "head.weight"),
            numpy_helper.from_array(np.ascontiguousarray(bias, dtype=np.float32), "head.bias"),
        ]
    )
    graph.node.extend(
        [
            helper.make_node("Gemm", [features_name, "head.weight", "head.bias"], ["logits"], transB=1),
            helper.make_node("Softmax", ["logits"], [OUTPUT_NAME], axis=1),
        ]
    )
    del graph.output[:]
    graph.output.append(helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["batch", len(label_names)]))
    graph.name = "errorbook_classifier"
    metadata = {"labels": json.dumps(list(label_names)), "input_spec": json.dumps(input_spec.to_dict())}
    for key, value in metadata.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary_name = tempfile.mkstemp(dir=path.parent, suffix=".onnx.tmp")
    os.close(descriptor)
    temporary = Path(temporary_name)
    try:
        onnx.save(model, temporary_name)
        difference = _check(temporary, backbone_path, weight, bias, normalised(probe, input_spec.preprocessing))
        os.replace(temporary, path)
        return difference
    finally:
        temporary.unlink(missing_ok=True)


def _check(
    composed: Path,
    backbone_path: Path,
    weight: npt.NDArray[np.float32],
    bias: npt.NDArray[np.float32],
    inputs: npt.NDArray[np.float32],
) -> float:
    from app.ml.onnx_classifier import new_session

    features = new_session(backbone_path).run(None, {INPUT_NAME: inputs})[0].astype(np.float64)
    logits = features @ weight.astype(np.float64).T + bias.astype(np.float64)
    expected = np.exp(logits - logits.max(axis=1, keepdims=True))
    expected /= expected.sum(axis=1, keepdims=True)
    got = OnnxClassifier(composed, threads=1).probabilities_of(inputs)
    difference = float(np.abs(got - expected).max())
    same_argmax = bool((got.argmax(axis=1) == expected.argmax(axis=1)).all())
    if difference > MAX_PROBABILITY_DIFFERENCE or not same_argmax:
        raise ExportRefused(
            f"the ONNX model's probabilities differ from the head on verified features by up to {difference:.2e} "
            f"(allowed {MAX_PROBABILITY_DIFFERENCE:.0e}, same argmax: {same_argmax})"
        )
    return difference
