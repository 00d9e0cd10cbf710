"""HTTP routes (pages and JSON API) for label merges and their undo; thin: parse, call the service, render."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Form
from fastapi.responses import RedirectResponse, Response

from app.datasets import service as datasets
from app.datasets.schemas import LabelOut
from app.labels import service
from app.labels.schemas import LabelEventOut, LabelMerged, LabelMergeIn, MergeUndoneOut
from app.web.deps import DB, Reviewer, Viewer

router = APIRouter()


@router.post("/api/datasets/{dataset_id}/labels/{label_id}/merge", response_model=LabelMerged)
def api_merge_label(dataset_id: int, label_id: int, body: LabelMergeIn, db: DB, user: Reviewer) -> LabelMerged:
    into, moved = service.merge_labels(
        db, dataset_id=dataset_id, label_id=label_id, into_label_id=body.into_label_id, user_id=user.id
    )
    return LabelMerged(into=LabelOut(id=into.id, name=into.name), moved=moved)


@router.get("/api/datasets/{dataset_id}/label-events", response_model=list[LabelEventOut])
def api_label_events(dataset_id: int, db: DB, user: Viewer, limit: int = 50) -> list[LabelEventOut]:
    datasets.get_dataset(db, dataset_id=dataset_id)
    events = service.label_events(db, dataset_id=dataset_id, limit=min(max(limit, 1), 500))
    return [LabelEventOut(**vars(event), undoable=event.undoable) for event in events]


@router.post(
    "/api/datasets/{dataset_id}/label-events/{event_id}/revert",
    response_model=MergeUndoneOut,
    responses={409: {"description": "Images the merge moved were relabelled since (listed in `images`)"}},
)
def api_undo_merge(dataset_id: int, event_id: int, db: DB, user: Reviewer) -> MergeUndoneOut:
    undone = service.undo_merge(db, dataset_id=dataset_id, event_id=event_id, user_id=user.id)
    label = LabelOut(id=undone.label.id, name=undone.label.name)
    return MergeUndoneOut(label=label, moved=undone.moved, event_id=undone.event_id)


@router.post("/datasets/{dataset_id}/labels/{label_id}/merge", include_in_schema=False)
def dataset_merge_label(
    dataset_id: int, label_id: int, db: DB, user: Reviewer, into_label_id: Annotated[int, Form()]
) -> Response:
    service.merge_labels(db, dataset_id=dataset_id, label_id=label_id, into_label_id=into_label_id, user_id=user.id)
    return RedirectResponse(f"/datasets/{dataset_id}#labels", status_code=303)


@router.post("/datasets/{dataset_id}/label-events/{event_id}/revert", include_in_schema=False)
def dataset_undo_merge(dataset_id: int, event_id: int, db: DB, user: Reviewer) -> Response:
    service.undo_merge(db, dataset_id=dataset_id, event_id=event_id, user_id=user.id)
    return RedirectResponse(f"/datasets/{dataset_id}#labels", status_code=303)
