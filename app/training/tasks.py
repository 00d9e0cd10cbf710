"""The training job: features (cached), head or finetune training with early stopping, predictions for every
subset, metrics and the diagnosis, an exported model. torch is imported here, once per runner process.

`train_run` reads as its steps: load the run's inputs, load the backbone, fit, score (pure, app/ml/run_scores),
export, store. Progress is reported between transactions, never inside one (SQLite has one writer)."""

from __future__ import annotations

import io
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from app.core.storage import BlobStore
from app.jobs.context import JobCancelled, JobContext, TaskError
from app.jobs.registry import task
from app.ml.modes import TrainingMode
from app.ml.run_scores import RunScores, prediction_rows, score_run
from app.storage.backends import blob_store
from app.training import inference, repository, service
from app.training import shards as sharding
from app.training.states import RunStatus

SUBSET_ORDER = ("train", "train_dev", "dev", "test")
CHECKPOINT = "training_state.pt"  # stored under jobs/<job id>/, so a retry on any host resumes from the last epoch


def checkpoint_key(job_id: int) -> str:
    return f"jobs/{job_id}/{CHECKPOINT}"


@dataclass
class RunInputs:
    """The run's images per subset, with labels as class indices into `label_names`."""

    run_id: int
    dataset_id: int
    config: dict[str, Any]
    label_names: list[str]
    class_label_ids: list[int]  # class index -> label id
    images: dict[str, list[tuple[int, int]]] = field(default_factory=dict)  # subset -> (image_id, label_id)
    paths: dict[str, list[Path]] = field(default_factory=dict)
    shas: dict[str, list[str]] = field(default_factory=dict)
    labels: dict[str, np.ndarray] = field(default_factory=dict)  # class indices
    sharded: sharding.Gathered | None = None  # features extracted by shard jobs (linear runs over many images)


@dataclass
class Fitted:
    result: Any  # app.ml.training.TrainingResult
    probabilities: dict[str, np.ndarray]
    backbone: Any  # the trained one (finetuned weights applied)


@dataclass
class Timings:
    started: float = field(default_factory=time.perf_counter)
    values: dict[str, Any] = field(default_factory=dict)

    def rounded(self) -> dict[str, Any]:
        return {k: round(v, 3) if isinstance(v, float) else v for k, v in self.values.items()}


def _scaled(ctx: JobContext, low: float, high: float) -> Any:
    def report(fraction: float, message: str = "") -> None:
        ctx.progress(low + (high - low) * max(0.0, min(1.0, fraction)), message or None)

    return report


def _runtime(ctx: JobContext, mode: TrainingMode, backbone: Any, probe: Any) -> Any:
    """Linear runs score through the worker's runtime; finetuned backbones train and score in PyTorch (the pool
    scoring job takes its runtime from the same function)."""
    return inference.scoring_runtime(ctx.settings, mode.value, backbone, probe=probe)


def _start(ctx: JobContext, run_id: int) -> tuple[Any, list[Any], dict[int, str]] | None:
    """Mark the run running and read what it trains on; None when an earlier attempt already finished it."""
    with ctx.transaction() as session:
        run = service.get_run(session, run_id=run_id)
        if run.status == RunStatus.SUCCEEDED:
            return None
        run.status = RunStatus.RUNNING
        rows = repository.split_images(session, run.split_id)
        names_by_id = repository.label_names(session, run.dataset_id)
        return (run.dataset_id, dict(run.config)), rows, names_by_id


def load_inputs(ctx: JobContext, run_id: int) -> RunInputs | None:
    started = _start(ctx, run_id)
    if started is None:
        return None
    (dataset_id, config), rows, names_by_id = started
    by_subset: dict[str, list[tuple[int, str, int]]] = {}
    for image_id, subset, sha, label_id in rows:
        by_subset.setdefault(subset, []).append((image_id, sha, label_id))
    if not by_subset.get("train") or not by_subset.get("dev"):
        raise TaskError("the split has no train or no dev images left (all excluded?)")
    class_label_ids = sorted({label_id for *_, label_id in rows}, key=lambda i: names_by_id[i])
    if len(class_label_ids) < 2:
        raise TaskError("training needs at least two classes in the split")
    inputs = RunInputs(run_id, dataset_id, config, [names_by_id[i] for i in class_label_ids], class_label_ids)
    _add_images(inputs, by_subset, blob_store(ctx.settings))
    return inputs


def _add_images(inputs: RunInputs, by_subset: dict[str, list[tuple[int, str, int]]], blobs: BlobStore) -> None:
    index_of = {label_id: k for k, label_id in enumerate(inputs.class_label_ids)}
    for subset, items in by_subset.items():
        inputs.images[subset] = [(image_id, label_id) for image_id, _, label_id in items]
        inputs.paths[subset] = [blobs.path(sha) for _, sha, _ in items]
        inputs.shas[subset] = [sha for _, sha, _ in items]
        inputs.labels[subset] = np.array([index_of[label_id] for *_, label_id in items], dtype=np.int64)


def load_backbone(ctx: JobContext, inputs: RunInputs) -> tuple[Any, Any]:
    """The backbone to train on and, when it continues an earlier run with the same classes, that run's head."""
    import torch

    from app.ml import backbones as bb

    ctx.progress(0.02, "loading the backbone")
    torch.set_num_threads(ctx.settings.torch_threads)
    name = str(inputs.config["backbone"])
    seed = int(inputs.config["seed"])
    torch_home = Path(os.environ["TORCH_HOME"]) if os.environ.get("TORCH_HOME") else None
    try:
        if not name.startswith("run:"):
            return bb.load_backbone(name, torch_home=torch_home, seed=seed), None
        with ctx.transaction() as session:
            source = service.get_run(session, run_id=int(name[4:]))
            source_path = service.run_file(blob_store(ctx.settings).artefacts, source, "model.pt")
        if source_path is None:
            raise TaskError(f"the model files of run {source.id} are missing from the store")
        loaded = bb.model_from_checkpoint(source_path, label_names=inputs.label_names, seed=seed)
    except (bb.BackboneUnavailable, bb.IncompatibleCheckpoint) as error:
        raise TaskError(str(error)) from error
    return loaded.backbone, None if loaded.head_replaced else loaded.head.state_dict()


def _training_config(config: dict[str, Any]) -> Any:
    from app.ml import training

    return training.TrainingConfig(
        mode=TrainingMode(config["mode"]),
        epochs=int(config["epochs"]),
        learning_rate=float(config["lr"]),
        batch_size=int(config["batch_size"]),
        weight_decay=float(config["weight_decay"]),
        seed=int(config["seed"]),
        patience=int(config.get("patience", 8)),
        finetune_blocks=int(config.get("finetune_blocks", 2)),
    )


class _EpochLog:
    """Per-epoch history written to the run as it trains, and a checkpoint after each epoch (in the store, so a
    retry after a worker crash resumes from the last finished one on whichever host takes it)."""

    def __init__(self, ctx: JobContext, run_id: int, epochs: int) -> None:
        self.ctx, self.run_id, self.epochs = ctx, run_id, epochs
        self.artefacts = blob_store(ctx.settings).artefacts
        self.key = checkpoint_key(ctx.job_id)
        self.history: list[dict[str, float]] = []

    def resume(self) -> Any:
        import torch

        from app.ml import training

        try:
            stored = self.artefacts.get_bytes(self.key)
        except FileNotFoundError:
            return None
        loaded = torch.load(io.BytesIO(stored), map_location="cpu", weights_only=True)
        state = training.TrainingState.from_dict(loaded)
        self.history = [dict(vars(r)) for r in state.history]
        return state

    def on_epoch(self, record: Any) -> None:
        self.history.append(dict(vars(record)))
        with self.ctx.transaction() as session:
            service.get_run(session, run_id=self.run_id).history = list(self.history)
        self.ctx.progress(
            0.6 + 0.3 * record.epoch / self.epochs,
            f"epoch {record.epoch}: dev loss {record.dev_loss:.3f}, dev accuracy {record.dev_accuracy:.1%}",
        )

    def on_epoch_end(self, state: Any) -> None:
        import torch

        # Written whole in this host's scratch, then stored under its key (replacing the last one at once).
        tmp = self.ctx.work_dir / f"{CHECKPOINT}.partial"
        torch.save(state.to_dict(), tmp)
        self.artefacts.put_file(self.key, tmp)


def _extract_features(
    ctx: JobContext, inputs: RunInputs, backbone: Any, runtime: Any, timings: Timings
) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
    """Features of every subset (through the cache), plus the flipped train features for augmentation."""
    from app.ml import features as feats

    timings.values["feature_precision"] = ctx.settings.feature_precision
    if inputs.sharded is not None:
        timings.values.update(inputs.sharded.timings)
        return inputs.sharded.features, inputs.sharded.flipped.get("train")
    t0 = time.perf_counter()
    total = sum(len(p) for p in inputs.paths.values())
    done = 0
    features: dict[str, np.ndarray] = {}
    flipped = None
    for subset in (s for s in SUBSET_ORDER if s in inputs.paths):
        count = len(inputs.paths[subset])
        result = feats.extract_features(
            backbone=backbone,
            image_paths=inputs.paths[subset],
            image_sha256s=inputs.shas[subset],
            cache_dir=ctx.settings.cache_dir / "features",
            include_flipped=subset == "train",
            progress=_scaled(ctx, 0.05 + 0.5 * done / total, 0.05 + 0.5 * (done + count) / total),
            should_stop=ctx.should_stop,
            precision=ctx.settings.feature_precision,
            runtime=runtime,
        )
        features[subset] = result.features
        if subset == "train":
            flipped = result.flipped_features
        timings.values[f"extracted_{subset}"] = result.extracted
        done += count
    timings.values["features_s"] = time.perf_counter() - t0
    return features, flipped


def _fit_linear(ctx: JobContext, inputs: RunInputs, backbone: Any, head: Any, runtime: Any, timings: Timings) -> Fitted:
    from app.ml import training

    features, flipped = _extract_features(ctx, inputs, backbone, runtime, timings)
    config = _training_config(inputs.config)
    log = _EpochLog(ctx, inputs.run_id, config.epochs)
    resume = log.resume()
    t0 = time.perf_counter()
    result = training.train_linear_head(
        train_features=features["train"],
        train_labels=inputs.labels["train"],
        dev_features=features["dev"],
        dev_labels=inputs.labels["dev"],
        num_classes=len(inputs.label_names),
        config=config,
        train_flipped_features=flipped,
        initial_head_state=head,
        resume=resume,
        should_stop=ctx.should_stop,
        on_epoch=log.on_epoch,
        on_epoch_end=log.on_epoch_end,
    )
    timings.values["training_s"] = time.perf_counter() - t0
    probabilities = {
        s: training.predict_from_features(head_state=result.head_state, features=f) for s, f in features.items()
    }
    return Fitted(result, probabilities, backbone)


def _fit_images(ctx: JobContext, inputs: RunInputs, backbone: Any, head: Any, timings: Timings) -> Fitted:
    from app.ml import backbones as bb
    from app.ml import training

    config = _training_config(inputs.config)
    log = _EpochLog(ctx, inputs.run_id, config.epochs)
    resume = log.resume()
    t0 = time.perf_counter()
    result = training.train_on_images(
        backbone=backbone,
        train_paths=inputs.paths["train"],
        train_labels=inputs.labels["train"],
        dev_paths=inputs.paths["dev"],
        dev_labels=inputs.labels["dev"],
        num_classes=len(inputs.label_names),
        config=config,
        initial_head_state=head,
        resume=resume,
        progress=_scaled(ctx, 0.05, 0.9),
        should_stop=ctx.should_stop,
        on_epoch=log.on_epoch,
        on_epoch_end=log.on_epoch_end,
    )
    timings.values["training_s"] = time.perf_counter() - t0
    trained = bb.with_weights(backbone, result.backbone_state) if result.backbone_state else backbone
    probabilities = {
        s: training.predict_images(
            backbone=trained, head_state=result.head_state, image_paths=paths, should_stop=ctx.should_stop
        )
        for s, paths in inputs.paths.items()
    }
    return Fitted(result, probabilities, trained)


def fit(ctx: JobContext, inputs: RunInputs, backbone: Any, head: Any, probe: Any, timings: Timings) -> Fitted:
    """Train the head (linear: on cached features) or the network (finetune/full), then predict every subset."""
    from app.ml.features import TrainingCancelled

    mode = TrainingMode(inputs.config["mode"])
    runtime = _runtime(ctx, mode, backbone, probe)
    timings.values["inference"] = runtime.report.to_dict()
    timings.values["model_input"] = backbone.input_spec.to_dict()
    try:
        if mode is TrainingMode.LINEAR:
            return _fit_linear(ctx, inputs, backbone, head, runtime, timings)
        return _fit_images(ctx, inputs, backbone, head, timings)
    except TrainingCancelled as cancelled:
        raise JobCancelled(str(cancelled)) from cancelled


def export(ctx: JobContext, inputs: RunInputs, fitted: Fitted, probe: Any, timings: Timings) -> str:
    """Write the model files in this host's scratch, then store each under runs/<run id>/; returns that prefix
    (the run records it only after every file is stored)."""
    from app.ml import training

    out_dir = ctx.work_dir / "export"
    head_state, names = fitted.result.head_state, inputs.label_names
    training.export_model(backbone=fitted.backbone, head_state=head_state, label_names=names, directory=out_dir)
    timings.values["model_onnx"] = inference.export_run_onnx(
        settings=ctx.settings,
        backbone=fitted.backbone,
        head_state=head_state,
        label_names=names,
        directory=out_dir,
        probe=probe,
    )
    artefacts = blob_store(ctx.settings).artefacts
    for path in sorted(out_dir.iterdir()):
        if path.is_file() and path.name in service.RUN_FILES:
            artefacts.put_file(service.run_key(inputs.run_id, path.name), path)
    return service.run_prefix(inputs.run_id)


def store(
    ctx: JobContext, inputs: RunInputs, fitted: Fitted, scores: RunScores, model_path: str, timings: Timings
) -> None:
    rows = prediction_rows(
        run_id=inputs.run_id,
        probabilities=fitted.probabilities,
        images=inputs.images,
        class_label_ids=inputs.class_label_ids,
    )
    best_epoch = fitted.result.best_epoch
    with ctx.transaction() as session:
        run = service.get_run(session, run_id=inputs.run_id)
        repository.clear_predictions(session, inputs.run_id)
        repository.insert_predictions(session, rows)
        run.label_names = inputs.label_names
        run.metrics = scores.metrics
        run.per_class = scores.per_class
        run.confusion = scores.confusion
        run.diagnosis = scores.diagnosis
        # "kept" marks the epoch whose weights the subset table, the diagnosis and the downloads describe.
        run.history = [{**vars(r), "kept": r.epoch == best_epoch} for r in fitted.result.history]
        run.timings = timings.rounded()
        run.model_path = model_path  # a key prefix in the store, recorded after its files were stored
        run.status = RunStatus.SUCCEEDED


@task(service.RUN_JOB)
def train_run(ctx: JobContext) -> dict[str, Any]:
    from app.ml import features as feats

    run_id = int(ctx.payload["run_id"])
    timings = Timings()
    inputs = load_inputs(ctx, run_id)
    if inputs is None:
        return {"run_id": run_id, "already_done": True}
    # Many images: fan out into shard jobs and wait (this attempt ends here), or take the shards' features.
    ordered = {subset: inputs.shas[subset] for subset in SUBSET_ORDER if subset in inputs.shas}
    inputs.sharded = sharding.features_in_shards(ctx, subsets=ordered, config=inputs.config)
    backbone, head = load_backbone(ctx, inputs)
    timings.values["load_backbone_s"] = time.perf_counter() - timings.started
    # Where the tensors ran: users comparing run times need to know whether a GPU was used.
    timings.values["device"] = feats.default_device().type
    probe = inference.probe_images(inputs.paths["train"], backbone.input_spec.preprocessing)
    fitted = fit(ctx, inputs, backbone, head, probe, timings)
    ctx.progress(0.92, "scoring and exporting the model")
    scores = score_run(
        fitted.probabilities,
        inputs.labels,
        inputs.label_names,
        human_error=float(inputs.config.get("human_error", 0.0)),
    )
    model_path = export(ctx, inputs, fitted, probe, timings)
    timings.values["total_s"] = time.perf_counter() - timings.started
    store(ctx, inputs, fitted, scores, model_path, timings)
    blob_store(ctx.settings).artefacts.delete(checkpoint_key(ctx.job_id))
    if inputs.sharded is not None:
        sharding.release_results(ctx)
    dev_accuracy = scores.metrics["dev"]["accuracy"]
    ctx.progress(1.0, f"done: dev accuracy {dev_accuracy:.1%}")
    return {
        "run_id": run_id,
        "dev_accuracy": dev_accuracy,
        "dataset_id": inputs.dataset_id,
        "shards": timings.values.get("shards", 0),
    }
