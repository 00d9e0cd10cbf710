"""HTTP routes (pages and JSON API) for uploads: staging files in batches or resumable chunks, finishing,
retrying, discarding, conflicts and reports; thin: parse, call the service, render."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Annotated, Any, BinaryIO, Literal

from fastapi import APIRouter, BackgroundTasks, Depends, Form, Query, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response, StreamingResponse
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData, UploadFile

from app.core.errors import Invalid, NotAuthenticated
from app.core.storage import delete_blobs
from app.datasets import service as datasets
from app.datasets.router import csv_download
from app.labels import service as labels
from app.models import User
from app.uploads import service
from app.uploads.schemas import (
    ChunkOut,
    ConflictIn,
    HaveIn,
    HaveOut,
    StagedOut,
    UploadOpened,
    UploadOpenIn,
    UploadOut,
    UploadStarted,
)
from app.web.deps import DB, SESSION_COOKIE, Reviewer, Viewer
from app.web.deps import get_blobs_dep as _blobs
from app.web.deps import get_settings_dep as _settings
from app.web.templating import render

router = APIRouter()


async def _upload_form(request: Request) -> AsyncIterator[FormData]:
    """A multipart upload parsed under the configured limits (Starlette answers 400 past them and removes its
    temporary files); it runs before the auth dependency, which would otherwise parse it with looser defaults,
    so requests without any credentials are refused before their body is read."""
    if not request.headers.get("authorization") and SESSION_COOKIE not in request.cookies:
        raise NotAuthenticated("log in first")
    settings = _settings(request)
    form = await request.form(
        max_files=settings.max_upload_files,
        max_fields=settings.max_form_fields,
        max_part_size=settings.max_part_bytes,
    )
    try:
        yield form
    finally:
        await form.close()


UploadForm = Annotated[FormData, Depends(_upload_form, scope="function")]


def _multipart_body(*fields: str, files: bool = True) -> dict[str, Any]:
    """The OpenAPI description of a form parsed by `_upload_form` (FastAPI cannot see it), so clients and the
    schema fuzzer know these routes take multipart bodies."""
    properties: dict[str, Any] = {name: {"type": "string"} for name in fields}
    if files:
        properties["files"] = {"type": "array", "items": {"type": "string", "format": "binary"}}
    if "labels_csv" in properties:
        properties["labels_csv"] = {"type": "string", "format": "binary"}
    schema = {"type": "object", "properties": properties}
    return {"requestBody": {"content": {"multipart/form-data": {"schema": schema}}}}


CHUNK_BODY = {
    "requestBody": {
        "required": True,
        "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
    }
}


def _text(form: FormData, name: str) -> str | None:
    value = form.get(name)
    return value if isinstance(value, str) else None


def _opener(upload: UploadFile) -> Callable[[], BinaryIO]:
    def open_file() -> BinaryIO:
        upload.file.seek(0)
        return upload.file

    return open_file


def _file_name(part: UploadFile) -> str:
    # Browsers (and httpx) send a double quote in a multipart file name as %22 (the HTML form encoding).
    return (part.filename or "").replace("%22", '"')


def _stage_form_files(db: DB, request: Request, upload_id: int, form: FormData, user: User) -> service.StageCounts:
    service.check_can_add_files(db, upload_id=upload_id, user=user)  # before a byte is stored
    files = [part for part in form.getlist("files") if isinstance(part, UploadFile)]
    stored = service.store_files(
        _blobs(request),
        [(_file_name(part), _opener(part)) for part in files if not service.is_skipped(_file_name(part))],
    )
    counts = service.stage_files(db, upload_id=upload_id, files=stored, user=user)
    counts.skipped += len(files) - len(stored)
    return counts


def _labels_csv(form: FormData) -> bytes | None:
    part = form.get("labels_csv")
    if not isinstance(part, UploadFile) or not (part.filename or part.size):
        return None
    part.file.seek(0)
    data = part.file.read(16 * 2**20 + 1)
    if len(data) > 16 * 2**20:
        raise Invalid("a labels CSV may have at most 16 MiB")
    return data


@router.get("/api/uploads/{upload_id}/report.csv", response_model=None)
def api_report_csv(request: Request, upload_id: int, db: DB, user: Viewer) -> StreamingResponse:
    service.get_upload(db, upload_id=upload_id)
    return csv_download(
        request, f"upload-{upload_id}-report.csv", lambda session: service.report_csv(session, upload_id=upload_id)
    )


# ---- uploads API ----------------------------------------------------------------------------------------


@router.post(
    "/api/datasets/{dataset_id}/uploads",
    response_model=UploadStarted,
    status_code=202,
    openapi_extra=_multipart_body("label", "source", "labels_csv", "unlabeled"),
)
def api_upload(request: Request, dataset_id: int, form: UploadForm, db: DB, user: Reviewer) -> UploadStarted:
    """One request: files (images or .zip), optional label, source and labels_csv; ingested by a job."""
    labels_csv = _labels_csv(form)
    unlabeled = (_text(form, "unlabeled") or "").strip().lower() in ("true", "1", "on", "yes")
    # Before storing the files:
    service.check_upload_fields(label=_text(form, "label"), labels_csv=labels_csv, unlabeled=unlabeled)
    upload, _ = service.start_upload(
        db,
        dataset_id=dataset_id,
        user_id=user.id,
        source=_text(form, "source"),
        label=_text(form, "label"),
        resume=False,
        unlabeled=unlabeled,
    )
    _stage_form_files(db, request, upload.id, form, user)
    job = service.finish_upload(
        db,
        upload_id=upload.id,
        user_id=user.id,
        blobs=_blobs(request),
        settings=_settings(request),
        labels_csv=labels_csv,
        user=user,
    )
    return UploadStarted(upload_id=upload.id, job_id=job.id)


@router.post("/api/datasets/{dataset_id}/uploads/open", response_model=UploadOpened)
def api_open_upload(dataset_id: int, body: UploadOpenIn, db: DB, user: Reviewer) -> UploadOpened:
    """Start an upload the browser fills in batches, or resume this user's unfinished one."""
    upload, resumed = service.start_upload(db, dataset_id=dataset_id, user_id=user.id, **body.model_dump())
    return UploadOpened(upload_id=upload.id, resumed=resumed, files=service.file_count(db, upload_id=upload.id))


@router.get("/api/uploads/{upload_id}", response_model=UploadOut)
def api_upload_report(
    upload_id: int, db: DB, user: Viewer, limit: Annotated[int, Query(ge=1, le=5000)] = 500
) -> UploadOut:
    return UploadOut.of(service.upload_report(db, upload_id=upload_id, limit=limit))


@router.post("/api/uploads/{upload_id}/have", response_model=HaveOut)
def api_have(request: Request, upload_id: int, body: HaveIn, db: DB, user: Reviewer) -> HaveOut:
    answer = service.have(
        db,
        upload_id=upload_id,
        files=[(claim.name, claim.sha256, claim.size) for claim in body.files],
        blobs=_blobs(request),
        settings=_settings(request),
        user=user,
    )
    return HaveOut(**vars(answer))


@router.post("/api/uploads/{upload_id}/files", response_model=StagedOut, openapi_extra=_multipart_body())
def api_stage_files(request: Request, upload_id: int, form: UploadForm, db: DB, user: Reviewer) -> StagedOut:
    return StagedOut(**vars(_stage_form_files(db, request, upload_id, form, user)))


@router.post("/api/uploads/{upload_id}/chunks", response_model=ChunkOut, openapi_extra=CHUNK_BODY)
async def api_chunk(
    request: Request,
    upload_id: int,
    db: DB,
    user: Reviewer,
    name: str,
    sha256: str,
    size: int,
    offset: Annotated[int, Query(ge=0)],
) -> ChunkOut:
    """One piece of a big file (a zip), appended in order; a dropped connection resumes at `received`."""
    target = await run_in_threadpool(
        service.chunk_target,
        db,
        upload_id=upload_id,
        name=name,
        sha256=sha256,
        size=size,
        offset=offset,
        settings=_settings(request),
        user=user,
    )
    await service.receive_chunk(target, request.stream())
    received = await run_in_threadpool(service.append_chunk, db, target=target, blobs=_blobs(request), user=user)
    return ChunkOut(received=received, complete=received == size)


@router.post(
    "/api/uploads/{upload_id}/finish",
    response_model=UploadStarted,
    status_code=202,
    openapi_extra=_multipart_body("label", "source", "labels_csv", files=False),
)
def api_finish_upload(request: Request, upload_id: int, form: UploadForm, db: DB, user: Reviewer) -> UploadStarted:
    job = service.finish_upload(
        db,
        upload_id=upload_id,
        user_id=user.id,
        blobs=_blobs(request),
        settings=_settings(request),
        label=_text(form, "label"),
        source=_text(form, "source"),
        labels_csv=_labels_csv(form),
        user=user,
    )
    return UploadStarted(upload_id=upload_id, job_id=job.id)


@router.post("/api/uploads/{upload_id}/retry", response_model=UploadStarted, status_code=202)
def api_retry_upload(request: Request, upload_id: int, db: DB, user: Reviewer) -> UploadStarted:
    max_attempts = _settings(request).job_max_attempts
    job = service.retry_upload(db, upload_id=upload_id, user_id=user.id, max_attempts=max_attempts)
    return UploadStarted(upload_id=upload_id, job_id=job.id)


@router.delete("/api/uploads/{upload_id}", status_code=204)
def api_discard_upload(
    request: Request, upload_id: int, db: DB, user: Reviewer, background: BackgroundTasks
) -> Response:
    """Drop an open, failed or cancelled upload and release its bytes (the images it added stay)."""
    unused = service.discard_upload(db, upload_id=upload_id, settings=_settings(request), user=user)
    background.add_task(delete_blobs, _blobs(request), unused)  # after the commit, never before
    return Response(status_code=204)


@router.post("/api/uploads/{upload_id}/conflicts/{entry_id}", response_model=None)
def api_resolve_conflict(upload_id: int, entry_id: int, body: ConflictIn, db: DB, user: Reviewer) -> JSONResponse:
    entry = service.resolve_conflict(db, upload_id=upload_id, entry_id=entry_id, keep=body.keep, user_id=user.id)
    return JSONResponse({"entry_id": entry.id, "outcome": entry.outcome, "reason": entry.reason})


# ---- pages ----------------------------------------------------------------------------------------------


@router.get("/datasets/{dataset_id}/upload", include_in_schema=False)
def upload_page(request: Request, dataset_id: int, db: DB, user: Reviewer) -> Response:
    summary = datasets.dataset_summary(db, dataset_id=dataset_id)
    open_upload = service.open_upload_of(db, dataset_id=dataset_id, user_id=user.id)
    report = service.upload_report(db, upload_id=open_upload.id) if open_upload is not None else None
    return render(
        request,
        "datasets/upload.html",
        {
            "summary": summary,
            "open_report": report,
            "chunk_bytes": service.CHUNKED_FILE_BYTES,
        },
    )


def _report_context(db: Session, upload_id: int) -> dict[str, Any]:
    report = service.upload_report(db, upload_id=upload_id)
    alias = labels.alias_of(db, dataset_id=report.upload.dataset_id, name=report.upload.label)
    return {"report": report, "label_alias": alias}


@router.get("/uploads/{upload_id}", include_in_schema=False)
def upload_report_page(request: Request, upload_id: int, db: DB, user: Viewer) -> Response:
    return render(request, "datasets/upload_report.html", _report_context(db, upload_id))


@router.get("/uploads/{upload_id}/panel", include_in_schema=False)
def upload_panel(request: Request, upload_id: int, db: DB, user: Viewer) -> Response:
    return render(request, "datasets/upload_report.html", _report_context(db, upload_id), block="panel")


@router.post("/uploads/{upload_id}/retry", include_in_schema=False)
def upload_retry(request: Request, upload_id: int, db: DB, user: Reviewer) -> Response:
    max_attempts = _settings(request).job_max_attempts
    service.retry_upload(db, upload_id=upload_id, user_id=user.id, max_attempts=max_attempts)
    return RedirectResponse(f"/uploads/{upload_id}", status_code=303)


@router.post("/uploads/{upload_id}/conflicts/{entry_id}", include_in_schema=False)
def upload_resolve_conflict(
    upload_id: int, entry_id: int, db: DB, user: Reviewer, keep: Annotated[Literal["existing", "new"], Form()]
) -> Response:
    service.resolve_conflict(db, upload_id=upload_id, entry_id=entry_id, keep=keep, user_id=user.id)
    return RedirectResponse(f"/uploads/{upload_id}#conflicts", status_code=303)
