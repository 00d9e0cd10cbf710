"""Training runs: a linear head on cached features, or finetuning/full training on images.

Three modes, after the seed's advice to reuse a pre-trained model when data is scarce:
`linear` freezes the backbone and trains only the last layer (on cached features: seconds), `finetune`
also trains the backbone's last blocks, `full` trains everything. Every run keeps the weights of its best
dev-loss epoch, stops early after `patience` epochs without improvement, streams one `EpochRecord` per epoch,
whose train and dev figures are both measured after the epoch, in eval mode, on un-augmented images: exactly how
the finished run's subset table measures the kept model, so a curve's point and the table agree (a running
average over training-mode batches did not: batch-norm statistics lag the weights for a few finetuning steps),
and can hand a `TrainingState` to the caller after each epoch so a crashed worker resumes where it stopped.
Seeding is per epoch, so a resumed run on CPU ends exactly where an uninterrupted one would.
"""

from __future__ import annotations

import copy
import json
import math
import os
import tempfile
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch import nn
from torch.nn import functional

from app.ml.backbones import Backbone, ImageClassifier, make_checkpoint, new_head, with_weights
from app.ml.features import (
    ImageDataset,
    ProgressCallback,
    StopCheck,
    available_cores,
    check_stop,
    default_device,
    extract_features,
    image_loader,
    to_model_input,
    torch_threads,
)
from app.ml.features import TrainingCancelled as TrainingCancelled  # re-exported for the job layer
from app.ml.modes import TrainingMode

Batches = Iterable[tuple[torch.Tensor, torch.Tensor]]


@dataclass(frozen=True)
class TrainingConfig:
    mode: TrainingMode = TrainingMode.LINEAR
    epochs: int = 50
    learning_rate: float = 3e-3
    batch_size: int = 32
    weight_decay: float = 1e-4
    seed: int = 0
    patience: int = 8
    finetune_blocks: int = 2  # how many of the backbone's last stages finetune mode trains

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or self.patience < 1 or self.finetune_blocks < 1:
            raise ValueError("epochs, batch_size, patience and finetune_blocks must be at least 1")
        if not (self.learning_rate > 0 and self.weight_decay >= 0):
            raise ValueError("learning_rate must be positive and weight_decay not negative")


def default_config(mode: TrainingMode, *, seed: int = 0) -> TrainingConfig:
    """Settings that work for each mode: a head alone takes a high rate; pre-trained layers a gentle one."""
    if mode is TrainingMode.LINEAR:
        return TrainingConfig(mode=mode, seed=seed)
    if mode is TrainingMode.FINETUNE:
        return TrainingConfig(mode=mode, epochs=10, learning_rate=1e-4, batch_size=16, patience=3, seed=seed)
    return TrainingConfig(mode=mode, epochs=20, learning_rate=1e-3, batch_size=32, patience=5, seed=seed)


@dataclass(frozen=True)
class EpochRecord:
    epoch: int  # 1-based
    train_loss: float
    dev_loss: float
    train_accuracy: float
    dev_accuracy: float


@dataclass(frozen=True)
class TrainingState:
    """Everything needed to continue a run after `epochs_completed` epochs (see `to_dict`)."""

    epochs_completed: int
    model_state: dict[str, torch.Tensor]
    optimizer_state: dict[str, Any]
    best_state: dict[str, torch.Tensor]
    best_epoch: int
    best_dev_loss: float
    epochs_without_improvement: int
    history: tuple[EpochRecord, ...]

    def to_dict(self) -> dict[str, Any]:
        """Plain containers, tensors and numbers only: `torch.save` it, `torch.load(weights_only=True)` it."""
        return {
            "epochs_completed": self.epochs_completed,
            "model_state": self.model_state,
            "optimizer_state": self.optimizer_state,
            "best_state": self.best_state,
            "best_epoch": self.best_epoch,
            "best_dev_loss": self.best_dev_loss,
            "epochs_without_improvement": self.epochs_without_improvement,
            "history": [vars(record) for record in self.history],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrainingState:
        return cls(
            epochs_completed=int(data["epochs_completed"]),
            model_state=dict(data["model_state"]),
            optimizer_state=dict(data["optimizer_state"]),
            best_state=dict(data["best_state"]),
            best_epoch=int(data["best_epoch"]),
            best_dev_loss=float(data["best_dev_loss"]),
            epochs_without_improvement=int(data["epochs_without_improvement"]),
            history=tuple(EpochRecord(**record) for record in data["history"]),
        )


@dataclass(frozen=True)
class TrainingResult:
    """The best epoch's weights: the head, and the backbone when it was trained (None in linear mode)."""

    head_state: dict[str, torch.Tensor]
    backbone_state: dict[str, torch.Tensor] | None
    best_epoch: int
    history: tuple[EpochRecord, ...]
    stopped_early: bool


@dataclass(frozen=True)
class _Callbacks:
    progress: ProgressCallback | None
    should_stop: StopCheck | None
    on_epoch: Callable[[EpochRecord], None] | None
    on_epoch_end: Callable[[TrainingState], None] | None


def train_linear_head(
    *,
    train_features: npt.ArrayLike,
    train_labels: npt.ArrayLike,
    dev_features: npt.ArrayLike,
    dev_labels: npt.ArrayLike,
    num_classes: int,
    config: TrainingConfig,
    train_flipped_features: npt.ArrayLike | None = None,
    initial_head_state: Mapping[str, torch.Tensor] | None = None,
    resume: TrainingState | None = None,
    device: torch.device | None = None,
    progress: ProgressCallback | None = None,
    should_stop: StopCheck | None = None,
    on_epoch: Callable[[EpochRecord], None] | None = None,
    on_epoch_end: Callable[[TrainingState], None] | None = None,
) -> TrainingResult:
    """Train a linear layer on pooled features [N, D] (the backbone stays frozen).

    `train_flipped_features`, the features of the mirrored training images, doubles as augmentation: each
    epoch every training image is seen in one of its two views at random.
    """
    device = device or default_device()
    views = [_float_tensor(train_features)]
    if train_flipped_features is not None:
        views.append(_float_tensor(train_flipped_features))
        if views[1].shape != views[0].shape:
            raise ValueError("flipped features must have the same shape as the training features")
    train_views = torch.stack(views).to(device)
    train_y = _label_tensor(train_labels, num_classes, len(views[0])).to(device)
    dev_x = _float_tensor(dev_features).to(device)
    dev_y = _label_tensor(dev_labels, num_classes, len(dev_x)).to(device)
    if dev_x.shape[1:] != views[0].shape[1:]:
        raise ValueError("training and dev features must have the same feature size")
    head = _new_head(views[0].shape[1], num_classes, config.seed, initial_head_state).to(device)
    sample_count = len(train_y)

    def train_batches(generator: torch.Generator) -> Batches:
        order = torch.randperm(sample_count, generator=generator).to(device)
        chosen_views = torch.randint(len(views), (sample_count,), generator=generator).to(device)
        for start in range(0, sample_count, config.batch_size):
            rows = order[start : start + config.batch_size]
            yield train_views[chosen_views[rows], rows], train_y[rows]

    def dev_batches() -> Batches:
        return [(dev_x, dev_y)]

    def train_eval_batches() -> Batches:
        return [(train_views[0], train_y)]  # the plain view, as the subset table scores it

    best_state, best_epoch, history, stopped_early = _fit(
        model=head,
        train_batches=train_batches,
        batches_per_epoch=math.ceil(sample_count / config.batch_size),
        dev_batches=dev_batches,
        train_eval_batches=train_eval_batches,
        set_train_mode=head.train,
        # Batches of a few feature rows are far too small to share out: extra threads only wait for each
        # other (measured 15x slower on 2 busy cores than one thread).
        cpu_threads=1,
        config=config,
        resume=resume,
        callbacks=_Callbacks(progress, should_stop, on_epoch, on_epoch_end),
    )
    return TrainingResult(best_state, None, best_epoch, history, stopped_early)


def train_on_images(
    *,
    backbone: Backbone,
    train_paths: Sequence[Path],
    train_labels: npt.ArrayLike,
    dev_paths: Sequence[Path],
    dev_labels: npt.ArrayLike,
    num_classes: int,
    config: TrainingConfig,
    initial_head_state: Mapping[str, torch.Tensor] | None = None,
    resume: TrainingState | None = None,
    device: torch.device | None = None,
    num_workers: int | None = None,
    progress: ProgressCallback | None = None,
    should_stop: StopCheck | None = None,
    on_epoch: Callable[[EpochRecord], None] | None = None,
    on_epoch_end: Callable[[TrainingState], None] | None = None,
) -> TrainingResult:
    """Finetune (last `config.finetune_blocks` stages and head) or fully train on images, with random crops
    and flips for the training images. The given backbone is not modified."""
    if config.mode is TrainingMode.LINEAR:
        raise ValueError("linear mode trains on cached features: use extract_features and train_linear_head")
    device = device or default_device()
    preprocessing = backbone.input_spec.preprocessing
    train_y = _label_tensor(train_labels, num_classes, len(train_paths))
    dev_y = _label_tensor(dev_labels, num_classes, len(dev_paths))
    own_backbone = replace(backbone, features=copy.deepcopy(backbone.features))
    head = _new_head(backbone.feature_size, num_classes, config.seed, initial_head_state)
    classifier = ImageClassifier(own_backbone, head).to(device).to(memory_format=torch.channels_last)
    trainable_stages = _trainable_stages(own_backbone, config)
    for parameter in classifier.backbone.parameters():
        parameter.requires_grad_(trainable_stages is None)
    for module in trainable_stages or []:
        module.requires_grad_(True)

    def set_train_mode() -> None:
        classifier.train()
        if trainable_stages is not None:
            # Finetuning keeps every batch-norm layer in inference mode (its affine weights still learn), as
            # Keras advises: running statistics updated by a few small batches lag the weights, so the model
            # scored in eval mode was not the one that trained (train accuracy 1.0 in training mode, 82% in eval).
            classifier.backbone.eval()
            for module in trainable_stages:
                module.train()
                for layer in module.modules():
                    if isinstance(layer, (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)):
                        layer.eval()

    train_set = ImageDataset(train_paths, preprocessing, labels=train_y.tolist(), augment=True)
    dev_loader, train_eval_loader = (
        image_loader(
            ImageDataset(paths, preprocessing, labels=subset_labels.tolist()),
            batch_size=config.batch_size,
            device=device,
            num_workers=num_workers,
        )
        for paths, subset_labels in ((dev_paths, dev_y), (train_paths, train_y))
    )

    def train_batches(generator: torch.Generator) -> Batches:
        shuffled = image_loader(
            train_set,
            batch_size=config.batch_size,
            device=device,
            shuffle=True,
            num_workers=num_workers,
            generator=generator,
        )
        for images, labels in shuffled:
            yield to_model_input(images, device), labels.to(device)

    def dev_batches() -> Batches:
        return _on_device(dev_loader, device)

    def train_eval_batches() -> Batches:
        return _on_device(train_eval_loader, device)

    best_state, best_epoch, history, stopped_early = _fit(
        model=classifier,
        train_batches=train_batches,
        batches_per_epoch=math.ceil(len(train_paths) / config.batch_size),
        dev_batches=dev_batches,
        train_eval_batches=train_eval_batches,
        set_train_mode=set_train_mode,
        cpu_threads=available_cores(),
        config=config,
        resume=resume,
        callbacks=_Callbacks(progress, should_stop, on_epoch, on_epoch_end),
    )
    return TrainingResult(
        head_state=_substate(best_state, "head."),
        backbone_state=_substate(best_state, "backbone."),
        best_epoch=best_epoch,
        history=history,
        stopped_early=stopped_early,
    )


def _on_device(loader: Iterable[tuple[torch.Tensor, torch.Tensor]], device: torch.device) -> Batches:
    for images, labels in loader:
        yield to_model_input(images, device), labels.to(device)


def _trainable_stages(backbone: Backbone, config: TrainingConfig) -> list[nn.Module] | None:
    """The modules finetune mode trains; None in full mode (everything trains)."""
    if config.mode is TrainingMode.FULL:
        return None
    stages = backbone.stages[-config.finetune_blocks :]
    return [backbone.features.get_submodule(path) for stage in stages for path in stage]


def _fit(
    *,
    model: nn.Module,
    train_batches: Callable[[torch.Generator], Batches],
    batches_per_epoch: int,
    dev_batches: Callable[[], Batches],
    train_eval_batches: Callable[[], Batches],
    set_train_mode: Callable[[], object],
    cpu_threads: int,
    config: TrainingConfig,
    resume: TrainingState | None,
    callbacks: _Callbacks,
) -> tuple[dict[str, torch.Tensor], int, tuple[EpochRecord, ...], bool]:
    """The epoch loop shared by both kinds of run: (best state, best epoch, history, stopped early)."""
    parameters = [parameter for parameter in model.parameters() if parameter.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=config.learning_rate, weight_decay=config.weight_decay)
    if resume is not None:
        model.load_state_dict(resume.model_state)
        optimizer.load_state_dict(resume.optimizer_state)
        state = resume
    else:
        state = TrainingState(0, {}, {}, _state_copy(model), 0, math.inf, 0, ())
    while state.epochs_completed < config.epochs and state.epochs_without_improvement < config.patience:
        epoch = state.epochs_completed + 1
        # Seeding per epoch makes a resumed run draw the same shuffles and augmentations as an unbroken one.
        epoch_seed = config.seed * 1_000_003 + epoch
        torch.manual_seed(epoch_seed)
        generator = torch.Generator().manual_seed(epoch_seed)
        set_train_mode()
        with torch_threads(cpu_threads):
            _train_one_epoch(model, optimizer, train_batches(generator), epoch, batches_per_epoch, config, callbacks)
            # The curve's train point is the model as it stands, scored like the subset table scores it.
            train_loss, train_accuracy = _evaluate(model, train_eval_batches())
            dev_loss, dev_accuracy = _evaluate(model, dev_batches())
        record = EpochRecord(epoch, train_loss, dev_loss, train_accuracy, dev_accuracy)
        improved = dev_loss < state.best_dev_loss
        resumable = callbacks.on_epoch_end is not None  # copies of the weights only when someone keeps them
        state = TrainingState(
            epochs_completed=epoch,
            model_state=_state_copy(model) if resumable else {},
            optimizer_state=copy.deepcopy(optimizer.state_dict()) if resumable else {},
            best_state=_state_copy(model) if improved else state.best_state,
            best_epoch=epoch if improved else state.best_epoch,
            best_dev_loss=dev_loss if improved else state.best_dev_loss,
            epochs_without_improvement=0 if improved else state.epochs_without_improvement + 1,
            history=(*state.history, record),
        )
        if callbacks.on_epoch is not None:
            callbacks.on_epoch(record)
        if callbacks.on_epoch_end is not None:
            callbacks.on_epoch_end(state)
    stopped_early = state.epochs_completed < config.epochs
    if callbacks.progress is not None:
        callbacks.progress(1.0, f"best dev loss {state.best_dev_loss:.4f} at epoch {state.best_epoch}")
    return state.best_state, state.best_epoch, state.history, stopped_early


def _train_one_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    batches: Batches,
    epoch: int,
    batches_per_epoch: int,
    config: TrainingConfig,
    callbacks: _Callbacks,
) -> None:
    for batch_index, (inputs, labels) in enumerate(batches):
        check_stop(callbacks.should_stop)
        loss = functional.cross_entropy(model(inputs), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if callbacks.progress is not None:
            fraction = (epoch - 1 + (batch_index + 1) / batches_per_epoch) / config.epochs
            callbacks.progress(min(fraction, 1.0), f"epoch {epoch} of {config.epochs}")


def _evaluate(model: nn.Module, batches: Batches) -> tuple[float, float]:
    model.eval()
    loss_sum, correct, seen = 0.0, 0, 0
    with torch.inference_mode():
        for inputs, labels in batches:
            logits = model(inputs)
            loss_sum += float(functional.cross_entropy(logits, labels, reduction="sum"))
            correct += int((logits.argmax(1) == labels).sum())
            seen += len(labels)
    return loss_sum / max(seen, 1), correct / max(seen, 1)


def predict_from_features(
    *, head_state: Mapping[str, torch.Tensor], features: npt.ArrayLike, device: torch.device | None = None
) -> npt.NDArray[np.float32]:
    """Class probabilities [N, num_classes] of a linear head over pooled features."""
    weight, bias = head_state["weight"], head_state["bias"]
    inputs = _float_tensor(features)
    device = device or default_device()
    with torch.inference_mode():
        logits = functional.linear(inputs.to(device), weight.to(device), bias.to(device))
        return logits.softmax(dim=1).float().cpu().numpy()


def predict_images(
    *,
    backbone: Backbone,
    head_state: Mapping[str, torch.Tensor],
    image_paths: Sequence[Path],
    cache_dir: Path | None = None,
    image_sha256s: Sequence[str] | None = None,
    result: TrainingResult | None = None,
    device: torch.device | None = None,
    progress: ProgressCallback | None = None,
    should_stop: StopCheck | None = None,
) -> npt.NDArray[np.float32]:
    """Class probabilities for images; with a finetuned `result`, its backbone weights are used."""
    if result is not None and result.backbone_state is not None:
        backbone = with_weights(backbone, result.backbone_state)
    extraction = extract_features(
        backbone=backbone,
        image_paths=image_paths,
        cache_dir=cache_dir,
        image_sha256s=image_sha256s,
        device=device,
        progress=progress,
        should_stop=should_stop,
    )
    return predict_from_features(head_state=head_state, features=extraction.features, device=device)


@dataclass(frozen=True)
class ExportedModel:
    checkpoint_path: Path  # Errorbook checkpoint dict (reusable as a `run:<id>` backbone)
    labels_path: Path  # JSON {"0": "cat", ...}
    torchscript_path: Path  # takes float RGB [N, 3, crop, crop] in 0..1, returns logits


def export_model(
    *, backbone: Backbone, head_state: Mapping[str, torch.Tensor], label_names: Sequence[str], directory: Path
) -> ExportedModel:
    """Write the checkpoint, the label map and a TorchScript trace of backbone + head into `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    head = nn.Linear(backbone.feature_size, len(label_names))
    head.load_state_dict(head_state)
    exported = ExportedModel(
        checkpoint_path=directory / "model.pt",
        labels_path=directory / "labels.json",
        torchscript_path=directory / "model.torchscript.pt",
    )
    checkpoint = make_checkpoint(backbone=backbone, head_state=head.state_dict(), label_names=label_names)
    _write_atomically(exported.checkpoint_path, lambda path: torch.save(checkpoint, path))
    labels = json.dumps({str(index): name for index, name in enumerate(label_names)}, ensure_ascii=False)
    _write_atomically(exported.labels_path, lambda path: path.write_text(labels, encoding="utf-8"))
    cpu_backbone = replace(backbone, features=copy.deepcopy(backbone.features).cpu().float())
    classifier = ImageClassifier(cpu_backbone, head).eval()
    crop = backbone.input_spec.preprocessing.crop_size
    with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated upstream but still supported
        traced = torch.jit.trace(classifier, torch.rand(1, 3, crop, crop), check_trace=False)
        _write_atomically(exported.torchscript_path, lambda path: torch.jit.save(traced, str(path)))
    return exported


def _write_atomically(path: Path, write: Callable[[Path], object]) -> None:
    descriptor, temporary_name = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    os.close(descriptor)
    temporary = Path(temporary_name)
    try:
        write(temporary)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def _new_head(
    feature_size: int, num_classes: int, seed: int, initial_state: Mapping[str, torch.Tensor] | None
) -> nn.Linear:
    head = new_head(feature_size, num_classes, seed=seed)
    if initial_state is not None:
        head.load_state_dict(initial_state)
    return head


def _float_tensor(values: npt.ArrayLike) -> torch.Tensor:
    array = np.asarray(values, dtype=np.float32)
    if array.ndim != 2:
        raise ValueError(f"features must be a 2-D array [images, feature_size], got shape {array.shape}")
    return torch.from_numpy(np.ascontiguousarray(array))


def _label_tensor(labels: npt.ArrayLike, num_classes: int, expected_count: int) -> torch.Tensor:
    array = np.asarray(labels)
    if array.shape != (expected_count,):
        raise ValueError(f"expected {expected_count} labels, got shape {array.shape}")
    if expected_count == 0:
        raise ValueError("training and dev sets must not be empty")
    if not np.issubdtype(array.dtype, np.integer) or array.min() < 0 or array.max() >= num_classes:
        raise ValueError(f"labels must be class indices in 0..{num_classes - 1}")
    return torch.from_numpy(array.astype(np.int64))


def _state_copy(model: nn.Module) -> dict[str, torch.Tensor]:
    # On the CPU: checkpoints and exported models must load on machines without a GPU.
    return {key: value.detach().to("cpu", copy=True) for key, value in model.state_dict().items()}


def _substate(state: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {key.removeprefix(prefix): value for key, value in state.items() if key.startswith(prefix)}
