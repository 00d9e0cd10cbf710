"""The pool scoring job: the run's model on every unlabeled image, through the path dev and test were scored on
(the run's backbone from its checkpoint, features through the same runtime and feature cache, then its head).
torch is imported inside the handler, once per runner process."""

from __future__ import annotations

from typing import Any

import numpy as np

from app.jobs.context import JobCancelled, JobContext, TaskError
from app.jobs.registry import task
from app.ml.active_learning import margins, normalised_entropy, project_features
from app.models import utcnow
from app.pool import repository
from app.pool.service import POOL_JOB
from app.storage.backends import blob_store
from app.training import inference
from app.training.service import run_file


@task(POOL_JOB)
def score_pool(ctx: JobContext) -> dict[str, Any]:
    from app.ml import backbones as bb
    from app.ml import features as feats
    from app.ml.training import predict_from_features

    run_id = int(ctx.payload["run_id"])
    with ctx.transaction() as session:
        run = repository.get_run(session, run_id)
        if run is None or run.status != "succeeded" or not run.model_path:
            raise TaskError(f"run {run_id} has no trained model to score the pool with")
        images = repository.pool_images(session, run.dataset_id)
        blobs = blob_store(ctx.settings)
        checkpoint = run_file(blobs.artefacts, run, "model.pt")
        mode, dataset_id = str(run.config.get("mode", "linear")), run.dataset_id
    if checkpoint is None:
        raise TaskError(f"the model files of run {run_id} are missing from the store")
    ctx.progress(0.02, f"loading the model of run {run_id}")
    try:
        loaded = bb.model_from_checkpoint(checkpoint)
    except bb.IncompatibleCheckpoint as error:
        raise TaskError(str(error)) from error
    paths = [blobs.path(sha) for _, sha in images]
    features = np.zeros((0, loaded.backbone.feature_size), dtype=np.float32)
    if images:
        probe = inference.probe_images(paths, loaded.backbone.input_spec.preprocessing)
        runtime = inference.scoring_runtime(ctx.settings, mode, loaded.backbone, probe=probe)

        def report(fraction: float, message: str = "") -> None:
            ctx.progress(0.05 + 0.85 * max(0.0, min(1.0, fraction)), message or None)

        try:
            features = feats.extract_features(
                backbone=loaded.backbone,
                image_paths=paths,
                image_sha256s=[sha for _, sha in images],
                cache_dir=ctx.settings.cache_dir / "features",
                progress=report,
                should_stop=ctx.should_stop,
                precision=ctx.settings.feature_precision,
                runtime=runtime,
            ).features
        except feats.TrainingCancelled as cancelled:
            raise JobCancelled(str(cancelled)) from cancelled
    ctx.progress(0.92, "scoring")
    head = loaded.head.state_dict()
    probs = predict_from_features(head_state=head, features=features) if images else np.zeros((0, 0), np.float32)
    embeddings = project_features(features).astype(np.float16)
    with ctx.transaction() as session:
        label_ids = repository.label_ids_by_name(session, dataset_id)
        names = list(loaded.label_names)
        rows = _rows(run_id, images, probs, embeddings, [label_ids.get(name) for name in names])
        repository.replace_scores(session, run_id=run_id, rows=rows)
        scoring = repository.get_scoring(session, run_id)
        if scoring is not None:
            scoring.status, scoring.scored, scoring.finished_at = "succeeded", len(rows), utcnow()
    ctx.progress(1.0, f"scored {len(rows)} pool images")
    return {"run_id": run_id, "scored": len(rows)}


def _rows(
    run_id: int,
    images: list[tuple[int, str]],
    probs: np.ndarray,
    embeddings: np.ndarray,
    label_ids: list[int | None],
) -> list[dict[str, Any]]:
    if not images:
        return []
    top = probs.argmax(axis=1)
    margin = margins(probs)
    entropy = normalised_entropy(probs)
    return [
        {
            "run_id": run_id,
            "image_id": image_id,
            "predicted_label_id": label_ids[int(top[row])],
            "confidence": float(probs[row, top[row]]),
            "margin": float(margin[row]),
            "entropy": float(entropy[row]),
            "probs": np.asarray(probs[row], dtype=np.float32).tobytes(),
            "embedding": embeddings[row].tobytes(),
        }
        for row, (image_id, _sha) in enumerate(images)
    ]
