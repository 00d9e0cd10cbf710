"""HTTP routes for embeddings and similar images; thin: parse, call the service, answer."""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Annotated

from fastapi import APIRouter, Form, Query, Request
from fastapi.responses import JSONResponse, Response
from starlette.datastructures import UploadFile

from app.core.errors import Invalid
from app.embeddings import service
from app.embeddings.schemas import EmbeddingSetOut, EmbeddingSetsOut, EmbeddingsIn, NeighbourOut, SimilarOut
from app.embeddings.states import UNFINISHED
from app.jobs import service as jobs
from app.uploads.router import UploadForm
from app.web.deps import DB, AppSettings, Reviewer, Viewer, reads_only
from app.web.deps import get_settings_dep as _settings
from app.web.selection import selection_actions
from app.web.templating import render

router = APIRouter()

K = Annotated[int, Query(ge=1, le=500, description="how many neighbours")]
BackboneQuery = Annotated[str | None, Query(max_length=100)]
# An uploaded query picture is read into memory; ingest's own limit for one image file.
_MAX_QUERY_BYTES = 50 * 2**20
_FILE_BODY = {
    "requestBody": {
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {"file": {"type": "string", "format": "binary"}},
                    "required": ["file"],
                }
            }
        }
    }
}


@router.post("/api/datasets/{dataset_id}/embeddings", status_code=202)
def api_start_embeddings(
    dataset_id: int, body: EmbeddingsIn, db: DB, user: Reviewer, settings: AppSettings
) -> JSONResponse:
    embedding_set, job = service.start_embeddings(
        db,
        dataset_id=dataset_id,
        backbone=body.backbone,
        user_id=user.id,
        home=service.torch_home(),
        max_attempts=settings.job_max_attempts,
    )
    return JSONResponse({"job_id": job.id, "backbone": embedding_set.backbone}, status_code=202)


@router.get("/api/datasets/{dataset_id}/embeddings", response_model=EmbeddingSetsOut)
def api_embeddings(dataset_id: int, db: DB, user: Viewer) -> EmbeddingSetsOut:
    return EmbeddingSetsOut(
        items=[
            EmbeddingSetOut(
                backbone=s.backbone, status=status, count=s.count, dims=s.dims, index=s.index_kind, job_id=s.job_id
            )
            for s, status in service.list_embeddings(db, dataset_id=dataset_id)
        ]
    )


@router.get("/api/images/{image_id}/similar", response_model=SimilarOut)
def api_similar(
    request: Request, image_id: int, db: DB, user: Viewer, k: K = 20, backbone: BackboneQuery = None
) -> SimilarOut:
    found = service.similar_to_image(
        db, image_id=image_id, k=k, backbone=backbone, root=request.app.state.blobs.artefacts
    )
    return SimilarOut(items=[NeighbourOut(**asdict(item)) for item in found])


@router.get("/images/{image_id}/similar", include_in_schema=False)
def similar_strip(request: Request, image_id: int, db: DB, user: Viewer, k: K = 12) -> Response:
    """The image page's strip (loaded by htmx); without embeddings it says which job to start."""
    context: dict[str, object] = {"items": [], "missing": None, "image_id": image_id, "dataset_id": None}
    try:
        context["dataset_id"] = service.dataset_of_image(db, image_id=image_id)
        context["items"] = service.similar_to_image(
            db, image_id=image_id, k=k, backbone=None, root=request.app.state.blobs.artefacts
        )
    except service.EmbeddingsMissing as missing:
        context["missing"] = missing.message
    return render(request, "embeddings/_similar.html", context)


@router.post("/api/datasets/{dataset_id}/similar", response_model=SimilarOut, openapi_extra=_FILE_BODY)
@reads_only
def api_similar_to_upload(
    request: Request,
    dataset_id: int,
    form: UploadForm,
    db: DB,
    user: Viewer,
    k: K = 20,
    backbone: BackboneQuery = None,
) -> SimilarOut:
    part = form.get("file")
    if not isinstance(part, UploadFile):
        raise Invalid("send the query picture as the multipart field 'file'")
    part.file.seek(0)
    data = part.file.read(_MAX_QUERY_BYTES + 1)
    if len(data) > _MAX_QUERY_BYTES:
        raise Invalid(f"a query picture may have at most {_MAX_QUERY_BYTES // 2**20} MiB")
    settings = _settings(request)
    found = service.similar_to_upload(
        db,
        dataset_id=dataset_id,
        data=data,
        filename=part.filename or "",
        k=k,
        backbone=backbone,
        root=request.app.state.blobs.artefacts,
        scratch_dir=settings.staging_dir,
        home=service.torch_home(),
    )
    return SimilarOut(items=[NeighbourOut(**asdict(item)) for item in found])


@router.get("/api/datasets/{dataset_id}/map")
def api_map(request: Request, dataset_id: int, db: DB, user: Viewer, backbone: BackboneQuery = None) -> Response:
    """The 2-D embedding map: {"backbone", "stale", "count", "points": [{"image_id", "x", "y"}]}, x and y in [0, 1].

    Labels and other colours come from /map/colours (they change with every relabel; the points do not)."""
    found = service.map_points(db, dataset_id=dataset_id, backbone=backbone, root=request.app.state.blobs.artefacts)
    head = json.dumps({"backbone": found.backbone, "stale": found.stale, "count": found.count})
    return Response(head[:-1].encode() + b',"points":' + found.points_json + b"}", media_type="application/json")


ColourBy = Annotated[str, Query(max_length=20, description="label, subset, correct, issue or suspicion")]


@router.get("/api/datasets/{dataset_id}/map/colours")
def api_map_colours(
    dataset_id: int,
    db: DB,
    user: Viewer,
    by: ColourBy = "label",
    split_id: int | None = None,
    run_id: int | None = None,
) -> JSONResponse:
    """Values to colour the map by: {"by", "source", "values": {image_id: value}} (images without one left out)."""
    source, values = service.map_colours(db, dataset_id=dataset_id, by=by, split_id=split_id, run_id=run_id)
    return JSONResponse({"by": by, "source": source, "values": {str(k): v for k, v in values.items()}})


@router.get("/datasets/{dataset_id}/map", include_in_schema=False)
def map_page(request: Request, dataset_id: int, db: DB, user: Viewer) -> Response:
    page = service.map_page(db, dataset_id=dataset_id)
    return render(
        request,
        "embeddings/map.html",
        {"page": page, "actions": selection_actions(db, dataset_id=dataset_id, user=user)},
    )


@router.get("/datasets/{dataset_id}/embeddings", include_in_schema=False)
def embeddings_panel(request: Request, dataset_id: int, db: DB, user: Viewer) -> Response:
    """The dataset page's embeddings card: what exists, a button to start the job, its live progress."""
    listed = service.list_embeddings(db, dataset_id=dataset_id)
    return render(
        request,
        "embeddings/_panel.html",
        {
            "dataset_id": dataset_id,
            "sets": [
                (s, status, jobs.get_job(db, job_id=s.job_id) if s.job_id is not None else None) for s, status in listed
            ],
            "running": any(status in UNFINISHED for _, status in listed),
            "backbones": service.usable_backbones(),
            "default_backbone": service.DEFAULT_BACKBONE,
        },
    )


@router.post("/datasets/{dataset_id}/embeddings", include_in_schema=False)
def embeddings_panel_start(
    request: Request,
    dataset_id: int,
    db: DB,
    user: Reviewer,
    settings: AppSettings,
    backbone: Annotated[str, Form(max_length=100)],
) -> Response:
    service.start_embeddings(
        db,
        dataset_id=dataset_id,
        backbone=backbone,
        user_id=user.id,
        home=service.torch_home(),
        max_attempts=settings.job_max_attempts,
    )
    return embeddings_panel(request, dataset_id, db, user)
