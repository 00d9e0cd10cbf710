from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from app.jobs import service
from app.jobs.schemas import DemoJobIn, JobOut
from app.web.deps import DB, AppSettings, Reviewer, Viewer
from app.web.templating import render

router = APIRouter()


@router.get("/api/jobs", response_model=list[JobOut])
def api_jobs(db: DB, user: Viewer, limit: int = 50) -> list[JobOut]:
    return [JobOut.model_validate(j) for j in service.recent_jobs(db, limit=min(max(limit, 1), 500))]


@router.get("/api/jobs/{job_id}", response_model=JobOut)
def api_job(job_id: int, db: DB, user: Viewer) -> JobOut:
    return JobOut.model_validate(service.get_job(db, job_id=job_id))


@router.post("/api/jobs/{job_id}/cancel", response_model=JobOut)
def api_job_cancel(job_id: int, db: DB, user: Reviewer) -> JobOut:
    return JobOut.model_validate(service.cancel_job(db, job_id=job_id))


@router.post("/api/jobs/demo", response_model=JobOut, status_code=202)
def api_job_demo(body: DemoJobIn, db: DB, user: Reviewer, settings: AppSettings) -> JobOut:
    job = service.enqueue(
        db,
        kind="demo.sleep",
        payload={"seconds": body.seconds, "steps": body.steps},
        created_by_id=user.id,
        max_attempts=settings.job_max_attempts,
    )
    return JobOut.model_validate(job)


@router.get("/jobs", include_in_schema=False)
def jobs_page(request: Request, db: DB, user: Viewer) -> Response:
    return render(request, "jobs.html", {"jobs": service.recent_jobs(db)})


@router.get("/jobs/table", include_in_schema=False)
def jobs_table(request: Request, db: DB, user: Viewer) -> Response:
    return render(request, "jobs.html", {"jobs": service.recent_jobs(db)}, block="jobs_table")


@router.get("/jobs/{job_id}/bar", include_in_schema=False)
def job_bar(request: Request, job_id: int, db: DB, user: Viewer) -> Response:
    """A single job's live progress bar, embedded by any page that started a job."""
    return render(request, "_job.html", {"job": service.get_job(db, job_id=job_id)})


@router.post("/jobs/demo", include_in_schema=False)
def jobs_demo(request: Request, db: DB, user: Reviewer, settings: AppSettings) -> Response:
    payload = {"seconds": 15, "steps": 30}
    service.enqueue(
        db, kind="demo.sleep", payload=payload, created_by_id=user.id, max_attempts=settings.job_max_attempts
    )
    return render(request, "jobs.html", {"jobs": service.recent_jobs(db)}, block="jobs_table")


@router.post("/jobs/{job_id}/cancel", include_in_schema=False)
def jobs_cancel(request: Request, job_id: int, db: DB, user: Reviewer) -> Response:
    service.cancel_job(db, job_id=job_id)
    return render(request, "jobs.html", {"jobs": service.recent_jobs(db)}, block="jobs_table")
