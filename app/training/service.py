"""Training runs: create (as a job on the training queue), read, compare, baseline, predictions, downloads."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy.orm import Session

from app.core.artefacts import ArtefactStore
from app.core.errors import Conflict, Invalid, NotFound
from app.core.settings import Settings
from app.jobs import service as jobs
from app.jobs import states as job_states
from app.jobs.states import JobStatus
from app.ml.backbone_choices import BACKBONE_NAMES
from app.ml.modes import TrainingMode
from app.models import Job, Run
from app.splits.states import SplitStatus
from app.training import repository
from app.training.schemas import PredictionOut, RunIn
from app.training.states import UNFINISHED, RunStatus

RUN_JOB = "training.run"
RUN_FILES = {
    "model.pt": "model.pt",
    "labels.json": "labels.json",
    "model.torchscript.pt": "model.torchscript.pt",
    "model.onnx": "model.onnx",
}


def run_prefix(run_id: int) -> str:
    """Where a run's model files live in the blob store's artefacts (locally: the data dir's runs/<id>/)."""
    return f"runs/{run_id}"


def run_key(run_id: int, name: str) -> str:
    return f"{run_prefix(run_id)}/{name}"


def run_file(artefacts: ArtefactStore, run: Run, name: str) -> Path | None:
    """A local copy of one of a finished run's files, or None when it has none. Runs recorded before their files
    went to the store name a folder of this host (an absolute model_path): that folder is read while it exists,
    else the store's copy (`errorbook storage migrate` uploads those folders under runs/<id>/)."""
    if not run.model_path or name not in RUN_FILES:
        return None
    if Path(run.model_path).is_absolute() and (Path(run.model_path) / name).is_file():
        return Path(run.model_path) / name
    try:
        return artefacts.local_path(run_key(run.id, name))
    except FileNotFoundError:
        return None


def get_run(session: Session, *, run_id: int) -> Run:
    run = repository.get_run(session, run_id)
    if run is None:
        raise NotFound(f"run {run_id} does not exist")
    return run


def run_status(session: Session, run: Run) -> str:
    """A run whose job ended without finishing it reports the job's end (failed or cancelled)."""
    if run.status in UNFINISHED and run.job_id:
        job = jobs.get_job(session, job_id=run.job_id)
        if job.status in job_states.UNSUCCESSFUL:
            return RunStatus(job.status)
        if job.status == JobStatus.RUNNING:
            return RunStatus.RUNNING
    return run.status


def _check_backbone(session: Session, name: str) -> None:
    if name in BACKBONE_NAMES:
        return
    if name.startswith("run:"):
        try:
            source_id = int(name[4:])
        except ValueError:
            raise Invalid(f"{name!r}: run:<id> needs a number") from None
        source = get_run(session, run_id=source_id)
        if source.status != RunStatus.SUCCEEDED or not source.model_path:
            raise Invalid(f"run {source_id} has no trained model to start from (it is {source.status})")
        return
    raise Invalid(f"unknown backbone {name!r}; choose one of {', '.join(BACKBONE_NAMES)} or run:<id>")


def enqueue_run_job(session: Session, *, kind: str, run: Run, user_id: int | None, settings: Settings) -> Job:
    """A job about one run (training it, scoring the pool with its model), on the training queue: the worker there
    has the accelerator and the model cache."""
    return jobs.enqueue(
        session,
        kind=kind,
        payload={"run_id": run.id},
        queue=settings.training_queue,
        created_by_id=user_id,
        max_attempts=settings.job_max_attempts,
    )


def create_run(session: Session, *, body: RunIn, user_id: int | None, settings: Settings) -> tuple[Run, Job]:
    split = repository.get_split(session, body.split_id)
    if split is None or split.dataset_id != body.dataset_id:
        raise NotFound(f"split {body.split_id} does not exist in dataset {body.dataset_id}")
    if split.status != SplitStatus.READY:
        raise Conflict(f"split v{split.version} is {split.status}; wait until it is ready")
    if body.mode not in tuple(TrainingMode):
        raise Invalid(f"mode must be one of {', '.join(TrainingMode)}")
    if not split.counts.get("train", {}).get("total") or not split.counts.get("dev", {}).get("total"):
        raise Invalid("the split needs images in both train and dev to train and evaluate")
    _check_backbone(session, body.backbone)
    config = body.model_dump(exclude={"dataset_id", "split_id"})
    run = Run(
        dataset_id=body.dataset_id,
        split_id=body.split_id,
        status=RunStatus.QUEUED,
        config=config,
        created_by_id=user_id,
    )
    session.add(run)
    session.flush()
    job = enqueue_run_job(session, kind=RUN_JOB, run=run, user_id=user_id, settings=settings)
    run.job_id = job.id
    session.flush()
    return run, job


def runs_of(session: Session, *, dataset_id: int | None) -> list[Run]:
    return repository.runs_of(session, dataset_id)


@dataclass(frozen=True)
class RunRow:
    """One line of /runs: the run with the dataset and split version it was trained on."""

    run: Run
    status: str
    dataset: Any
    split_version: int
    is_baseline: bool


def runs_table(session: Session, *, dataset_id: int | None) -> list[RunRow]:
    return [
        RunRow(run, run_status(session, run), dataset, version, dataset.baseline_run_id == run.id)
        for run, dataset, version in repository.runs_with_context(session, dataset_id)
    ]


def datasets_with_runs(session: Session) -> list[Any]:
    return repository.datasets_with_runs(session)


def set_baseline(session: Session, *, run_id: int) -> Run:
    run = get_run(session, run_id=run_id)
    if run.status != RunStatus.SUCCEEDED:
        raise Conflict("only a finished run can be the dataset's baseline")
    dataset = repository.get_dataset(session, run.dataset_id)
    assert dataset is not None
    dataset.baseline_run_id = run.id
    session.flush()
    return run


def is_baseline(session: Session, run: Run) -> bool:
    dataset = repository.get_dataset(session, run.dataset_id)
    return dataset is not None and dataset.baseline_run_id == run.id


def predictions(
    session: Session, *, run_id: int, subset: str | None, limit: int, offset: int
) -> tuple[int, list[PredictionOut]]:
    run = get_run(session, run_id=run_id)
    names = repository.label_names(session, run.dataset_id)
    total, rows = repository.predictions(session, run_id=run_id, subset=subset, limit=limit, offset=offset)
    items = [
        PredictionOut(
            image_id=p.image_id,
            subset=p.subset,
            label=names.get(current_label, "?"),
            predicted=names.get(p.predicted_label_id, "?"),
            confidence=p.confidence,
            probs=[round(float(x), 6) for x in np.frombuffer(p.probs, dtype=np.float32)],
        )
        for p, current_label in rows
    ]
    return total, items


def model_file(session: Session, *, run_id: int, name: str, artefacts: ArtefactStore) -> Path:
    run = get_run(session, run_id=run_id)
    if name not in RUN_FILES or not run.model_path:
        raise NotFound(f"run {run_id} has no file {name!r}")
    path = run_file(artefacts, run, RUN_FILES[name])
    if path is None:
        why = (run.timings or {}).get("model_onnx", {}).get("reason") if name == "model.onnx" else None
        if why:
            raise NotFound(f"run {run_id} has no {name}: {why}")
        raise NotFound(f"the file {name} of run {run_id} is missing from the store")
    return path


def dataset_of(session: Session, *, dataset_id: int) -> Any:
    from app.datasets import repository as datasets

    return datasets.get_dataset(session, dataset_id)


def split_choices(session: Session, *, dataset_id: int) -> list[Any]:
    from app.splits import repository as splits

    return [s for s in splits.splits_of(session, dataset_id) if s.status == SplitStatus.READY]
