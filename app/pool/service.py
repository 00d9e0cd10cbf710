"""The unlabeled pool: score it with a finished run (a job), rank it by a strategy, and the labelling page's view.

Services take keyword-only arguments and only flush; the caller's unit of work commits."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from sqlalchemy.orm import Session

from app.core.errors import Conflict, Invalid
from app.core.lookup import get_or_404
from app.core.settings import Settings
from app.jobs import service as jobs
from app.ml.active_learning import STRATEGIES, rank_pool
from app.models import Dataset, Job, PoolScoring, Run, utcnow
from app.pool import logic, repository
from app.pool.schemas import LabelProbabilityOut, PoolItemOut, PoolOut
from app.training.service import enqueue_run_job, run_status

POOL_JOB = "pool.score"
TOP_K = 3


def _finished_run(session: Session, run_id: int, dataset_id: int | None) -> Run:
    run = (
        get_or_404(session, Run, run_id)
        if dataset_id is None
        else get_or_404(session, Run, run_id, dataset_id=dataset_id)
    )
    status = run_status(session, run)
    if status != "succeeded" or not run.model_path:
        raise Conflict(f"run {run_id} is {status}; only a finished run can score the pool")
    return run


def start_scoring(
    session: Session, *, run_id: int, user_id: int | None, settings: Settings, dataset_id: int | None = None
) -> tuple[PoolScoring, Job]:
    """Queue the job that scores every pool image with the run's model (a scoring already waiting is reused)."""
    run = _finished_run(session, run_id, dataset_id)
    if repository.pool_count(session, run.dataset_id) == 0:
        raise Conflict(
            f"dataset {run.dataset_id} has no unlabeled images to score; upload some with unlabeled=true first"
        )
    scoring = repository.get_scoring(session, run.id)
    if scoring is not None and scoring.status == "queued" and scoring.job_id is not None:
        job = jobs.get_job(session, job_id=scoring.job_id)
        if job.status in ("queued", "running"):
            return scoring, job
    job = enqueue_run_job(session, kind=POOL_JOB, run=run, user_id=user_id, settings=settings)
    if scoring is None:
        scoring = repository.add_scoring(session, PoolScoring(run_id=run.id, job_id=job.id, status="queued"))
    else:
        # Earlier scores stay readable (finished_at kept) until the new ones replace them in one transaction.
        scoring.job_id, scoring.created_at, scoring.status = job.id, utcnow(), "queued"
    session.flush()
    return scoring, job


def _not_scored(session: Session, run: Run, scoring: PoolScoring | None) -> Conflict:
    start = {"method": "POST", "url": f"/api/runs/{run.id}/pool/score"}
    job = jobs.get_job(session, job_id=scoring.job_id) if scoring is not None and scoring.job_id else None
    if job is not None and job.status in ("queued", "running"):
        return Conflict(
            f"run {run.id} has no pool scores yet: its scoring job {job.id} is {job.status}; ask again when it ends",
            extra={"job_id": job.id, "job_status": job.status},
        )
    why = f" (its scoring job {job.id} {job.status}: {job.error or 'no message'})" if job is not None else ""
    return Conflict(
        f"run {run.id} has no pool scores{why}: start the scoring job with POST /api/runs/{run.id}/pool/score",
        extra={"start": start, "job_id": None},
    )


def _placement_note(session: Session, dataset: Dataset) -> str:
    split = repository.newest_ready_split(session, dataset.id)
    return logic.placement_note(target_source=dataset.target_source, split_version=split.version if split else None)


def ranked_pool(session: Session, *, run_id: int, strategy: str, limit: int) -> PoolOut:
    """The next `limit` pool images to label by `strategy`, with the run's suggestion and the score used.
    409 (naming the job to start) while the run has no pool scores."""
    if strategy not in STRATEGIES:
        raise Invalid(f"strategy must be one of {', '.join(STRATEGIES)}; got {strategy!r}")
    run = get_or_404(session, Run, run_id)
    scoring = repository.get_scoring(session, run.id)
    if scoring is None or scoring.finished_at is None:
        raise _not_scored(session, run, scoring)
    dataset = get_or_404(session, Dataset, run.dataset_id)
    rows = repository.current_scores(session, run_id=run.id, dataset_id=dataset.id)
    pool_size = repository.pool_count(session, dataset.id)
    names = [str(name) for name in run.label_names]
    items: list[PoolItemOut] = []
    if rows:
        probs = np.stack([np.frombuffer(row.probs, dtype=np.float32) for row in rows])
        embeddings = np.stack([np.frombuffer(row.embedding, dtype=np.float16) for row in rows]).astype(np.float32)
        ranking = rank_pool(probs, embeddings, strategy=strategy, limit=limit)
        for rank, (index, score) in enumerate(zip(ranking.indices.tolist(), ranking.scores.tolist(), strict=True)):
            items.append(_item(rows[index], probs[index], names, rank=rank + 1, score=score, dataset=dataset))
    return PoolOut(
        run_id=run.id,
        dataset_id=dataset.id,
        strategy=strategy,
        pool_size=pool_size,
        scored=len(rows),
        unscored=max(0, pool_size - len(rows)),
        labelled_from_pool=repository.labelled_from_pool(session, dataset.id),
        placement_note=_placement_note(session, dataset),
        items=items,
    )


def _item(
    row: repository.ScoreRow, probs: np.ndarray, names: list[str], *, rank: int, score: float, dataset: Dataset
) -> PoolItemOut:
    order = np.argsort(-probs, kind="stable")[:TOP_K]
    top = [LabelProbabilityOut(label=names[k], probability=round(float(probs[k]), 6)) for k in order]
    return PoolItemOut(
        image_id=row.image_id,
        rank=rank,
        suggestion=top[0].label if top else "",
        confidence=round(float(row.confidence), 6),
        score=round(float(score), 6),
        top=top,
        label_version=row.label_version,
        source=row.source,
        filename=row.filename,
        placement=logic.placement(source=row.source, target_source=dataset.target_source),
    )


def _unranked(session: Session, dataset: Dataset, *, limit: int) -> list[PoolItemOut]:
    return [
        PoolItemOut(
            image_id=image_id,
            rank=rank,
            suggestion="",
            confidence=0.0,
            score=0.0,
            top=[],
            label_version=version,
            source=source,
            filename=filename,
            placement=logic.placement(source=source, target_source=dataset.target_source),
        )
        for rank, (image_id, version, source, filename) in enumerate(
            repository.first_pool_images(session, dataset.id, limit=limit), start=1
        )
    ]


@dataclass(frozen=True)
class LabelPage:
    dataset: Dataset
    runs: list[Run]
    run: Run | None
    pool_size: int
    labels: list[str]
    scoring_job: Job | None
    pool: PoolOut | None
    refusal: str | None  # why there is no ranked batch to show
    items: list[PoolItemOut]  # the ranked batch, or without a run the pool in upload order (no suggestions)
    strategy: str
    limit: int
    placement_note: str


def label_page(session: Session, *, dataset_id: int, run_id: int | None, strategy: str, limit: int) -> LabelPage:
    dataset = get_or_404(session, Dataset, dataset_id)
    if strategy not in STRATEGIES:
        raise Invalid(f"strategy must be one of {', '.join(STRATEGIES)}; got {strategy!r}")
    runs = repository.finished_runs(session, dataset.id)
    run: Run | None = None
    if run_id is not None:
        run = get_or_404(session, Run, run_id, dataset_id=dataset.id)
    elif runs:
        baseline = next((r for r in runs if r.id == dataset.baseline_run_id), None)
        run = baseline or runs[0]
    page: dict[str, Any] = {"scoring_job": None, "pool": None, "refusal": None, "items": []}
    if run is None:
        page["refusal"] = (
            "No finished run yet: these are the pool's first images in upload order, without suggestions. "
            "Train a run first and its model suggests the labels and picks which images to label next."
        )
        page["items"] = _unranked(session, dataset, limit=limit)
    else:
        try:
            page["pool"] = ranked_pool(session, run_id=run.id, strategy=strategy, limit=limit)
            page["items"] = page["pool"].items
        except Conflict as refused:
            page["refusal"] = refused.message
            job_id = refused.extra.get("job_id")
            page["scoring_job"] = jobs.get_job(session, job_id=int(job_id)) if job_id else None
    return LabelPage(
        dataset=dataset,
        runs=runs,
        run=run,
        pool_size=repository.pool_count(session, dataset.id),
        labels=[name for _, name in repository.label_names(session, dataset.id)],
        strategy=strategy,
        limit=limit,
        placement_note=_placement_note(session, dataset),
        **page,
    )
