"""HTTP routes for data health; thin: parse, call the service, answer."""

from __future__ import annotations

from dataclasses import asdict

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from app.health import service
from app.health.schemas import HealthOut, IssueOut
from app.web.deps import DB, AppSettings, Reviewer, Viewer
from app.web.templating import render

router = APIRouter()


@router.post("/api/datasets/{dataset_id}/health", status_code=202)
def api_start_scan(dataset_id: int, db: DB, user: Reviewer, settings: AppSettings) -> JSONResponse:
    _, job = service.start_scan(db, dataset_id=dataset_id, user_id=user.id, max_attempts=settings.job_max_attempts)
    return JSONResponse({"job_id": job.id}, status_code=202)


@router.get("/api/datasets/{dataset_id}/health", response_model=HealthOut)
def api_health(dataset_id: int, db: DB, user: Viewer) -> HealthOut:
    found = service.report(db, dataset_id=dataset_id)
    return HealthOut(**{**asdict(found), "issues": [IssueOut(**asdict(issue)) for issue in found.issues]})


@router.get("/datasets/{dataset_id}/health", include_in_schema=False)
def health_panel(request: Request, dataset_id: int, db: DB, user: Viewer) -> Response:
    """The dataset page's "Data health" panel (loaded by htmx; polls itself while a scan runs)."""
    context: dict[str, object] = {"dataset_id": dataset_id, "health": None, "missing": None}
    try:
        context["health"] = service.report(db, dataset_id=dataset_id)
    except service.HealthMissing as missing:
        context["missing"] = missing.message
    return render(request, "health/_panel.html", context)


@router.post("/datasets/{dataset_id}/health", include_in_schema=False)
def health_panel_scan(request: Request, dataset_id: int, db: DB, user: Reviewer, settings: AppSettings) -> Response:
    """The panel's button: queue a scan and answer with the panel, which then polls until the scan is done."""
    service.start_scan(db, dataset_id=dataset_id, user_id=user.id, max_attempts=settings.job_max_attempts)
    return health_panel(request, dataset_id, db, user)
