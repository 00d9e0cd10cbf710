"""HTTP routes (pages and JSON API) for datasets; thin: parse, call the service, render."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Annotated, Any, Literal
from urllib.parse import quote, urlencode

from fastapi import APIRouter, Form, Query, Request
from fastapi.responses import FileResponse, RedirectResponse, Response, StreamingResponse
from sqlalchemy.orm import Session

from app.core.errors import Invalid
from app.datasets import service
from app.datasets.schemas import (
    DatasetCreated,
    DatasetIn,
    DatasetListItem,
    DatasetOut,
    DatasetPatch,
    ImageOut,
    ImagePageOut,
    LabelIn,
    LabelOut,
)
from app.embeddings import service as embeddings
from app.health.logic import ISSUE_TYPES
from app.labels import service as labels
from app.ml.splitting import SUBSETS
from app.models import User
from app.review import ranking
from app.uploads import service as uploads
from app.web.deps import DB, Reviewer, Viewer
from app.web.deps import get_blobs_dep as _blobs
from app.web.deps import get_settings_dep as _settings
from app.web.selection import selection_actions
from app.web.templating import is_htmx, render

router = APIRouter()
PAGE_SIZE = 60
NEIGHBOURHOOD = 59  # "find more like this": the image and its neighbours fill one page of the grid
# Image bytes behind an id never change; the sandbox keeps a hostile file inert even if opened directly.
IMAGE_HEADERS = {
    "cache-control": "private, max-age=31536000, immutable",
    "content-security-policy": "default-src 'none'; sandbox",
}


# How long a presigned image URL is valid (ERRORBOOK_S3_SERVE=presigned): long enough to load a page of a grid.
PRESIGNED_SECONDS = 300


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


def _neighbourhood(request: Request, db: DB, dataset_id: int, image_id: int | None) -> tuple[int, ...] | None:
    """`similar_to`: the image itself, then its nearest neighbours, most similar first (409 without embeddings)."""
    if image_id is None:
        return None
    return embeddings.neighbourhood(
        db, dataset_id=dataset_id, image_id=image_id, k=NEIGHBOURHOOD, root=request.app.state.blobs.artefacts
    )


@router.get("/api/datasets/{dataset_id}/images", response_model=ImagePageOut)
def api_images(
    request: Request,
    dataset_id: int,
    db: DB,
    user: Viewer,
    label: str | None = None,
    source: str | None = None,
    subset: str | None = None,
    split_id: int | None = None,
    q: str | None = None,
    unlabeled: Annotated[bool, Query(description="only images without a label (the pool)")] = False,
    issue: Annotated[str | None, Query(max_length=24, description="a data-health issue type")] = None,
    sort: Annotated[
        str | None,
        Query(
            max_length=20,
            description="with issue: -score (worst first) or score; with run_id: fused, suspicion, loss or confidence",
        ),
    ] = None,
    similar_to: Annotated[int | None, Query(description="this image and its nearest neighbours")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    offset: Annotated[int, Query(ge=0)] = 0,
    run_id: Annotated[int | None, Query(description="the run whose predictions sort (with sort)")] = None,
) -> ImagePageOut:
    ranked = _ranked(db, request, dataset_id, None if sort in ISSUE_SORTS else sort, run_id)
    query = service.ImageQuery(
        label=label,
        source=source,
        subset=subset,
        split_id=split_id,
        q=q,
        unlabeled=unlabeled,
        issue=issue,
        sort=sort if sort in ISSUE_SORTS else None,
        image_ids=_neighbourhood(request, db, dataset_id, similar_to),
    )
    page = service.list_images(
        db, dataset_id=dataset_id, query=query, limit=limit, offset=offset, ranked=ranked.image_ids if ranked else None
    )
    return ImagePageOut.model_validate(page)


def _ranked(
    db: Session, request: Request, dataset_id: int, sort: str | None, run_id: int | None
) -> ranking.Ranked | None:
    """A run's ranking of the grid (``sort`` with ``run_id``), or None for the newest-first grid."""
    if not sort:
        return None
    if run_id is None:
        raise Invalid("sorting by a run's predictions needs run_id")
    root = request.app.state.blobs.artefacts
    return ranking.rank_run_images(db, dataset_id=dataset_id, run_id=run_id, by=sort, root=root)


@router.get("/api/images/{image_id}", response_model=ImageOut)
def api_image(image_id: int, db: DB, user: Viewer) -> ImageOut:
    return ImageOut.of(service.image_detail(db, image_id=image_id))


def _image_response(request: Request, db: DB, image_id: int, kind: Literal["thumb", "full"]) -> Response:
    found = service.image_file(db, image_id=image_id, kind=kind, blobs=_blobs(request))
    etag = f'"{found.sha256}"'
    if request.headers.get("if-none-match") == etag:
        return Response(status_code=304, headers={"etag": etag, **IMAGE_HEADERS})
    disposition = f"inline; filename*=UTF-8''{quote(found.filename)}"
    presign = getattr(_blobs(request), "presigned_url", None)
    if presign is not None and _settings(request).s3_serve == "presigned":
        # The user was checked by the route; the URL lets only this object be read, for a short while.
        url = presign(found.sha256, seconds=PRESIGNED_SECONDS, content_type=found.media_type, disposition=disposition)
        return RedirectResponse(url, status_code=307, headers={"cache-control": "private, no-store"})
    return FileResponse(
        _blobs(request).path(found.sha256),
        media_type=found.media_type,
        headers={
            "etag": etag,
            "content-disposition": disposition,
            **IMAGE_HEADERS,
        },
    )


@router.get("/images/{image_id}/thumb", include_in_schema=False)
def image_thumb(request: Request, image_id: int, db: DB, user: Viewer) -> Response:
    return _image_response(request, db, image_id, "thumb")


@router.get("/images/{image_id}/full", include_in_schema=False)
def image_full(request: Request, image_id: int, db: DB, user: Viewer) -> Response:
    return _image_response(request, db, image_id, "full")


def csv_download(request: Request, name: str, pieces: Callable[[Session], Iterator[str]]) -> StreamingResponse:
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
    return csv_download(
        request, f"dataset-{dataset_id}-images.csv", lambda session: service.images_csv(session, dataset_id=dataset_id)
    )


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


GRID_PARAMS = ("label", "source", "subset", "split_id", "q", "issue", "sort", "run_id", "similar_to", "offset")
# `sort` orders an issue's findings (these two) or, with a run, by that run's ranking (ranking.RANKINGS).
ISSUE_SORTS = ("score", "-score")


def _number(params: dict[str, str], key: str) -> int | None:
    value = params.get(key) or ""
    return int(value) if value.isdigit() else None


def _grid_query(request: Request, db: DB, dataset_id: int, params: dict[str, str]) -> service.ImageQuery:
    similar_to = _number(params, "similar_to")
    text = {key: params.get(key) or None for key in ("label", "source", "subset", "q", "issue")}
    sort = params.get("sort") or None
    return service.ImageQuery(
        **text,
        sort=sort if sort in ISSUE_SORTS else None,
        split_id=_number(params, "split_id"),
        unlabeled=params.get("unlabeled") == "true",
        image_ids=_neighbourhood(request, db, dataset_id, similar_to) if similar_to is not None else None,
    )


def _grid_context(request: Request, db: DB, user: User, dataset_id: int, params: dict[str, str]) -> dict[str, Any]:
    sort = params.get("sort") or None
    ranked = _ranked(db, request, dataset_id, None if sort in ISSUE_SORTS else sort, _number(params, "run_id"))
    query = _grid_query(request, db, dataset_id, params)
    page = service.list_images(
        db,
        dataset_id=dataset_id,
        query=query,
        limit=PAGE_SIZE,
        offset=_number(params, "offset") or 0,
        ranked=ranked.image_ids if ranked else None,
    )
    filters = {key: value for key, value in params.items() if key != "offset" and value}

    def page_url(new_offset: int) -> str:
        return f"/datasets/{dataset_id}?" + urlencode({**filters, "offset": new_offset})

    counts = page.split.counts if page.split else {}
    return {
        "dataset_id": dataset_id,
        "issue_types": ISSUE_TYPES,
        "page": page,
        "query": query,
        "filters": filters,
        "subsets": [s for s in SUBSETS if not counts or counts.get(s, {}).get("total")],  # no empty train-dev
        "splits": service.splits_of(db, dataset_id=dataset_id),
        "runs": ranking.finished_runs(db, dataset_id=dataset_id),
        "sorts": ranking.RANKINGS,
        "sort_names": ranking.RANKING_NAMES,
        "actions": selection_actions(db, dataset_id=dataset_id, user=user),
        "scores": {} if ranked is None else ranked.scores,
        "previous_url": page_url(max(0, page.offset - page.limit)) if page.offset > 0 else None,
        "next_url": page_url(page.offset + page.limit) if page.offset + page.limit < page.total else None,
    }


@router.get("/datasets/{dataset_id}", include_in_schema=False)
def dataset_page(request: Request, dataset_id: int, db: DB, user: Viewer) -> Response:
    """The dataset page; its grid's filters (GRID_PARAMS) come from the query string."""
    params = {key: request.query_params.get(key, "") for key in GRID_PARAMS}
    grid = _grid_context(request, db, user, dataset_id, params)
    if is_htmx(request) and request.headers.get("hx-target") == "image-grid":
        return render(request, "datasets/detail.html", grid, block="grid")  # filters and pages: the grid only
    summary = service.dataset_summary(db, dataset_id=dataset_id)
    return render(
        request,
        "datasets/detail.html",
        {
            "summary": summary,
            "events": labels.label_events(db, dataset_id=dataset_id, limit=20),
            "uploads": uploads.uploads_of(db, dataset_id=dataset_id),
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


@router.get("/images/{image_id}", include_in_schema=False)
def image_page(request: Request, image_id: int, db: DB, user: Viewer) -> Response:
    return render(request, "datasets/image.html", {"detail": service.image_detail(db, image_id=image_id)})
