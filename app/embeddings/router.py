"""HTTP routes for embeddings and similar images; thin: parse, call the service, answer."""

from __future__ import annotations

from dataclasses import asdict
from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, Response
from starlette.datastructures import UploadFile

from app.core.errors import Invalid
from app.core.settings import Settings
from app.datasets.router import UploadForm
from app.embeddings import service
from app.embeddings.schemas import EmbeddingSetOut, EmbeddingSetsOut, EmbeddingsIn, NeighbourOut, SimilarOut
from app.web.deps import DB, AppSettings, Reviewer, Viewer, reads_only
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


def _settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


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
        db, image_id=image_id, k=k, backbone=backbone, root=_settings(request).embeddings_dir
    )
    return SimilarOut(items=[NeighbourOut(**asdict(item)) for item in found])


@router.get("/images/{image_id}/similar", include_in_schema=False)
def similar_strip(request: Request, image_id: int, db: DB, user: Viewer, k: K = 12) -> Response:
    """The image page's strip (loaded by htmx); without embeddings it says which job to start."""
    context: dict[str, object] = {"items": [], "missing": None}
    try:
        context["items"] = service.similar_to_image(
            db, image_id=image_id, k=k, backbone=None, root=_settings(request).embeddings_dir
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
        root=settings.embeddings_dir,
        scratch_dir=settings.staging_dir,
        home=service.torch_home(),
    )
    return SimilarOut(items=[NeighbourOut(**asdict(item)) for item in found])
