"""HTTP routes (pages and JSON API) for splits; thin: parse, call the service, render."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response, StreamingResponse

from app.datasets.logic import csv_safe_cell
from app.jobs import service as jobs
from app.jobs import states as job_states
from app.jobs.states import JobStatus
from app.models import Split
from app.splits import service
from app.splits.logic import (
    FORM_DEFAULTS,
    WHOLE_NUMBER_FIELDS,
    export_path,
    params_from_dict,
    read_split_form,
    stream_zip,
)
from app.splits.schemas import PreviewOut, SplitCreated, SplitIn, SplitOut
from app.splits.states import UNFINISHED, SplitStatus
from app.web.deps import DB, AppSettings, Reviewer, Viewer, reads_only
from app.web.templating import render

router = APIRouter()


def _params(body: SplitIn) -> Any:
    return params_from_dict(body.model_dump(exclude={"dry_run"}))


def _status(db: DB, split: Split) -> str:
    """A split whose job ended without building it is reported as failed, with the job saying why."""
    if split.status in UNFINISHED and split.job_id:
        job = jobs.get_job(db, job_id=split.job_id)
        if job.status in job_states.UNSUCCESSFUL:
            return job.status
        if job.status == JobStatus.RUNNING:  # the job bar beside it says running: so does the split
            return SplitStatus.BUILDING
    return split.status


def _split_out(db: DB, split: Split) -> SplitOut:
    return SplitOut(
        id=split.id,
        dataset_id=split.dataset_id,
        version=split.version,
        parent_id=split.parent_id,
        status=_status(db, split),
        params=split.params,
        counts=split.counts,
        groups=split.groups,
        warnings=split.warnings,
        job_id=split.job_id,
    )


@router.post("/api/datasets/{dataset_id}/splits", response_model=None)
def api_create_split(
    request: Request, dataset_id: int, body: SplitIn, db: DB, user: Reviewer, settings: AppSettings
) -> Response:
    if body.dry_run:
        preview = service.preview(
            db,
            dataset_id=dataset_id,
            params=_params(body),
            blobs=request.app.state.blobs,
            store=request.app.state.split_inputs,
        )
        out = PreviewOut(counts=preview.counts, warnings=preview.warnings, groups=preview.groups)
        return JSONResponse(out.model_dump(), status_code=200)
    split, job = service.create_split(
        db, dataset_id=dataset_id, params=_params(body), user_id=user.id, max_attempts=settings.job_max_attempts
    )
    return JSONResponse(SplitCreated(split_id=split.id, job_id=job.id).model_dump(), status_code=202)


@router.get("/api/datasets/{dataset_id}/splits", response_model=list[SplitOut])
def api_list_splits(dataset_id: int, db: DB, user: Viewer) -> list[SplitOut]:
    return [_split_out(db, s) for s in service.splits_of(db, dataset_id=dataset_id)]


@router.get("/api/splits/{split_id}", response_model=SplitOut)
def api_get_split(split_id: int, db: DB, user: Viewer) -> SplitOut:
    return _split_out(db, service.get_split(db, split_id=split_id))


@router.post("/api/splits/{split_id}/extend", response_model=SplitCreated, status_code=202)
def api_extend_split(split_id: int, db: DB, user: Reviewer, settings: AppSettings) -> SplitCreated:
    split, job = service.extend_split(db, split_id=split_id, user_id=user.id, max_attempts=settings.job_max_attempts)
    return SplitCreated(split_id=split.id, job_id=job.id)


def _manifest(sessions: Any, split_id: int) -> Iterator[str]:
    # Streams after the request's own session closed, so it reads through a session of its own.
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["filename", "label", "source", "subset", "sha256"])
    with sessions() as session:
        for count, row in enumerate(service.manifest_lines(session, split_id=split_id), 1):
            writer.writerow([csv_safe_cell(value) for value in row])
            if count % 2000 == 0:
                yield buffer.getvalue()
                buffer.seek(0)
                buffer.truncate()
    yield buffer.getvalue()


@router.get("/api/splits/{split_id}/manifest.csv")
def api_manifest(split_id: int, request: Request, db: DB, user: Viewer) -> Response:
    split = service.ready_split(db, split_id=split_id)
    name = f"split-{split.dataset_id}-v{split.version}.csv"
    return StreamingResponse(
        _manifest(request.app.state.session_maker, split_id),
        media_type="text/csv; charset=utf-8",
        headers={"content-disposition": f'attachment; filename="{name}"'},
    )


@router.get("/api/splits/{split_id}/export.zip")
def api_export(split_id: int, request: Request, db: DB, user: Viewer) -> Response:
    split = service.ready_split(db, split_id=split_id)
    blobs = request.app.state.blobs
    service.check_export_files(db, split_id=split_id, blobs=blobs)

    def entries() -> Iterator[tuple[str, Any]]:
        taken: set[str] = set()
        with request.app.state.session_maker() as session:
            for subset, label, filename, sha in service.export_rows(session, split_id=split_id):
                path = export_path(subset=subset, label=label, filename=filename, sha256=sha, taken=taken)
                yield path, (lambda sha=sha: blobs.open(sha))

    name = f"split-{split.dataset_id}-v{split.version}.zip"
    return StreamingResponse(
        stream_zip(entries()),
        media_type="application/zip",
        headers={"content-disposition": f'attachment; filename="{name}"'},
    )


# -- pages -----------------------------------------------------------------------------------------------


ERROR_FIELDS = (*WHOLE_NUMBER_FIELDS, "target_train_fraction", "train_dev_fraction", "ratios")


async def _form_fields(request: Request) -> dict[str, str]:
    """The form's text fields (read once; Starlette caches the parsed form for the CSRF check too)."""
    form = await request.form()
    return {key: value for key, value in form.items() if isinstance(value, str)}


FormFields = Annotated[dict[str, str], Depends(_form_fields)]


def _list_context(db: DB, dataset_id: int, form: dict[str, str], problems: dict[str, str]) -> dict[str, Any]:
    dataset = service.get_dataset(db, dataset_id=dataset_id)
    return {
        "dataset": dataset,
        "splits": [(s, _status(db, s)) for s in service.splits_of(db, dataset_id=dataset_id)],
        "sources": service.dataset_sources(db, dataset_id=dataset_id),
        "defaults": {**FORM_DEFAULTS, "target_source": dataset.target_source or "", **form},
        "problems": problems,
        "error_fields": ERROR_FIELDS,
    }


@router.get("/datasets/{dataset_id}/splits", include_in_schema=False)
def splits_page(request: Request, dataset_id: int, db: DB, user: Viewer) -> Response:
    return render(request, "splits/list.html", _list_context(db, dataset_id, {}, {}))


@router.post("/datasets/{dataset_id}/splits/preview", include_in_schema=False)
@reads_only
def splits_preview(request: Request, dataset_id: int, form: FormFields, db: DB, user: Reviewer) -> Response:
    """The preview of what the form would make; a field it cannot use gets its message beside it instead."""
    values, problems = read_split_form(form)
    context: dict[str, Any] = {"problems": problems, "error_fields": ERROR_FIELDS, "preview": None}
    if not problems:
        store = request.app.state.split_inputs
        context["preview"] = service.preview(
            db, dataset_id=dataset_id, params=params_from_dict(values), blobs=request.app.state.blobs, store=store
        )
    return render(request, "splits/_preview.html", context)


@router.post("/datasets/{dataset_id}/splits", include_in_schema=False)
def splits_create(
    request: Request, dataset_id: int, form: FormFields, db: DB, user: Reviewer, settings: AppSettings
) -> Response:
    values, problems = read_split_form(form)
    if problems:  # the form again, as typed, each problem beside its field
        context = _list_context(db, dataset_id, form, problems)
        return render(request, "splits/list.html", context, status_code=422)
    params = params_from_dict(values)
    split, _job = service.create_split(
        db, dataset_id=dataset_id, params=params, user_id=user.id, max_attempts=settings.job_max_attempts
    )
    return RedirectResponse(f"/splits/{split.id}", status_code=303)


@router.get("/splits/{split_id}", include_in_schema=False)
def split_page(request: Request, split_id: int, db: DB, user: Viewer) -> Response:
    split = service.get_split(db, split_id=split_id)
    return render(
        request,
        "splits/detail.html",
        {
            "split": split,
            "status": _status(db, split),
            "job": jobs.get_job(db, job_id=split.job_id) if split.job_id else None,
            "dataset": service.get_dataset(db, dataset_id=split.dataset_id),
            "subsets": service.subset_names(),
        },
    )


@router.post("/splits/{split_id}/extend", include_in_schema=False)
def split_extend(request: Request, split_id: int, db: DB, user: Reviewer, settings: AppSettings) -> Response:
    split, _job = service.extend_split(db, split_id=split_id, user_id=user.id, max_attempts=settings.job_max_attempts)
    return RedirectResponse(f"/splits/{split.id}", status_code=303)
