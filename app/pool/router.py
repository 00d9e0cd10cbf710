"""HTTP routes for the unlabeled pool: score it with a run, rank it, and the labelling page; thin."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Form, Query, Request
from fastapi.responses import RedirectResponse, Response

from app.pool import service
from app.pool.schemas import PoolOut, PoolScoreStarted
from app.web.deps import DB, AppSettings, Reviewer, Viewer
from app.web.templating import render

router = APIRouter()
Strategy = Annotated[str, Query(description="uncertainty, diversity or hybrid")]
Limit = Annotated[int, Query(ge=1, le=500)]


@router.post("/api/runs/{run_id}/pool/score", response_model=PoolScoreStarted, status_code=202)
def api_score_pool(run_id: int, db: DB, user: Reviewer, settings: AppSettings) -> PoolScoreStarted:
    """Queue a job scoring every unlabeled image of the run's dataset with the run's model."""
    scoring, job = service.start_scoring(db, run_id=run_id, user_id=user.id, settings=settings)
    return PoolScoreStarted(run_id=scoring.run_id, job_id=job.id)


@router.get("/api/runs/{run_id}/pool", response_model=PoolOut)
def api_pool(run_id: int, db: DB, user: Viewer, strategy: Strategy = "hybrid", limit: Limit = 50) -> PoolOut:
    """The pool images to label next, ranked; 409 with the job to start when the run has not scored the pool."""
    return service.ranked_pool(db, run_id=run_id, strategy=strategy, limit=limit)


@router.get("/datasets/{dataset_id}/label", include_in_schema=False)
def label_page(
    request: Request,
    dataset_id: int,
    db: DB,
    user: Viewer,
    run_id: int | None = None,
    strategy: Strategy = "hybrid",
    limit: Limit = 24,
) -> Response:
    page = service.label_page(db, dataset_id=dataset_id, run_id=run_id, strategy=strategy, limit=limit)
    return render(request, "pool/label.html", {"page": page, "strategies": service.STRATEGIES})


@router.post("/datasets/{dataset_id}/label/score", include_in_schema=False)
def label_page_score(
    dataset_id: int, run_id: Annotated[int, Form()], db: DB, user: Reviewer, settings: AppSettings
) -> Response:
    service.start_scoring(db, run_id=run_id, user_id=user.id, settings=settings, dataset_id=dataset_id)
    return RedirectResponse(f"/datasets/{dataset_id}/label?run_id={run_id}", status_code=303)
