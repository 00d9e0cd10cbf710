"""The inference runtime on the real pretrained EfficientNet-Lite0 and the real onnxruntime: export once,
verify against PyTorch, share the feature cache only when verified, and never use a export that fails."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from sklearn import datasets

from app.ml import runtime as rt
from app.ml.backbones import inference_network, load_backbone, with_weights
from app.ml.features import extract_features
from app.ml.prefetch import overlapped

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def lite0() -> Any:
    return load_backbone("efficientnet_lite0")


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Real photos (scikit-learn's two samples), cut into crops of different sizes and places."""
    folder = tmp_path_factory.mktemp("photos")
    paths = []
    for name in ("china.jpg", "flower.jpg"):
        picture = Image.fromarray(datasets.load_sample_image(name))
        for index, box in enumerate(((0, 0, 640, 427), (100, 50, 500, 400), (200, 100, 460, 300))):
            path = folder / f"{name[:-4]}-{index}.jpg"
            picture.crop(box).save(path, quality=92)
            paths.append(path)
    return paths


def _prepare(backbone: Any, export_dir: Path, **overrides: Any) -> rt.InferenceRuntime:
    settings: dict[str, Any] = {"choice": "auto", "precision": "float32", "device_type": "cpu", "threads": 2}
    return rt.prepare_runtime(backbone, export_dir=export_dir, **{**settings, **overrides})


def test_auto_on_a_cpu_exports_once_verifies_and_computes_pytorchs_features(lite0, photos, tmp_path) -> None:
    export_dir = tmp_path / "onnx"
    first = _prepare(lite0, export_dir)

    assert first.onnx is not None
    assert (first.report.runtime, first.report.provider, first.report.precision) == (
        "onnxruntime",
        "CPUExecutionProvider",
        "float32",
    )
    assert first.report.min_cosine is not None and first.report.min_cosine >= rt.MIN_COSINE
    assert first.report.fallback_reason is None
    (exported,) = export_dir.glob("*.onnx")
    assert exported == rt.export_path(lite0, export_dir) and lite0.weights_sha256[:16] in exported.name
    written_at = exported.stat().st_mtime_ns
    rt.forget_sessions()
    again = _prepare(lite0, export_dir)
    assert again.onnx is not None and exported.stat().st_mtime_ns == written_at  # exported once

    onnx = extract_features(backbone=lite0, image_paths=photos, cache_dir=None, runtime=first, include_flipped=True)
    eager = extract_features(backbone=lite0, image_paths=photos, cache_dir=None, num_workers=0, include_flipped=True)
    assert rt.min_cosine(onnx.features, eager.features) >= rt.MIN_COSINE
    assert onnx.flipped_features is not None and eager.flipped_features is not None
    assert rt.min_cosine(onnx.flipped_features, eager.flipped_features) >= rt.MIN_COSINE
    assert rt.min_cosine(onnx.features, onnx.flipped_features) < 0.999  # the flip really was another view


def test_verified_features_share_the_cache_with_pytorchs(lite0, photos, tmp_path) -> None:
    runtime = _prepare(lite0, tmp_path / "onnx")
    cache = tmp_path / "features"

    filled = extract_features(backbone=lite0, image_paths=photos, cache_dir=cache, runtime=runtime)
    reused = extract_features(backbone=lite0, image_paths=photos, cache_dir=cache, num_workers=0)

    assert (filled.extracted, reused.extracted, reused.cache_hits) == (len(photos), 0, len(photos))
    np.testing.assert_array_equal(filled.features, reused.features)


def test_an_export_that_no_longer_matches_pytorch_is_never_used(lite0, photos, tmp_path) -> None:
    export_dir = tmp_path / "onnx"
    assert _prepare(lite0, export_dir).onnx is not None
    exported = rt.export_path(lite0, export_dir)
    # Replace the verified file by the export of other weights (as a damaged or stale file would be).
    generator = np.random.default_rng(0)
    state = {
        key: value + 0.05 * value.std() * _noise(generator, value) if value.ndim == 4 else value  # conv weights
        for key, value in lite0.features.state_dict().items()
    }
    other = with_weights(lite0, state)
    rt._export(inference_network(other, normalise=False).eval(), exported, 224)
    rt.forget_sessions()

    fallen_back = _prepare(lite0, export_dir)

    assert fallen_back.onnx is None
    assert fallen_back.report.runtime == "torch" and fallen_back.report.provider == "cpu"
    assert fallen_back.report.min_cosine is not None and fallen_back.report.min_cosine < rt.MIN_COSINE
    assert "differs from PyTorch" in (fallen_back.report.fallback_reason or "")
    result = extract_features(backbone=lite0, image_paths=photos[:2], cache_dir=None, runtime=fallen_back)
    eager = extract_features(backbone=lite0, image_paths=photos[:2], cache_dir=None, num_workers=0)
    np.testing.assert_allclose(result.features, eager.features, rtol=1e-5, atol=1e-6)  # PyTorch computed them


def _noise(generator: np.random.Generator, value: Any) -> Any:
    import torch

    return torch.from_numpy(generator.standard_normal(tuple(value.shape)).astype(np.float32))


def test_the_choice_is_resolved_per_setting_device_and_precision(lite0, tmp_path) -> None:
    export_dir = tmp_path / "onnx"

    torch_runtime = _prepare(lite0, export_dir, choice="torch")
    reduced = _prepare(lite0, export_dir, precision="bfloat16")
    on_gpu = _prepare(lite0, export_dir, device_type="cuda")

    assert torch_runtime.onnx is None and torch_runtime.report.runtime == "torch"
    assert torch_runtime.report.fallback_reason is None
    assert reduced.onnx is None and "bfloat16" in (reduced.report.fallback_reason or "")
    import onnxruntime

    if rt.CUDA_PROVIDER not in onnxruntime.get_available_providers():  # auto keeps PyTorch on the GPU
        assert on_gpu.onnx is None and (on_gpu.report.runtime, on_gpu.report.provider) == ("torch", "cuda")
    assert not list(export_dir.glob("*.onnx"))  # none of these exported anything
    with pytest.raises(ValueError, match="auto, onnxruntime, torch"):
        _prepare(lite0, export_dir, choice="openvino")


def test_decoding_ahead_keeps_input_order_and_stops_when_the_consumer_does(tmp_path) -> None:
    paths = [tmp_path / f"{index}" for index in range(23)]
    decoded: list[Path] = []

    def decode(path: Path) -> Any:
        decoded.append(path)
        return np.full((3, 2, 2), int(path.name), dtype=np.uint8)

    batches = overlapped(paths, decode=decode, batch_size=5, threads=2, compute=lambda images: images[:, 0, 0, 0])
    assert np.concatenate(list(batches)).tolist() == list(range(23))

    decoded.clear()
    stream = overlapped(paths, decode=decode, batch_size=5, threads=1, compute=lambda images: images)
    next(stream)
    stream.close()
    assert len(decoded) <= 3 * 5  # the batch taken, the one decoded ahead, at most one more in flight


def test_a_feature_that_is_not_finite_counts_as_no_agreement_at_all() -> None:
    same = np.array([[1.0, 2.0], [3.0, -1.0]])

    assert rt.min_cosine(same, 2 * same) == pytest.approx(1.0)
    assert rt.min_cosine(same, np.array([[1.0, 2.0], [np.nan, 0.0]])) == -1.0
