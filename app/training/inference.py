"""The worker's inference runtime from its settings, and the run's model.onnx; used by the training job and
the predict endpoint's PyTorch fallback. torch-heavy modules are imported inside the functions, so importing
this module keeps the web process light."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from app.core.settings import Settings
from app.ml.decoding import decode_array
from app.ml.input_spec import Preprocessing

if TYPE_CHECKING:
    import torch

    from app.ml.backbones import Backbone
    from app.ml.runtime import InferenceRuntime

PROBE_IMAGES = 8
MODEL_ONNX = "model.onnx"


def probe_images(paths: Sequence[Path], preprocessing: Preprocessing) -> npt.NDArray[np.uint8] | None:
    """Up to PROBE_IMAGES of the run's own images, decoded, to verify exports on real pictures."""
    decoded = []
    for path in paths[:PROBE_IMAGES]:
        try:
            decoded.append(decode_array(path, preprocessing))
        except (OSError, ValueError):  # an unreadable image only drops out of the probe
            continue
    return np.stack(decoded) if decoded else None


def worker_runtime(
    settings: Settings, backbone: Backbone, *, probe: npt.NDArray[np.uint8] | None = None
) -> InferenceRuntime:
    """The frozen backbone's runtime for this process per ERRORBOOK_INFERENCE_RUNTIME (see app/ml/runtime.py)."""
    from app.ml.features import available_cores, default_device
    from app.ml.runtime import prepare_runtime

    return prepare_runtime(
        backbone,
        choice=settings.inference_runtime,
        precision=settings.feature_precision,
        device_type=default_device().type,
        export_dir=settings.onnx_cache_dir,
        threads=available_cores(),
        probe=probe,
    )


def scoring_runtime(
    settings: Settings, mode: str, backbone: Backbone, *, probe: npt.NDArray[np.uint8] | None = None
) -> InferenceRuntime:
    """Linear runs score through the worker's runtime; finetuned backbones train and score in PyTorch. The
    training job and the pool scoring job both take their runtime from here."""
    from app.ml import features as feats
    from app.ml.runtime import InferenceRuntime, RuntimeReport

    if mode == "linear":
        return worker_runtime(settings, backbone, probe=probe)
    reason = None if settings.inference_runtime == "torch" else f"{mode} runs train and score in PyTorch"
    report = RuntimeReport("torch", feats.default_device().type, "float32", None, reason)
    return InferenceRuntime(report)


def export_run_onnx(
    *,
    settings: Settings,
    backbone: Backbone,
    head_state: Mapping[str, torch.Tensor],
    label_names: Sequence[str],
    directory: Path,
    probe: npt.NDArray[np.uint8] | None,
) -> dict[str, Any]:
    """Write `directory/model.onnx` from the backbone's verified export (made now if the cache lacks it) and
    the head; returns what the run records: the verified difference, or why there is no file."""
    from app.ml.model_onnx import ExportRefused, compose_classifier
    from app.ml.runtime import MIN_COSINE, probe_batch, verified_export

    images = probe if probe is not None else probe_batch(backbone.input_spec.preprocessing.crop_size)
    try:
        export = verified_export(backbone, settings.onnx_cache_dir, probe=images)
        if not export.passed:
            cosine = f"minimum cosine {export.min_cosine:.6f} < {MIN_COSINE}"
            reason = f"the backbone's ONNX export failed verification ({cosine})"
            return {"written": False, "reason": reason}
        difference = compose_classifier(
            backbone_path=export.path,
            weight=head_state["weight"].detach().cpu().float().numpy(),
            bias=head_state["bias"].detach().cpu().float().numpy(),
            label_names=label_names,
            input_spec=backbone.input_spec,
            path=directory / MODEL_ONNX,
            probe=images,
        )
    except ExportRefused as refused:
        return {"written": False, "reason": str(refused)}
    except Exception as error:  # the download is optional: a failed export must not fail the run
        return {"written": False, "reason": f"export failed ({type(error).__name__}: {error})"[:500]}
    return {"written": True, "max_probability_difference": difference}
