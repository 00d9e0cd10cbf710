"""Where a frozen backbone runs: ONNX Runtime (exported once, verified) or PyTorch.

`prepare_runtime` resolves the worker's choice (`auto`, `onnxruntime`, `torch`) for one backbone:

- `auto`: ONNX Runtime on a CPU; on CUDA, ONNX Runtime only if its CUDA provider is installed, else PyTorch.
- `onnxruntime`: ONNX Runtime on whatever provider fits the device (CPU when no CUDA provider).
- `torch`: PyTorch, as before.

The backbone (normalisation and features, batch norm folded, uint8 images in) is exported once per backbone
name, weights digest, preprocessing and export settings into `export_dir` (written to a temporary file, then
renamed) and verified on a probe batch against PyTorch float32: the minimum cosine similarity of the pooled
features must be at least `MIN_COSINE`, else the backbone runs in PyTorch and the report says why. The
verification is remembered beside the export, keyed by provider, onnxruntime version and the export file's
digest, so a changed or damaged file is verified again before it is ever used. Only float32 goes to ONNX
Runtime; bfloat16 extraction stays in PyTorch.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import threading
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from app.ml.backbones import Backbone, inference_network
from app.ml.decoding import normalised
from app.ml.input_spec import Preprocessing
from app.ml.onnx_classifier import CPU_PROVIDER, new_session

RUNTIME_CHOICES = ("auto", "onnxruntime", "torch")
MIN_COSINE = 0.9999
OPSET = 17
# Bump when the export below changes what it writes, so older cached files are not taken for new ones.
EXPORT_FORMAT = 1
PROBE_SIZE = 8
CUDA_PROVIDER = "CUDAExecutionProvider"
INPUT_NAME, OUTPUT_NAME = "images", "features"  # the downloadable model.onnx adds "probabilities"


@dataclass(frozen=True)
class RuntimeReport:
    """What a run records about how its images were scored."""

    runtime: str  # "onnxruntime" or "torch"
    provider: str  # an onnxruntime execution provider, or the torch device type
    precision: str
    min_cosine: float | None = None  # of the verification, when ONNX Runtime was checked
    fallback_reason: str | None = None  # why PyTorch was used although ONNX Runtime was asked for

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class OnnxBackbone:
    """An onnxruntime session of a verified export: uint8 images [N, 3, H, W] in, float32 features out.

    The graph takes normalised float32 images (as the downloadable model.onnx does); normalising here in numpy
    costs a fraction of a millisecond per image. `session.run` is thread-safe and releases the GIL, so decoding
    threads keep working meanwhile.
    """

    def __init__(self, session: Any, provider: str, preprocessing: Preprocessing) -> None:
        self.session = session
        self.provider = provider
        self.preprocessing = preprocessing

    def __call__(self, images: npt.NDArray[np.uint8]) -> npt.NDArray[np.float32]:
        outputs = self.session.run([OUTPUT_NAME], {INPUT_NAME: normalised(images, self.preprocessing)})
        return np.asarray(outputs[0], dtype=np.float32)


@dataclass(frozen=True)
class InferenceRuntime:
    """The resolved choice: `onnx` is the session to use, or None for PyTorch."""

    report: RuntimeReport
    onnx: OnnxBackbone | None = None


def _torch_runtime(
    device_type: str, precision: str, reason: str | None, cosine: float | None = None
) -> InferenceRuntime:
    return InferenceRuntime(RuntimeReport("torch", device_type, precision, cosine, reason))


_SESSIONS: dict[tuple[str, str, int], InferenceRuntime] = {}
_SESSIONS_LOCK = threading.Lock()


def prepare_runtime(
    backbone: Backbone,
    *,
    choice: str,
    precision: str,
    device_type: str,
    export_dir: Path | None,
    threads: int,
    probe: npt.NDArray[np.uint8] | None = None,
) -> InferenceRuntime:
    """Resolve `choice` for `backbone`, exporting and verifying on first use (see the module docstring).

    `probe`: uint8 images [N, 3, crop, crop] to verify on (default: a fixed synthetic batch). Sessions are
    kept per process, so later runs with the same weights start at once.
    """
    if choice not in RUNTIME_CHOICES:
        raise ValueError(f"inference runtime must be one of {', '.join(RUNTIME_CHOICES)}; got {choice!r}")
    if choice == "torch":
        return _torch_runtime(device_type, precision, None)
    if precision != "float32":
        return _torch_runtime(device_type, precision, f"{precision} extraction runs in PyTorch only")
    try:
        import onnxruntime
    except ImportError:
        return _torch_runtime(device_type, precision, "onnxruntime is not installed")
    provider = CPU_PROVIDER
    if device_type == "cuda":
        if CUDA_PROVIDER in onnxruntime.get_available_providers():
            provider = CUDA_PROVIDER
        elif choice == "auto":
            return _torch_runtime(device_type, precision, None)  # PyTorch on the GPU beats ONNX on the CPU
    if export_dir is None:
        return _torch_runtime(device_type, precision, "no cache directory to keep the ONNX export in")
    path = export_path(backbone, export_dir)
    key = (str(path), provider, threads)
    with _SESSIONS_LOCK:
        if key in _SESSIONS and path.exists():
            return _SESSIONS[key]
        try:
            resolved = _export_and_verify(backbone, export_dir, provider, threads, probe)
        except Exception as error:  # export/load failures of any kind: record them, run in PyTorch
            reason = f"ONNX export or load failed ({type(error).__name__}: {error})"
            return _torch_runtime(device_type, precision, reason[:500])
        if resolved.onnx is None:
            return _torch_runtime(device_type, precision, resolved.report.fallback_reason, resolved.report.min_cosine)
        _SESSIONS[key] = resolved
        return resolved


def export_settings_id() -> str:
    text = f"format{EXPORT_FORMAT}|opset{OPSET}|torch{torch.__version__}|normalised-nchw|bn-folded"
    return hashlib.sha256(text.encode()).hexdigest()[:10]


def export_path(backbone: Backbone, export_dir: Path) -> Path:
    """Where the export of these exact weights, preprocessing and export settings lives."""
    safe_name = "".join(char if char.isalnum() or char in "-_" else "_" for char in backbone.name)
    prep_id = backbone.input_spec.preprocessing.preprocessing_id
    stem = f"{safe_name}-{backbone.weights_sha256[:16]}-{prep_id}-{export_settings_id()}"
    return export_dir / f"{stem}.onnx"


def probe_batch(crop_size: int, count: int = PROBE_SIZE) -> npt.NDArray[np.uint8]:
    """A fixed batch of picture-like uint8 images: smooth colour gradients with shapes and a little noise."""
    rng = np.random.default_rng(20261203)
    ys, xs = np.mgrid[0:crop_size, 0:crop_size] / crop_size
    images = np.empty((count, 3, crop_size, crop_size), dtype=np.uint8)
    for index in range(count):
        base = rng.uniform(0, 255, 3)[:, None, None] * (0.4 + 0.6 * (xs * rng.uniform() + ys * rng.uniform()))
        cx, cy, radius = rng.uniform(0.2, 0.8), rng.uniform(0.2, 0.8), rng.uniform(0.1, 0.3)
        inside = (xs - cx) ** 2 + (ys - cy) ** 2 < radius**2
        picture = np.where(inside[None], rng.uniform(0, 255, 3)[:, None, None], base)
        picture = picture + rng.normal(0, 12, picture.shape)
        images[index] = np.clip(picture, 0, 255).astype(np.uint8)
    return images


@dataclass(frozen=True)
class VerifiedExport:
    """A backbone export in a session, with the minimum cosine to PyTorch it was verified at."""

    path: Path
    onnx: OnnxBackbone
    min_cosine: float

    @property
    def passed(self) -> bool:
        return self.min_cosine >= MIN_COSINE


def verified_export(
    backbone: Backbone,
    export_dir: Path,
    *,
    provider: str = CPU_PROVIDER,
    threads: int = 1,
    probe: npt.NDArray[np.uint8] | None = None,
) -> VerifiedExport:
    """Export the backbone unless its file exists, open it, and verify it unless that file was verified."""
    path = export_path(backbone, export_dir)
    preprocessing = backbone.input_spec.preprocessing
    network = inference_network(backbone).eval()
    if not path.exists():
        _export(inference_network(backbone, normalise=False).eval(), path, preprocessing.crop_size)
    onnx = OnnxBackbone(new_session(path, provider=provider, threads=threads), provider, preprocessing)
    record_key = f"{provider}|ort{_ort_version()}|{_file_digest(path)}"
    records = _read_records(path)
    cosine = records.get(record_key)
    if cosine is None:
        images = probe if probe is not None and len(probe) else probe_batch(preprocessing.crop_size)
        cosine = _min_cosine(network, onnx, images)
        records[record_key] = cosine
        _write_records(path, records)
    return VerifiedExport(path, onnx, cosine)


def _export_and_verify(
    backbone: Backbone, export_dir: Path, provider: str, threads: int, probe: npt.NDArray[np.uint8] | None
) -> InferenceRuntime:
    export = verified_export(backbone, export_dir, provider=provider, threads=threads, probe=probe)
    cosine = round(export.min_cosine, 7)
    if not export.passed:
        reason = (
            f"the ONNX export of {backbone.name} differs from PyTorch (minimum cosine similarity "
            f"{export.min_cosine:.6f} < {MIN_COSINE}); ran in PyTorch"
        )
        return InferenceRuntime(RuntimeReport("torch", "", "float32", cosine, reason))
    return InferenceRuntime(RuntimeReport("onnxruntime", provider, "float32", cosine), export.onnx)


def _export(network: nn.Module, path: Path, crop: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    example = torch.zeros(2, 3, crop, crop)
    descriptor, temporary_name = tempfile.mkstemp(dir=path.parent, suffix=".onnx.tmp")
    os.close(descriptor)
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # the legacy exporter's deprecation and tracer notes
            # dynamo=False: the TorchScript-based exporter needs no onnxscript and works offline.
            torch.onnx.export(
                network,
                (example,),
                temporary_name,
                dynamo=False,
                opset_version=OPSET,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
            )
        os.replace(temporary_name, path)
    finally:
        Path(temporary_name).unlink(missing_ok=True)


def _min_cosine(network: nn.Module, onnx: OnnxBackbone, images: npt.NDArray[np.uint8]) -> float:
    """PyTorch float32 (normalising inside, as extraction does) against the export on the same images."""
    with torch.inference_mode():
        reference = network(torch.from_numpy(np.ascontiguousarray(images)).float() / 255.0).float().numpy()
    return min_cosine(reference, onnx(images))


def min_cosine(first: npt.NDArray[np.float32], second: npt.NDArray[np.float32]) -> float:
    """The smallest row-wise cosine similarity of two [N, D] arrays (1.0 for identical directions); -1.0 when
    any value is not finite (a NaN must fail every comparison, and JSON columns cannot hold it)."""
    a, b = np.asarray(first, dtype=np.float64), np.asarray(second, dtype=np.float64)
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        return -1.0
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    cosines = (a * b).sum(axis=1) / np.maximum(norms, 1e-12)
    return float(cosines.min())


def _ort_version() -> str:
    import onnxruntime

    return str(onnxruntime.__version__)


def _file_digest(path: Path) -> str:
    with path.open("rb") as stream:
        return hashlib.file_digest(stream, "sha256").hexdigest()[:16]


def _records_path(path: Path) -> Path:
    return path.with_suffix(".verified.json")


def _read_records(path: Path) -> dict[str, float]:
    try:
        data = json.loads(_records_path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return {str(key): float(value) for key, value in data.items()} if isinstance(data, dict) else {}


def _write_records(path: Path, records: dict[str, float]) -> None:
    target = _records_path(path)
    descriptor, temporary_name = tempfile.mkstemp(dir=target.parent, suffix=".json.tmp")
    with os.fdopen(descriptor, "w", encoding="utf-8") as stream:
        json.dump(records, stream, sort_keys=True)
    os.replace(temporary_name, target)


def forget_sessions(paths: Sequence[Path] | None = None) -> None:
    """Drop cached sessions (all, or those of `paths`), e.g. after the cache directory was cleared."""
    with _SESSIONS_LOCK:
        for key in list(_SESSIONS):
            if paths is None or Path(key[0]) in paths:
                del _SESSIONS[key]
