"""HTTP routes (pages and JSON API) for datasets; thin: parse, call the service, render."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from typing import Annotated, Any, BinaryIO, Literal
from urllib.parse import quote, urlencode

from fastapi import APIRouter, BackgroundTasks, Depends, Form, Query, Request
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse, Response, StreamingResponse
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData, UploadFile

from app.core.errors import Invalid, NotAuthenticated
from app.core.settings import Settings
from app.core.storage import BlobStore
from app.datasets import discard, service
from app.datasets.schemas import (
    ChunkOut,
    ConflictIn,
    DatasetCreated,
    DatasetIn,
    DatasetListItem,
    DatasetOut,
    DatasetPatch,
    HaveIn,
    HaveOut,
    ImageOut,
    ImagePageOut,
    LabelIn,
    LabelOut,
    StagedOut,
    UploadOpened,
    UploadOpenIn,
    UploadOut,
    UploadStarted,
)
from app.labels import service as labels
from app.ml.splitting import SUBSETS
from app.models import User
from app.web.deps import DB, SESSION_COOKIE, Reviewer, Viewer
from app.web.templating import is_htmx, render

router = APIRouter()
PAGE_SIZE = 60
# Image bytes behind an id never change; the sandbox keeps a hostile file inert even if opened directly.
IMAGE_HEADERS = {
    "cache-control": "private, max-age=31536000, immutable",
    "content-security-policy": "default-src 'none'; sandbox",
}


def _settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def _blobs(request: Request) -> BlobStore:
    blobs: BlobStore = request.app.state.blobs
    return blobs


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


# ---- datasets API ---------------------------------------------------------------------------------------


@router.post("/api/datasets", response_model=DatasetCreated, status_code=201)
def api_create_dataset(body: DatasetIn, db: DB, user: Reviewer) -> DatasetCreated:
    dataset = service.create_dataset(db, name=body.name, description=body.description, user_id=user.id)
    return DatasetCreated(id=dataset.id, name=dataset.name)


@router.get("/api/datasets", response_model=list[DatasetListItem])
def api_list_datasets(db: DB, user: Viewer) -> list[DatasetListItem]:
    return [
        DatasetListItem(id=d.id, name=d.name, description=d.description, image_count=n, target_source=d.target_source)
        for d, n in service.list_datasets(db)
    ]


@router.get("/api/datasets/{dataset_id}", response_model=DatasetOut)
def api_dataset(dataset_id: int, db: DB, user: Viewer) -> DatasetOut:
    return DatasetOut.of(service.dataset_summary(db, dataset_id=dataset_id))


@router.patch("/api/datasets/{dataset_id}", response_model=DatasetOut)
def api_update_dataset(dataset_id: int, body: DatasetPatch, db: DB, user: Reviewer) -> DatasetOut:
    service.update_dataset(db, dataset_id=dataset_id, changes=body.model_dump(exclude_unset=True))
    return DatasetOut.of(service.dataset_summary(db, dataset_id=dataset_id))


@router.get("/api/datasets/{dataset_id}/labels", response_model=list[LabelOut])
def api_labels(dataset_id: int, db: DB, user: Viewer) -> list[LabelOut]:
    summary = service.dataset_summary(db, dataset_id=dataset_id)
    return [LabelOut(id=label.id, name=label.name, images=label.images) for label in summary.labels]


@router.post("/api/datasets/{dataset_id}/labels", response_model=LabelOut, status_code=201)
def api_add_label(dataset_id: int, body: LabelIn, db: DB, user: Reviewer) -> LabelOut:
    label = service.add_label(db, dataset_id=dataset_id, name=body.name, user_id=user.id)
    return LabelOut(id=label.id, name=label.name, images=0)


@router.patch("/api/datasets/{dataset_id}/labels/{label_id}", response_model=LabelOut)
def api_rename_label(dataset_id: int, label_id: int, body: LabelIn, db: DB, user: Reviewer) -> LabelOut:
    label = service.rename_label(db, dataset_id=dataset_id, label_id=label_id, name=body.name, user_id=user.id)
    return LabelOut(id=label.id, name=label.name)


@router.get("/api/datasets/{dataset_id}/images", response_model=ImagePageOut)
def api_images(
    dataset_id: int,
    db: DB,
    user: Viewer,
    label: str | None = None,
    source: str | None = None,
    subset: str | None = None,
    split_id: int | None = None,
    q: str | None = None,
    unlabeled: bool = False,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> ImagePageOut:
    """The dataset's images, newest first; `unlabeled=true`: only those without a label (the pool)."""
    query = service.ImageQuery(label=label, source=source, subset=subset, split_id=split_id, q=q, unlabeled=unlabeled)
    page = service.list_images(db, dataset_id=dataset_id, query=query, limit=limit, offset=offset)
    return ImagePageOut.model_validate(page)


@router.get("/api/images/{image_id}", response_model=ImageOut)
def api_image(image_id: int, db: DB, user: Viewer) -> ImageOut:
    return ImageOut.of(service.image_detail(db, image_id=image_id))


def _image_response(request: Request, db: DB, image_id: int, kind: Literal["thumb", "full"]) -> Response:
    found = service.image_file(db, image_id=image_id, kind=kind, blobs=_blobs(request))
    etag = f'"{found.sha256}"'
    if request.headers.get("if-none-match") == etag:
        return Response(status_code=304, headers={"etag": etag, **IMAGE_HEADERS})
    return FileResponse(
        _blobs(request).path(found.sha256),
        media_type=found.media_type,
        headers={
            "etag": etag,
            "content-disposition": f"inline; filename*=UTF-8''{quote(found.filename)}",
            **IMAGE_HEADERS,
        },
    )


@router.get("/images/{image_id}/thumb", include_in_schema=False)
def image_thumb(request: Request, image_id: int, db: DB, user: Viewer) -> Response:
    return _image_response(request, db, image_id, "thumb")


@router.get("/images/{image_id}/full", include_in_schema=False)
def image_full(request: Request, image_id: int, db: DB, user: Viewer) -> Response:
    return _image_response(request, db, image_id, "full")


def _csv_download(request: Request, name: str, pieces: Callable[[Session], Iterator[str]]) -> StreamingResponse:
    """Stream a CSV after the request's own session closed, reading through a session of its own."""

    def stream() -> Iterator[str]:
        with request.app.state.session_maker() as session:
            yield from pieces(session)

    return StreamingResponse(
        stream(),
        media_type="text/csv; charset=utf-8",
        headers={"content-disposition": f'attachment; filename="{name}"'},
    )


@router.get("/api/datasets/{dataset_id}/images.csv", response_model=None)
def api_images_csv(request: Request, dataset_id: int, db: DB, user: Viewer) -> StreamingResponse:
    service.get_dataset(db, dataset_id=dataset_id)
    return _csv_download(
        request, f"dataset-{dataset_id}-images.csv", lambda session: service.images_csv(session, dataset_id=dataset_id)
    )


@router.get("/api/uploads/{upload_id}/report.csv", response_model=None)
def api_report_csv(request: Request, upload_id: int, db: DB, user: Viewer) -> StreamingResponse:
    service.get_upload(db, upload_id=upload_id)
    return _csv_download(
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
    """One request: files (images or .zip), optional label, source and labels_csv, or unlabeled=true (stored
    without labels, the pool); ingested by a job."""
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
    upload, resumed = service.start_upload(
        db,
        dataset_id=dataset_id,
        user_id=user.id,
        source=body.source,
        label=body.label,
        resume=body.resume,
        unlabeled=body.unlabeled,
    )
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
    received = await run_in_threadpool(
        service.append_chunk,
        db,
        upload_id=upload_id,
        name=name,
        sha256=sha256,
        size=size,
        offset=offset,
        target=target,
        blobs=_blobs(request),
        user=user,
    )
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
def api_retry_upload(upload_id: int, db: DB, user: Reviewer) -> UploadStarted:
    job = service.retry_upload(db, upload_id=upload_id, user_id=user.id)
    return UploadStarted(upload_id=upload_id, job_id=job.id)


@router.delete("/api/uploads/{upload_id}", status_code=204)
def api_discard_upload(
    request: Request, upload_id: int, db: DB, user: Reviewer, background: BackgroundTasks
) -> Response:
    """Drop an open, failed or cancelled upload and release its bytes (the images it added stay)."""
    unused = discard.discard_upload(db, upload_id=upload_id, settings=_settings(request), user=user)
    background.add_task(service.delete_blobs, _blobs(request), unused)  # after the commit, never before
    return Response(status_code=204)


@router.post("/api/uploads/{upload_id}/conflicts/{entry_id}", response_model=None)
def api_resolve_conflict(upload_id: int, entry_id: int, body: ConflictIn, db: DB, user: Reviewer) -> JSONResponse:
    entry = service.resolve_conflict(db, upload_id=upload_id, entry_id=entry_id, keep=body.keep, user_id=user.id)
    return JSONResponse({"entry_id": entry.id, "outcome": entry.outcome, "reason": entry.reason})


# ---- pages ----------------------------------------------------------------------------------------------


@router.get("/datasets", include_in_schema=False)
def datasets_page(request: Request, db: DB, user: Viewer) -> Response:
    return render(request, "datasets/list.html", {"datasets": service.list_datasets(db)})


@router.post("/datasets", include_in_schema=False)
def datasets_create(
    db: DB, user: Reviewer, name: Annotated[str, Form()], description: Annotated[str, Form()] = ""
) -> Response:
    dataset = service.create_dataset(db, name=name, description=description, user_id=user.id)
    return RedirectResponse(f"/datasets/{dataset.id}", status_code=303)


def _grid_context(db: DB, dataset_id: int, params: dict[str, Any]) -> dict[str, Any]:
    query = service.ImageQuery(
        label=params.get("label") or None,
        source=params.get("source") or None,
        subset=params.get("subset") or None,
        split_id=int(params["split_id"]) if str(params.get("split_id") or "").isdigit() else None,
        q=params.get("q") or None,
        unlabeled=params.get("unlabeled") == "true",
    )
    offset = int(params["offset"]) if str(params.get("offset") or "").isdigit() else 0
    page = service.list_images(db, dataset_id=dataset_id, query=query, limit=PAGE_SIZE, offset=offset)
    filters = {key: value for key, value in params.items() if key != "offset" and value}

    def page_url(new_offset: int) -> str:
        return f"/datasets/{dataset_id}?" + urlencode({**filters, "offset": new_offset})

    counts = page.split.counts if page.split else {}
    return {
        "page": page,
        "query": query,
        "filters": filters,
        "subsets": [s for s in SUBSETS if not counts or counts.get(s, {}).get("total")],  # no empty train-dev
        "splits": service.splits_of(db, dataset_id=dataset_id),
        "previous_url": page_url(max(0, page.offset - page.limit)) if page.offset > 0 else None,
        "next_url": page_url(page.offset + page.limit) if page.offset + page.limit < page.total else None,
    }


@router.get("/datasets/{dataset_id}", include_in_schema=False)
def dataset_page(
    request: Request,
    dataset_id: int,
    db: DB,
    user: Viewer,
    label: str = "",
    source: str = "",
    subset: str = "",
    split_id: str = "",
    q: str = "",
    offset: str = "",
    unlabeled: str = "",
) -> Response:
    params = {"label": label, "source": source, "subset": subset, "split_id": split_id, "q": q, "offset": offset}
    params["unlabeled"] = unlabeled
    grid = _grid_context(db, dataset_id, params)
    if is_htmx(request) and request.headers.get("hx-target") == "image-grid":
        return render(request, "datasets/detail.html", grid, block="grid")  # filters and pages: the grid only
    summary = service.dataset_summary(db, dataset_id=dataset_id)
    return render(
        request,
        "datasets/detail.html",
        {
            "summary": summary,
            "events": labels.label_events(db, dataset_id=dataset_id, limit=20),
            "uploads": service.uploads_of(db, dataset_id=dataset_id),
            **grid,
        },
    )


@router.post("/datasets/{dataset_id}/target", include_in_schema=False)
def dataset_set_target(dataset_id: int, db: DB, user: Reviewer, target_source: Annotated[str, Form()] = "") -> Response:
    service.update_dataset(db, dataset_id=dataset_id, changes={"target_source": target_source or None})
    return RedirectResponse(f"/datasets/{dataset_id}", status_code=303)


@router.post("/datasets/{dataset_id}/labels", include_in_schema=False)
def dataset_add_label(dataset_id: int, db: DB, user: Reviewer, name: Annotated[str, Form()]) -> Response:
    service.add_label(db, dataset_id=dataset_id, name=name, user_id=user.id)
    return RedirectResponse(f"/datasets/{dataset_id}#labels", status_code=303)


@router.post("/datasets/{dataset_id}/labels/{label_id}/rename", include_in_schema=False)
def dataset_rename_label(
    dataset_id: int, label_id: int, db: DB, user: Reviewer, name: Annotated[str, Form()]
) -> Response:
    service.rename_label(db, dataset_id=dataset_id, label_id=label_id, name=name, user_id=user.id)
    return RedirectResponse(f"/datasets/{dataset_id}#labels", status_code=303)


@router.get("/datasets/{dataset_id}/upload", include_in_schema=False)
def upload_page(request: Request, dataset_id: int, db: DB, user: Reviewer) -> Response:
    summary = service.dataset_summary(db, dataset_id=dataset_id)
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
def upload_retry(upload_id: int, db: DB, user: Reviewer) -> Response:
    service.retry_upload(db, upload_id=upload_id, user_id=user.id)
    return RedirectResponse(f"/uploads/{upload_id}", status_code=303)


@router.post("/uploads/{upload_id}/conflicts/{entry_id}", include_in_schema=False)
def upload_resolve_conflict(
    upload_id: int, entry_id: int, db: DB, user: Reviewer, keep: Annotated[Literal["existing", "new"], Form()]
) -> Response:
    service.resolve_conflict(db, upload_id=upload_id, entry_id=entry_id, keep=keep, user_id=user.id)
    return RedirectResponse(f"/uploads/{upload_id}#conflicts", status_code=303)


@router.get("/images/{image_id}", include_in_schema=False)
def image_page(request: Request, image_id: int, db: DB, user: Viewer) -> Response:
    return render(request, "datasets/image.html", {"detail": service.image_detail(db, image_id=image_id)})
