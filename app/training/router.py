"""HTTP routes (pages and JSON API) for training runs; thin: parse, call the service, render."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Form, Query, Request
from fastapi.responses import FileResponse, RedirectResponse, Response
from starlette.datastructures import FormData, UploadFile
from starlette.exceptions import HTTPException

from app.core.errors import Conflict, NotAuthenticated
from app.core.settings import Settings
from app.jobs import service as jobs
from app.ml.backbone_choices import backbone_choices
from app.ml.modes import TrainingMode, propose_mode
from app.ml.run_wording import gap_note, timing_lines
from app.models import Run
from app.review.rescoring import rescored_metrics
from app.splits.states import SplitStatus
from app.training import predict, service
from app.training.schemas import PredictionsOut, PredictOut, RunCreated, RunIn, RunOut
from app.training.states import UNFINISHED, RunStatus
from app.web.deps import DB, SESSION_COOKIE, AppSettings, Reviewer, Viewer, reads_only
from app.web.templating import render

router = APIRouter()
PREDICT_BODY = {
    "requestBody": {
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {"files": {"type": "array", "items": {"type": "string", "format": "binary"}}},
                }
            }
        }
    }
}


def _rescored(db: DB, run: Run) -> dict[str, Any] | None:
    if service.run_status(db, run) != RunStatus.SUCCEEDED:
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
def api_create_run(body: RunIn, db: DB, user: Reviewer, settings: AppSettings) -> RunCreated:
    run, job = service.create_run(db, body=body, user_id=user.id, settings=settings)
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


async def _predict_form(request: Request) -> AsyncIterator[FormData]:
    """The images, parsed under ERRORBOOK_PREDICT_MAX_FILES before the auth dependency would parse them with
    looser defaults; requests without any credentials are refused before their body is read."""
    if not request.headers.get("authorization") and SESSION_COOKIE not in request.cookies:
        raise NotAuthenticated("log in first")
    settings: Settings = request.app.state.settings
    try:
        form = await request.form(
            max_files=settings.predict_max_files,
            max_fields=settings.max_form_fields,
            max_part_size=settings.max_part_bytes,
        )
    except HTTPException as error:
        if "too many files" in str(error.detail).lower():
            raise predict.too_many_files(settings.predict_max_files) from None
        raise
    try:
        yield form
    finally:
        await form.close()


def _opener(part: UploadFile) -> predict.Opener:
    def open_file() -> Any:
        part.file.seek(0)
        return part.file

    return open_file


@router.post("/api/runs/{run_id}/predict", response_model=PredictOut, openapi_extra=PREDICT_BODY)
@reads_only
def api_predict(
    request: Request,
    run_id: int,
    form: Annotated[FormData, Depends(_predict_form, scope="function")],
    db: DB,
    user: Viewer,
) -> PredictOut:
    """Top-5 labels for each image in the multipart field `files`; nothing is stored."""
    parts = [part for part in form.getlist("files") if isinstance(part, UploadFile)]
    files = [((part.filename or "").replace("%22", '"'), _opener(part)) for part in parts]
    state = request.app.state
    return predict.predict(db, run_id=run_id, files=files, settings=state.settings, artefacts=state.blobs.artefacts)


@router.get("/api/runs/{run_id}/files/{name}")
def api_run_file(run_id: int, name: str, request: Request, db: DB, user: Viewer) -> Response:
    path = service.model_file(db, run_id=run_id, name=name, artefacts=request.app.state.blobs.artefacts)
    return FileResponse(path, filename=f"run-{run_id}-{name}", media_type="application/octet-stream")


# -- pages -----------------------------------------------------------------------------------------------


@router.get("/runs", include_in_schema=False)
def runs_page(request: Request, db: DB, user: Viewer, dataset_id: int | None = None) -> Response:
    return render(
        request,
        "training/list.html",
        {
            "rows": service.runs_table(db, dataset_id=dataset_id),
            "dataset_id": dataset_id,
            "datasets": service.datasets_with_runs(db),
        },
    )


@router.get("/datasets/{dataset_id}/runs", include_in_schema=False)
def dataset_runs(dataset_id: int, user: Viewer) -> Response:
    return RedirectResponse(f"/runs?dataset_id={dataset_id}", status_code=303)


@router.get("/runs/new", include_in_schema=False)
def new_run_page(request: Request, db: DB, user: Reviewer, split_id: int | None = None) -> Response:
    from app.splits import service as splits

    split = splits.get_split(db, split_id=split_id) if split_id else None
    if split is not None and split.status != SplitStatus.READY:
        raise Conflict(f"split v{split.version} is {split.status}; pick a ready split to train on")
    train_size = int(split.counts.get("train", {}).get("total", 0)) if split else 0
    proposal = propose_mode(train_size=train_size)
    finished = [
        r
        for r in service.runs_of(db, dataset_id=split.dataset_id if split else None)
        if r.status == RunStatus.SUCCEEDED
    ]
    return render(
        request,
        "training/new.html",
        {
            "split": split,
            "splits": service.split_choices(db, dataset_id=split.dataset_id) if split else [],
            "proposal": proposal,
            "modes": list(TrainingMode),
            "backbones": backbone_choices(),
            "dataset": service.dataset_of(db, dataset_id=split.dataset_id) if split else None,
            "previous_runs": finished,
            "defaults": RunIn(dataset_id=split.dataset_id if split else 0, split_id=split_id or 0, mode=proposal.mode),
        },
    )


@router.post("/runs", include_in_schema=False)
def create_run_form(
    request: Request, form: Annotated[RunIn, Form()], db: DB, user: Reviewer, settings: AppSettings
) -> Response:
    run, _job = service.create_run(db, body=form, user_id=user.id, settings=settings)
    return RedirectResponse(f"/runs/{run.id}", status_code=303)


def _run_context(request: Request, db: DB, run_id: int) -> dict[str, Any]:
    run = service.get_run(db, run_id=run_id)
    status = service.run_status(db, run)
    return {
        "predict_max_files": request.app.state.settings.predict_max_files,
        "run": run,
        "status": status,
        "job": jobs.get_job(db, job_id=run.job_id) if run.job_id else None,
        "is_baseline": service.is_baseline(db, run),
        "dataset": service.dataset_of(db, dataset_id=run.dataset_id),
        "rescored": _rescored(db, run),
        "gap_note": lambda gap, value: gap_note(gap, value, has_train_dev="train_dev" in (run.metrics or {})),
        "timing_lines": timing_lines(run.timings or {}),
    }


@router.get("/runs/{run_id}", include_in_schema=False)
def run_page(request: Request, run_id: int, db: DB, user: Viewer) -> Response:
    return render(request, "training/detail.html", _run_context(request, db, run_id))


@router.get("/runs/{run_id}/live", include_in_schema=False)
def run_live(request: Request, run_id: int, db: DB, user: Viewer) -> Response:
    """The part of the run page that updates while it trains (progress, curves)."""
    context = _run_context(request, db, run_id)
    response = render(request, "training/detail.html", {**context, "live_only": True}, block="live")
    if context["status"] not in UNFINISHED:
        # Only a page that was polling asks: its header (status, error analysis, review, model links) is stale.
        response.headers["HX-Refresh"] = "true"
    return response


@router.post("/runs/{run_id}/baseline", include_in_schema=False)
def run_baseline(request: Request, run_id: int, db: DB, user: Reviewer) -> Response:
    service.set_baseline(db, run_id=run_id)
    return RedirectResponse(f"/runs/{run_id}", status_code=303)
