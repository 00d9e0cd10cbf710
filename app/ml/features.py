"""Image decoding for the models, and pooled backbone features cached on disk.

A frozen backbone maps an image to the same feature vector every time, so features are computed once per
(backbone name, weights hash, preprocessing id, image sha256) and kept as one small .npy file each under the
cache directory (written to a temporary file, then renamed, so readers never see half a file). Training a
linear head on cached features takes seconds; only images never seen with these weights go through the
backbone. Extraction decodes JPEGs at reduced size through `Image.draft`, folds batch norm into the
convolutions and runs batches under `torch.inference_mode()` in channels-last layout: on CUDA when available
(DataLoader worker processes decoding), otherwise in one DataLoader worker process per core, each decoding
and computing whole batches on one thread (see `_batches_in_processes` for why not threads). With a
verified ONNX Runtime session (`app.ml.runtime`), batches go through it instead while threads decode the next
ones (`app.ml.prefetch`).
"""

from __future__ import annotations

import hashlib
import math
import multiprocessing
import multiprocessing.context
import os
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from app.ml.backbones import Backbone, Preprocessing, inference_network
from app.ml.decoding import decode_array
from app.ml.prefetch import decode_threads, overlapped
from app.ml.runtime import InferenceRuntime, OnnxBackbone

ProgressCallback = Callable[[float, str], None]
StopCheck = Callable[[], bool]
ViewFeatures = list[npt.NDArray[np.float32]]  # one [batch, feature_size] array per view (plain, flipped)

# Arithmetic of the frozen backbone during extraction. bfloat16 (autocast) ran 2.5x faster on a CPU with native
# bf16 (AVX512-BF16; AMX too) and moves features by a few percent (cosine >= 0.989 to float32 on bench/train.py);
# on CPUs without it, it is emulated and slower. Features of each precision are cached apart.
PRECISIONS: dict[str, torch.dtype | None] = {"float32": None, "bfloat16": torch.bfloat16}


class TrainingCancelled(Exception):
    """Raised between batches when the caller's `should_stop()` returns True."""


def available_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _loader_context() -> multiprocessing.context.BaseContext | None:
    """Fork DataLoader workers where the OS can (PyTorch's own default on Linux). A job runner is started by
    spawn, which its children would inherit: each worker would import torch and unpickle the network again for
    every extraction, measured at 20 s per subset on a busy 2-core machine instead of well under one."""
    return multiprocessing.get_context("fork") if "fork" in multiprocessing.get_all_start_methods() else None


@contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """Run torch's CPU operations on `count` threads, restoring the previous setting afterwards."""
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def check_stop(should_stop: StopCheck | None) -> None:
    if should_stop is not None and should_stop():
        raise TrainingCancelled("stopped on request")


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def decode_image(path: Path, preprocessing: Preprocessing, *, random_crop: bool = False) -> torch.Tensor:
    """Decode, resize the shorter side and crop in one step: uint8 tensor [3, crop, crop].

    The crop is centred, or placed at random (from torch's generator, so DataLoader seeding applies) when
    `random_crop` is set for training-time augmentation.
    """
    crop_at = (float(torch.rand(())), float(torch.rand(()))) if random_crop else None
    return torch.from_numpy(decode_array(path, preprocessing, crop_at=crop_at))


class ImageDataset(Dataset[tuple[torch.Tensor, int]]):
    """(uint8 image tensor, label) pairs; with `augment`, a random crop and a random horizontal flip."""

    def __init__(
        self,
        paths: Sequence[Path],
        preprocessing: Preprocessing,
        *,
        labels: Sequence[int] | None = None,
        augment: bool = False,
    ) -> None:
        self.paths = list(paths)
        self.labels = list(labels) if labels is not None else [-1] * len(self.paths)
        if len(self.labels) != len(self.paths):
            raise ValueError("one label per image path is needed")
        self.preprocessing = preprocessing
        self.augment = augment

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image = decode_image(self.paths[index], self.preprocessing, random_crop=self.augment)
        if self.augment and bool(torch.rand(()) < 0.5):
            image = torch.flip(image, dims=[2])
        return image, self.labels[index]


def decode_workers(device: torch.device, *, image_count: int, batch_size: int) -> int:
    """How many processes should decode images while the model computes.

    On a GPU, the CPU cores are free for decoding. On a CPU the model's threads already use every core, and
    measured on 2 cores, even one decoding process slowed extraction (the model's threads wait for each
    other whenever one is descheduled), so workers only come in with many cores, one per eight.
    """
    if image_count <= 2 * batch_size:
        return 0  # starting processes would cost more than they save
    cores = available_cores()
    return min(8, cores - 1) if device.type == "cuda" else cores // 8


def default_batch_size(device: torch.device, *, onnx: bool = False) -> int:
    # Small CPU batches keep PyTorch's activations in cache; larger ones measured slower per image on 2 cores.
    # ONNX Runtime's CPU kernels gain from larger batches (fewer thread hand-offs per image).
    if device.type == "cuda":
        return 64
    return 16 if onnx else 4


def image_loader(
    dataset: ImageDataset,
    *,
    batch_size: int,
    device: torch.device,
    shuffle: bool = False,
    num_workers: int | None = None,
    generator: torch.Generator | None = None,
) -> DataLoader[tuple[torch.Tensor, int]]:
    """A DataLoader of uint8 image batches, decoding in `decode_workers` processes unless told otherwise."""
    if num_workers is None:
        num_workers = decode_workers(device, image_count=len(dataset), batch_size=batch_size)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        num_workers=num_workers,
        generator=generator,
        pin_memory=device.type == "cuda",
        persistent_workers=False,
        multiprocessing_context=_loader_context() if num_workers else None,
    )


def to_model_input(images: torch.Tensor, device: torch.device) -> torch.Tensor:
    """uint8 [N, 3, H, W] to float 0..1 on `device`, channels-last (faster convolutions on CPU and GPU)."""
    batch = images.to(device, non_blocking=True).float().div_(255.0)
    return batch.contiguous(memory_format=torch.channels_last)


@dataclass(frozen=True)
class ExtractionResult:
    """Pooled features in input order; `extracted` images went through the backbone, `cache_hits` did not."""

    features: npt.NDArray[np.float32]
    flipped_features: npt.NDArray[np.float32] | None
    extracted: int
    cache_hits: int


def extract_features(
    *,
    backbone: Backbone,
    image_paths: Sequence[Path],
    cache_dir: Path | None,
    image_sha256s: Sequence[str] | None = None,
    include_flipped: bool = False,
    batch_size: int | None = None,
    num_workers: int | None = None,
    device: torch.device | None = None,
    progress: ProgressCallback | None = None,
    should_stop: StopCheck | None = None,
    precision: str = "float32",
    runtime: InferenceRuntime | None = None,
) -> ExtractionResult:
    """Features [N, feature_size] for the images, reusing and filling the cache under `cache_dir`.

    `image_sha256s` (content hashes the caller already knows) saves hashing the files again. With
    `include_flipped`, features of the horizontally flipped image are returned (and cached) as well.
    `num_workers`: on a CPU, how many processes decode and compute (default one per core, 0 or 1: all in
    this process); on a GPU, how many processes decode (default `decode_workers`).
    `precision`: a key of PRECISIONS. `runtime` (see `app.ml.runtime.prepare_runtime`): with a verified ONNX
    session, the images go through it, decoded ahead in threads; None or a PyTorch runtime: PyTorch. A verified
    export computes the same features (cosine >= MIN_COSINE), so both share one cache.
    Raises `TrainingCancelled` between batches when `should_stop()` turns true.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}; got {precision!r}")
    if image_sha256s is None:
        # Without a cache nothing is looked up by content: no need to read every file twice.
        image_sha256s = [file_sha256(path) if cache_dir is not None else "" for path in image_paths]
    if len(image_sha256s) != len(image_paths):
        raise ValueError("one sha256 per image path is needed")
    store = _FeatureStore(cache_dir, backbone, precision) if cache_dir is not None else None
    count = len(image_paths)
    features, missing = _cached_features(store, image_sha256s, backbone.feature_size, include_flipped)
    onnx = runtime.onnx if runtime is not None else None
    if missing:
        device = device or default_device()
        _run_backbone(
            backbone=backbone,
            paths=[image_paths[index] for index in missing],
            forward=_Forward(include_flipped=include_flipped, autocast=PRECISIONS[precision]),
            onnx=onnx,
            batch_size=batch_size or default_batch_size(device, onnx=onnx is not None),
            num_workers=num_workers,
            device=device,
            on_batch=lambda positions, batch_features: _keep_batch(
                features, [missing[p] for p in positions], batch_features, image_sha256s, store
            ),
            progress=progress,
            should_stop=should_stop,
            already_done=count - len(missing),
            total=count,
        )
    if progress is not None:
        progress(1.0, f"features ready for {count} images ({len(missing)} extracted)")
    return ExtractionResult(
        features=features[0],
        flipped_features=features[1] if include_flipped else None,
        extracted=len(missing),
        cache_hits=count - len(missing),
    )


def _cached_features(
    store: _FeatureStore | None, image_sha256s: Sequence[str], feature_size: int, include_flipped: bool
) -> tuple[npt.NDArray[np.float32], list[int]]:
    """Features [views, N, size] filled from the cache, and the indices of the images still to extract."""
    views = (False, True) if include_flipped else (False,)
    features = np.zeros((len(views), len(image_sha256s), feature_size), dtype=np.float32)
    missing: list[int] = []
    for index, sha in enumerate(image_sha256s):
        cached = [store.read(sha, flipped) for flipped in views] if store is not None else [None]
        if any(vector is None for vector in cached):
            missing.append(index)
            continue
        for view_index, vector in enumerate(cached):
            features[view_index, index] = vector
    return features, missing


def _keep_batch(
    features: npt.NDArray[np.float32],
    indices: list[int],
    batch_features: ViewFeatures,
    image_sha256s: Sequence[str],
    store: _FeatureStore | None,
) -> None:
    for view_index, view_features in enumerate(batch_features):
        features[view_index, indices] = view_features
        if store is not None:
            for row, index in enumerate(indices):
                store.write(image_sha256s[index], view_index == 1, view_features[row])


def _run_backbone(
    *,
    backbone: Backbone,
    paths: Sequence[Path],
    forward: _Forward,
    onnx: OnnxBackbone | None,
    batch_size: int,
    num_workers: int | None,
    device: torch.device,
    on_batch: Callable[[list[int], ViewFeatures], None],
    progress: ProgressCallback | None,
    should_stop: StopCheck | None,
    already_done: int,
    total: int,
) -> None:
    preprocessing = backbone.input_spec.preprocessing
    batches: Iterator[ViewFeatures]
    if onnx is not None:
        batches = _batches_onnx(onnx, paths, preprocessing, batch_size, forward.include_flipped, device)
    else:
        batches = _batches_torch(backbone, paths, forward, batch_size, num_workers, device)
    done = 0
    for outputs in batches:
        check_stop(should_stop)
        count = len(outputs[0])
        on_batch(list(range(done, done + count)), outputs)
        done += count
        if progress is not None:
            message = f"extracted features of {done} of {len(paths)} images"
            progress((already_done + done) / total, message)


def _batches_torch(
    backbone: Backbone,
    paths: Sequence[Path],
    forward: _Forward,
    batch_size: int,
    num_workers: int | None,
    device: torch.device,
) -> Iterator[ViewFeatures]:
    network = inference_network(backbone).to(device).to(memory_format=torch.channels_last)
    preprocessing = backbone.input_spec.preprocessing
    batch_count = math.ceil(len(paths) / batch_size)
    cpu_processes = min(available_cores(), batch_count) if num_workers is None else num_workers
    if device.type == "cpu" and cpu_processes > 1:
        return _batches_in_processes(network, paths, preprocessing, batch_size, forward, cpu_processes)
    dataset = ImageDataset(paths, preprocessing)
    loader = image_loader(dataset, batch_size=batch_size, device=device, num_workers=num_workers)
    return _batches_here(network, loader, device, forward)


def _batches_onnx(
    onnx: OnnxBackbone,
    paths: Sequence[Path],
    preprocessing: Preprocessing,
    batch_size: int,
    include_flipped: bool,
    device: torch.device,
) -> Iterator[ViewFeatures]:
    """ONNX Runtime on the batch in hand while threads decode the next ones."""

    def compute(images: npt.NDArray[np.uint8]) -> ViewFeatures:
        outputs = [onnx(images)]
        if include_flipped:
            outputs.append(onnx(np.ascontiguousarray(images[:, :, :, ::-1])))
        return outputs

    return overlapped(
        paths,
        decode=lambda path: decode_array(path, preprocessing),
        batch_size=batch_size,
        threads=decode_threads(available_cores(), on_gpu=device.type == "cuda"),
        compute=compute,
    )


@dataclass(frozen=True)
class _Forward:
    """One batch through the network: the plain view (and the flipped one), in the chosen arithmetic."""

    include_flipped: bool
    autocast: torch.dtype | None

    def __call__(self, network: nn.Module, images: torch.Tensor, device: torch.device) -> ViewFeatures:
        with (
            torch.inference_mode(),
            torch.autocast(device.type, dtype=self.autocast, enabled=self.autocast is not None),
        ):
            batch = to_model_input(images, device)
            outputs = [network(batch)]
            if self.include_flipped:
                outputs.append(network(torch.flip(batch, dims=[3])))
            return [output.float().cpu().numpy() for output in outputs]


def _batches_here(
    network: nn.Module,
    loader: DataLoader[tuple[torch.Tensor, int]],
    device: torch.device,
    forward: _Forward,
) -> Iterator[ViewFeatures]:
    """Model in this process on all cores (or the GPU); decoding in `decode_workers` processes."""
    with torch_threads(available_cores()):
        for images, _labels in loader:
            yield forward(network, images, device)


class _FeatureBatches(Dataset[ViewFeatures]):
    """Item i: features of the i-th batch of images, decoded and computed inside a worker process."""

    def __init__(
        self,
        network: nn.Module,
        paths: Sequence[Path],
        preprocessing: Preprocessing,
        batch_size: int,
        forward: _Forward,
    ) -> None:
        self.network = network
        self.paths = list(paths)
        self.preprocessing = preprocessing
        self.batch_size = batch_size
        self.forward = forward

    def __len__(self) -> int:
        return math.ceil(len(self.paths) / self.batch_size)

    def __getitem__(self, index: int) -> ViewFeatures:
        chunk = self.paths[index * self.batch_size : (index + 1) * self.batch_size]
        images = torch.stack([decode_image(path, self.preprocessing) for path in chunk])
        return self.forward(self.network, images, torch.device("cpu"))


def _batches_in_processes(
    network: nn.Module,
    paths: Sequence[Path],
    preprocessing: Preprocessing,
    batch_size: int,
    forward: _Forward,
    processes: int,
) -> Iterator[ViewFeatures]:
    """On a CPU, one single-threaded process per core each decodes and runs whole batches.

    Measured on 2 cores, this beat one process running the model on 2 threads (with or without decoding
    workers) by 2x while other programs kept the cores busy, because threads of one operation wait for
    each other whenever one of them is descheduled; separate processes never wait.
    """
    dataset = _FeatureBatches(network, paths, preprocessing, batch_size, forward)
    # batch_size=None: each item already is a batch; DataLoader workers run torch on one thread each.
    yield from DataLoader(dataset, batch_size=None, num_workers=processes, multiprocessing_context=_loader_context())


class _FeatureStore:
    """One .npy per (image, view) under a directory named after backbone, weights, preprocessing and (other than
    float32, whose folders keep their original names) the precision."""

    def __init__(self, cache_dir: Path, backbone: Backbone, precision: str) -> None:
        safe_name = "".join(char if char.isalnum() or char in "-_" else "_" for char in backbone.name)
        prep_id = backbone.input_spec.preprocessing.preprocessing_id
        suffix = "" if precision == "float32" else f"-{precision}"
        self.root = cache_dir / f"{safe_name}-{backbone.weights_sha256[:16]}-{prep_id}{suffix}"
        self.feature_size = backbone.feature_size

    def _path(self, image_sha256: str, flipped: bool) -> Path:
        suffix = ".flip.npy" if flipped else ".npy"
        return self.root / image_sha256[:2] / f"{image_sha256}{suffix}"

    def read(self, image_sha256: str, flipped: bool) -> npt.NDArray[np.float32] | None:
        path = self._path(image_sha256, flipped)
        try:
            vector = np.load(path, allow_pickle=False)
        except (OSError, ValueError, EOFError):  # absent or damaged: extract again
            return None
        if vector.shape != (self.feature_size,) or vector.dtype != np.float32:
            return None
        return np.asarray(vector, dtype=np.float32)

    def write(self, image_sha256: str, flipped: bool, vector: npt.NDArray[np.float32]) -> None:
        path = self._path(image_sha256, flipped)
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".tmp", delete=False) as temporary:
            np.save(temporary, np.ascontiguousarray(vector, dtype=np.float32), allow_pickle=False)
        os.replace(temporary.name, path)
