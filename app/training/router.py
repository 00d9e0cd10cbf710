"""HTTP routes (pages and JSON API) for training runs; thin: parse, call the service, render."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Form, Query, Request
from fastapi.responses import FileResponse, RedirectResponse, Response

from app.jobs import service as jobs
from app.ml.modes import propose_mode
from app.models import Run
from app.training import service
from app.training.schemas import PredictionsOut, RunCreated, RunIn, RunOut
from app.web.deps import DB, Reviewer, Viewer
from app.web.templating import render

router = APIRouter()


def _rescored(db: DB, run: Run) -> dict[str, Any] | None:
    try:
        from app.review.service import rescored_metrics
    except ImportError:  # label review not installed in this build
        return None
    if service.run_status(db, run) != "succeeded":
        return None
    return rescored_metrics(db, run_id=run.id)


def _run_out(db: DB, run: Run) -> RunOut:
    return RunOut(
        id=run.id,
        dataset_id=run.dataset_id,
        split_id=run.split_id,
        status=service.run_status(db, run),
        config=run.config,
        label_names=run.label_names,
        metrics=run.metrics,
        per_class=run.per_class,
        confusion=run.confusion,
        diagnosis=run.diagnosis,
        history=run.history,
        timings=run.timings,
        job_id=run.job_id,
        is_baseline=service.is_baseline(db, run),
        rescored=_rescored(db, run),
    )


@router.post("/api/runs", response_model=RunCreated, status_code=202)
def api_create_run(body: RunIn, db: DB, user: Reviewer) -> RunCreated:
    run, job = service.create_run(db, body=body, user_id=user.id)
    return RunCreated(run_id=run.id, job_id=job.id)


@router.get("/api/runs", response_model=list[RunOut])
def api_runs(db: DB, user: Viewer, dataset_id: int | None = None) -> list[RunOut]:
    return [_run_out(db, r) for r in service.runs_of(db, dataset_id=dataset_id)]


@router.get("/api/runs/{run_id}", response_model=RunOut)
def api_run(run_id: int, db: DB, user: Viewer) -> RunOut:
    return _run_out(db, service.get_run(db, run_id=run_id))


@router.get("/api/runs/{run_id}/predictions", response_model=PredictionsOut)
def api_predictions(
    run_id: int,
    db: DB,
    user: Viewer,
    subset: str | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> PredictionsOut:
    total, items = service.predictions(db, run_id=run_id, subset=subset, limit=limit, offset=offset)
    return PredictionsOut(total=total, items=items)


@router.post("/api/runs/{run_id}/baseline", response_model=RunOut)
def api_baseline(run_id: int, db: DB, user: Reviewer) -> RunOut:
    return _run_out(db, service.set_baseline(db, run_id=run_id))


@router.get("/api/runs/{run_id}/files/{name}")
def api_run_file(run_id: int, name: str, db: DB, user: Viewer) -> Response:
    path = service.model_file(db, run_id=run_id, name=name)
    return FileResponse(path, filename=f"run-{run_id}-{name}", media_type="application/octet-stream")


# -- pages -----------------------------------------------------------------------------------------------


@router.get("/runs", include_in_schema=False)
def runs_page(request: Request, db: DB, user: Viewer, dataset_id: int | None = None) -> Response:
    runs = service.runs_of(db, dataset_id=dataset_id)
    return render(
        request,
        "training/list.html",
        {"runs": [(r, service.run_status(db, r), service.is_baseline(db, r)) for r in runs], "dataset_id": dataset_id},
    )


@router.get("/datasets/{dataset_id}/runs", include_in_schema=False)
def dataset_runs(dataset_id: int, user: Viewer) -> Response:
    return RedirectResponse(f"/runs?dataset_id={dataset_id}", status_code=303)


@router.get("/runs/new", include_in_schema=False)
def new_run_page(request: Request, db: DB, user: Reviewer, split_id: int | None = None) -> Response:
    from app.splits import service as splits

    split = splits.get_split(db, split_id=split_id) if split_id else None
    train_size = int(split.counts.get("train", {}).get("total", 0)) if split else 0
    proposal = propose_mode(train_size=train_size)
    finished = [
        r for r in service.runs_of(db, dataset_id=split.dataset_id if split else None) if r.status == "succeeded"
    ]
    return render(
        request,
        "training/new.html",
        {
            "split": split,
            "splits": service.split_choices(db, dataset_id=split.dataset_id) if split else [],
            "proposal": proposal,
            "backbones": service.BUILTIN_BACKBONES,
            "previous_runs": finished,
            "defaults": RunIn(dataset_id=split.dataset_id if split else 0, split_id=split_id or 0, mode=proposal.mode),
        },
    )


@router.post("/runs", include_in_schema=False)
def create_run_form(request: Request, form: Annotated[RunIn, Form()], db: DB, user: Reviewer) -> Response:
    run, _job = service.create_run(db, body=form, user_id=user.id)
    return RedirectResponse(f"/runs/{run.id}", status_code=303)


def _run_context(db: DB, run_id: int) -> dict[str, Any]:
    run = service.get_run(db, run_id=run_id)
    status = service.run_status(db, run)
    return {
        "run": run,
        "status": status,
        "job": jobs.get_job(db, job_id=run.job_id) if run.job_id else None,
        "is_baseline": service.is_baseline(db, run),
        "rescored": _rescored(db, run),
    }


@router.get("/runs/{run_id}", include_in_schema=False)
def run_page(request: Request, run_id: int, db: DB, user: Viewer) -> Response:
    return render(request, "training/detail.html", _run_context(db, run_id))


@router.get("/runs/{run_id}/live", include_in_schema=False)
def run_live(request: Request, run_id: int, db: DB, user: Viewer) -> Response:
    """The part of the run page that updates while it trains (progress, curves)."""
    context = _run_context(db, run_id)
    response = render(request, "training/detail.html", {**context, "live_only": True}, block="live")
    if context["status"] not in ("queued", "running"):
        # Only a page that was polling asks: its header (status, error analysis, review, model links) is stale.
        response.headers["HX-Refresh"] = "true"
    return response


@router.post("/runs/{run_id}/baseline", include_in_schema=False)
def run_baseline(request: Request, run_id: int, db: DB, user: Reviewer) -> Response:
    service.set_baseline(db, run_id=run_id)
    return RedirectResponse(f"/runs/{run_id}", status_code=303)
