"""The training job: features (cached), head or finetune training with early stopping, predictions for every
subset, metrics and the diagnosis, an exported model. torch is imported here, once per runner process."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from app.core.storage import LocalBlobStore
from app.jobs.context import JobCancelled, JobContext, TaskError
from app.jobs.registry import task
from app.training import inference, repository, service

SUBSET_ORDER = ("train", "train_dev", "dev", "test")


def _scaled(ctx: JobContext, low: float, high: float) -> Any:
    def report(fraction: float, message: str = "") -> None:
        ctx.progress(low + (high - low) * max(0.0, min(1.0, fraction)), message or None)

    return report


@task(service.RUN_JOB)
def train_run(ctx: JobContext) -> dict[str, Any]:
    import torch

    from app.ml import backbones as bb
    from app.ml import features as feats
    from app.ml import metrics, training
    from app.ml.features import TrainingCancelled

    run_id = int(ctx.payload["run_id"])
    timings: dict[str, Any] = {}
    started = time.perf_counter()
    # Progress is reported between transactions, never inside one (SQLite has one writer).
    with ctx.transaction() as session:
        run = service.get_run(session, run_id=run_id)
        if run.status == "succeeded":
            return {"run_id": run_id, "already_done": True}
        run.status = "running"
        config = dict(run.config)
        rows = repository.split_images(session, run.split_id)
        names_by_id = repository.label_names(session, run.dataset_id)
        dataset_id = run.dataset_id
    used_label_ids = sorted({label_id for *_, label_id in rows}, key=lambda i: names_by_id[i])
    label_names = [names_by_id[i] for i in used_label_ids]
    index_of = {label_id: k for k, label_id in enumerate(used_label_ids)}
    blobs = LocalBlobStore(ctx.settings.blob_dir)
    by_subset: dict[str, list[tuple[int, str, int]]] = {}
    for image_id, subset, sha, label_id in rows:
        by_subset.setdefault(subset, []).append((image_id, sha, label_id))
    if not by_subset.get("train") or not by_subset.get("dev"):
        raise TaskError("the split has no train or no dev images left (all excluded?)")
    if len(label_names) < 2:
        raise TaskError("training needs at least two classes in the split")

    ctx.progress(0.02, "loading the backbone")
    torch.set_num_threads(ctx.settings.torch_threads)
    mode = training.TrainingMode(config["mode"])
    backbone_name = str(config["backbone"])
    initial_head = None
    torch_home = Path(os.environ["TORCH_HOME"]) if os.environ.get("TORCH_HOME") else None
    try:
        if backbone_name.startswith("run:"):
            with ctx.transaction() as session:
                source = service.get_run(session, run_id=int(backbone_name[4:]))
                source_path = Path(source.model_path or "") / "model.pt"
            loaded = bb.model_from_checkpoint(source_path, label_names=label_names, seed=int(config["seed"]))
            backbone = loaded.backbone
            if not loaded.head_replaced:
                initial_head = loaded.head.state_dict()
        else:
            backbone = bb.load_backbone(backbone_name, torch_home=torch_home, seed=int(config["seed"]))
    except (bb.BackboneUnavailable, bb.IncompatibleCheckpoint) as error:
        raise TaskError(str(error)) from error
    timings["load_backbone_s"] = time.perf_counter() - started
    # Where the tensors ran: users comparing run times need to know whether a GPU was used.
    timings["device"] = feats.default_device().type

    train_config = training.TrainingConfig(
        mode=mode,
        epochs=int(config["epochs"]),
        learning_rate=float(config["lr"]),
        batch_size=int(config["batch_size"]),
        weight_decay=float(config["weight_decay"]),
        seed=int(config["seed"]),
        patience=int(config.get("patience", 8)),
        finetune_blocks=int(config.get("finetune_blocks", 2)),
    )
    paths = {s: [blobs.path(sha) for _, sha, _ in items] for s, items in by_subset.items()}
    shas = {s: [sha for _, sha, _ in items] for s, items in by_subset.items()}
    labels = {s: np.array([index_of[label] for *_, label in items], dtype=np.int64) for s, items in by_subset.items()}
    cache_dir = ctx.settings.cache_dir / "features"
    history: list[dict[str, float]] = []
    probe = inference.probe_images(paths["train"], backbone.input_spec.preprocessing)
    runtime = inference.scoring_runtime(ctx.settings, mode.value, backbone, probe=probe)
    timings["inference"] = runtime.report.to_dict()
    timings["model_input"] = backbone.input_spec.to_dict()

    def on_epoch(record: Any) -> None:
        history.append(dict(vars(record)))
        with ctx.transaction() as session:
            service.get_run(session, run_id=run_id).history = list(history)
        ctx.progress(
            0.6 + 0.3 * record.epoch / train_config.epochs,
            f"epoch {record.epoch}: dev loss {record.dev_loss:.3f}, dev accuracy {record.dev_accuracy:.1%}",
        )

    checkpoint = ctx.work_dir / "training_state.pt"

    def on_epoch_end(state: Any) -> None:
        # Resumable after a worker crash: the retry starts from the last finished epoch.
        tmp = checkpoint.with_suffix(".tmp")
        torch.save(state.to_dict(), tmp)
        os.replace(tmp, checkpoint)

    resume = None
    if checkpoint.exists():
        resume = training.TrainingState.from_dict(torch.load(checkpoint, map_location="cpu", weights_only=True))
        history = [dict(vars(r)) for r in resume.history]

    try:
        features: dict[str, np.ndarray] = {}
        if mode is training.TrainingMode.LINEAR:
            t0 = time.perf_counter()
            total = sum(len(p) for p in paths.values())
            done = 0
            flipped = None
            for subset in SUBSET_ORDER:
                if subset not in paths:
                    continue
                low = 0.05 + 0.5 * done / total
                high = 0.05 + 0.5 * (done + len(paths[subset])) / total
                result = feats.extract_features(
                    backbone=backbone,
                    image_paths=paths[subset],
                    image_sha256s=shas[subset],
                    cache_dir=cache_dir,
                    include_flipped=subset == "train",
                    progress=_scaled(ctx, low, high),
                    should_stop=ctx.should_stop,
                    precision=ctx.settings.feature_precision,
                    runtime=runtime,
                )
                features[subset] = result.features
                if subset == "train":
                    flipped = result.flipped_features
                timings[f"extracted_{subset}"] = result.extracted
                done += len(paths[subset])
            timings["features_s"] = time.perf_counter() - t0
            timings["feature_precision"] = ctx.settings.feature_precision
            t0 = time.perf_counter()
            fit = training.train_linear_head(
                train_features=features["train"],
                train_labels=labels["train"],
                dev_features=features["dev"],
                dev_labels=labels["dev"],
                num_classes=len(label_names),
                config=train_config,
                train_flipped_features=flipped,
                initial_head_state=initial_head,
                resume=resume,
                should_stop=ctx.should_stop,
                on_epoch=on_epoch,
                on_epoch_end=on_epoch_end,
            )
            timings["training_s"] = time.perf_counter() - t0
            probabilities = {
                s: training.predict_from_features(head_state=fit.head_state, features=f) for s, f in features.items()
            }
            trained_backbone = backbone
        else:
            t0 = time.perf_counter()
            fit = training.train_on_images(
                backbone=backbone,
                train_paths=paths["train"],
                train_labels=labels["train"],
                dev_paths=paths["dev"],
                dev_labels=labels["dev"],
                num_classes=len(label_names),
                config=train_config,
                initial_head_state=initial_head,
                resume=resume,
                progress=_scaled(ctx, 0.05, 0.9),
                should_stop=ctx.should_stop,
                on_epoch=on_epoch,
                on_epoch_end=on_epoch_end,
            )
            timings["training_s"] = time.perf_counter() - t0
            trained_backbone = bb.with_weights(backbone, fit.backbone_state) if fit.backbone_state else backbone
            probabilities = {
                s: training.predict_images(
                    backbone=trained_backbone,
                    head_state=fit.head_state,
                    image_paths=paths[s],
                    should_stop=ctx.should_stop,
                )
                for s in paths
            }
    except TrainingCancelled as cancelled:
        raise JobCancelled(str(cancelled)) from cancelled

    ctx.progress(0.92, "scoring and exporting the model")
    results: dict[str, Any] = {"metrics": {}, "per_class": {}, "confusion": {}, "diagnosis": {}}
    for subset, probs in probabilities.items():
        m = metrics.subset_metrics(probs, labels[subset])
        results["metrics"][subset] = {
            "count": m.count,
            "accuracy": m.accuracy,
            "error": m.error,
            "loss": m.loss,
        }
    dev_predicted = probabilities["dev"].argmax(axis=1)
    results["per_class"] = {
        label_names[c.class_index]: {"precision": c.precision, "recall": c.recall, "f1": c.f1, "support": c.support}
        for c in metrics.per_class_metrics(dev_predicted, labels["dev"], len(label_names))
    }
    results["confusion"] = {
        "labels": label_names,
        "matrix": metrics.confusion_matrix(dev_predicted, labels["dev"], len(label_names)).tolist(),
    }
    errors = {s: v["error"] for s, v in results["metrics"].items()}
    diagnosis = metrics.diagnose(
        train_error=errors["train"],
        dev_error=errors["dev"],
        human_error=float(config.get("human_error", 0.0)),
        train_dev_error=errors.get("train_dev"),
        test_error=errors.get("test"),
    )
    results["diagnosis"] = {
        "human_error": diagnosis.human_error,
        "gaps": {str(gap): value for gap, value in diagnosis.gaps().items()},
        "largest": str(diagnosis.largest) if diagnosis.largest else None,
        "advice": diagnosis.advice,
    }
    out_dir = service.run_dir(run_id)
    training.export_model(
        backbone=trained_backbone, head_state=fit.head_state, label_names=label_names, directory=out_dir
    )
    timings["model_onnx"] = inference.export_run_onnx(
        settings=ctx.settings,
        backbone=trained_backbone,
        head_state=fit.head_state,
        label_names=label_names,
        directory=out_dir,
        probe=probe,
    )
    timings["total_s"] = time.perf_counter() - started
    prediction_rows = []
    for subset, probs in probabilities.items():
        for (image_id, _sha, label_id), row in zip(by_subset[subset], probs, strict=True):
            predicted = int(row.argmax())
            prediction_rows.append(
                {
                    "run_id": run_id,
                    "image_id": image_id,
                    "subset": subset,
                    "label_id": label_id,
                    "predicted_label_id": used_label_ids[predicted],
                    "confidence": float(row[predicted]),
                    "is_error": used_label_ids[predicted] != label_id,
                    "probs": np.asarray(row, dtype=np.float32).tobytes(),
                }
            )
    with ctx.transaction() as session:
        run = service.get_run(session, run_id=run_id)
        repository.clear_predictions(session, run_id)
        repository.insert_predictions(session, prediction_rows)
        run.label_names = label_names
        run.metrics = results["metrics"]
        run.per_class = results["per_class"]
        run.confusion = results["confusion"]
        run.diagnosis = results["diagnosis"]
        # "kept" marks the epoch whose weights the subset table, the diagnosis and the downloads describe.
        run.history = [{**vars(r), "kept": r.epoch == fit.best_epoch} for r in fit.history]
        run.timings = {k: round(v, 3) if isinstance(v, float) else v for k, v in timings.items()}
        run.model_path = str(out_dir)
        run.status = "succeeded"
    checkpoint.unlink(missing_ok=True)
    ctx.progress(1.0, f"done: dev accuracy {results['metrics']['dev']['accuracy']:.1%}")
    return {"run_id": run_id, "dev_accuracy": results["metrics"]["dev"]["accuracy"], "dataset_id": dataset_id}
