"""HTTP routes (pages and JSON API) for errors; thin: parse, call the service, render."""

from __future__ import annotations

from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, Form, Request
from fastapi.responses import RedirectResponse, Response

from app.auth.service import role_at_least
from app.core.errors import Invalid
from app.core.schemas import SelectionIn
from app.error_analysis import service
from app.error_analysis.schemas import (
    AnalysisOut,
    AnnotationIn,
    ErrorDetailOut,
    ErrorItemOut,
    ErrorListOut,
    MergeIn,
    NewSampleIn,
    TaggedOut,
    TagIn,
    TagOut,
    TagPatch,
)
from app.ml.error_analysis import DEFAULT_SAMPLE_SIZE
from app.web.deps import DB, Reviewer, Viewer
from app.web.templating import is_htmx, render

router = APIRouter()


def _errors_url(run_id: int, subset: str) -> str:
    return f"/runs/{run_id}/errors?{urlencode({'subset': subset})}"


def _back_to(next_url: str, fallback: str) -> str:
    # Only same-site paths: "//evil" and "/\evil" would leave the site.
    if next_url.startswith("/") and not next_url.startswith(("//", "/\\")):
        return next_url
    return fallback


# --- JSON API -------------------------------------------------------------------------------------------------------


@router.get("/api/runs/{run_id}/errors", response_model=ErrorListOut)
def api_errors(
    run_id: int,
    db: DB,
    user: Viewer,
    subset: str = "dev",
    sample: int | None = None,
    seed: int | None = None,
    include_correct: int | None = None,
    label: str | None = None,
    predicted: str | None = None,
) -> ErrorListOut:
    view = service.error_sample(
        db,
        run_id=run_id,
        subset=subset,
        size=sample,
        seed=seed,
        include_correct=include_correct,
        label=label,
        predicted=predicted,
    )
    return ErrorListOut.model_validate(view)


@router.post("/api/runs/{run_id}/errors/sample", response_model=ErrorListOut, status_code=201)
def api_new_sample(run_id: int, body: NewSampleIn, db: DB, user: Reviewer) -> ErrorListOut:
    service.new_sample(db, run_id=run_id, actor=user, **body.model_dump())
    return ErrorListOut.model_validate(service.error_sample(db, run_id=run_id, subset=body.subset))


@router.get("/api/runs/{run_id}/errors/{image_id}", response_model=ErrorDetailOut)
def api_error_detail(run_id: int, image_id: int, db: DB, user: Viewer) -> ErrorDetailOut:
    return ErrorDetailOut.model_validate(service.error_detail(db, run_id=run_id, image_id=image_id))


@router.put("/api/runs/{run_id}/errors/{image_id}/tags", response_model=ErrorItemOut)
def api_set_tags(run_id: int, image_id: int, body: AnnotationIn, db: DB, user: Reviewer) -> ErrorItemOut:
    item = service.set_annotation(db, run_id=run_id, image_id=image_id, tags=body.tags, note=body.note, actor=user)
    return ErrorItemOut.model_validate(item)


@router.post("/api/runs/{run_id}/tags/{tag_id}/images", response_model=TaggedOut)
def api_tag_images(run_id: int, tag_id: int, body: SelectionIn, db: DB, user: Reviewer) -> TaggedOut:
    """Give a selection of the run's examples one category (a map selection, a grid of neighbours)."""
    done = service.tag_images(db, run_id=run_id, tag_id=tag_id, image_ids=body.image_ids, actor=user)
    return TaggedOut(tagged=done.tagged, already=done.already)


@router.get("/api/runs/{run_id}/error-analysis", response_model=AnalysisOut)
def api_error_analysis(run_id: int, db: DB, user: Viewer, subset: str = "dev") -> AnalysisOut:
    return AnalysisOut.model_validate(service.analyse(db, run_id=run_id, subset=subset))


@router.get("/api/runs/{run_id}/error-analysis.csv")
def api_error_analysis_csv(run_id: int, db: DB, user: Viewer, subset: str = "dev") -> Response:
    analysis = service.analyse(db, run_id=run_id, subset=subset)
    filename = f"run-{run_id}-{analysis.subset}-error-ceiling.csv"
    return Response(
        service.ceiling_csv(analysis),
        media_type="text/csv; charset=utf-8",
        headers={"content-disposition": f'attachment; filename="{filename}"'},
    )


@router.get("/api/datasets/{dataset_id}/tags", response_model=list[TagOut])
def api_tags(dataset_id: int, db: DB, user: Viewer) -> list[TagOut]:
    return [TagOut.model_validate(tag) for tag in service.dataset_tags(db, dataset_id=dataset_id)]


@router.post("/api/datasets/{dataset_id}/tags", response_model=TagOut, status_code=201)
def api_add_tag(dataset_id: int, body: TagIn, db: DB, user: Reviewer) -> TagOut:
    return TagOut.model_validate(service.add_tag(db, dataset_id=dataset_id, name=body.name, color=body.color))


@router.patch("/api/datasets/{dataset_id}/tags/{tag_id}", response_model=TagOut)
def api_update_tag(dataset_id: int, tag_id: int, body: TagPatch, db: DB, user: Reviewer) -> TagOut:
    tag = service.update_tag(db, dataset_id=dataset_id, tag_id=tag_id, name=body.name, color=body.color)
    return TagOut.model_validate(tag)


@router.post("/api/datasets/{dataset_id}/tags/{tag_id}/merge", response_model=TagOut)
def api_merge_tag(dataset_id: int, tag_id: int, body: MergeIn, db: DB, user: Reviewer) -> TagOut:
    return TagOut.model_validate(service.merge_tag(db, dataset_id=dataset_id, tag_id=tag_id, into_id=body.into))


# --- pages ----------------------------------------------------------------------------------------------------------


@router.get("/runs/{run_id}/errors", include_in_schema=False)
def errors_page(
    request: Request,
    run_id: int,
    db: DB,
    user: Viewer,
    subset: str = "dev",
    label: str | None = None,
    predicted: str | None = None,
) -> Response:
    page = service.error_page(db, run_id=run_id, subset=subset, label=label or None, predicted=predicted or None)
    scored = page.sample.run.metrics or service.ANALYSED_SUBSETS
    return render(
        request,
        "error_analysis/page.html",
        {
            "page": page,
            "run": page.sample.run,
            "subset": page.sample.subset,
            "analysis": page.analysis,
            "tags": page.tags,
            "can_tag": role_at_least(user, "reviewer"),
            # Only the subsets this run scored: a split without train-dev gets no train-dev tab.
            "subsets": [name for name in service.ANALYSED_SUBSETS if name in scored],
            "correct_toggle_count": service.correct_examples_for(page.sample.size),
            "next_color": service.next_color(page.tags),
        },
    )


@router.post("/runs/{run_id}/errors/sample", include_in_schema=False)
def errors_new_sample(
    run_id: int,
    db: DB,
    user: Reviewer,
    subset: Annotated[str, Form()] = "dev",
    size: Annotated[int, Form()] = DEFAULT_SAMPLE_SIZE,
    seed: Annotated[str, Form()] = "",
    include_correct: Annotated[int, Form()] = 0,
) -> Response:
    """A new sample (blank seed: the next unused one) or, with the current seed, the same errors with or without
    correct examples mixed in."""
    typed = seed.strip()
    if typed and not typed.isdigit():
        raise Invalid(f"the seed must be a whole number; got {typed!r}")
    chosen_seed = int(typed) if typed else None
    sample = service.new_sample(
        db, run_id=run_id, subset=subset, size=size, seed=chosen_seed, include_correct=include_correct, actor=user
    )
    return RedirectResponse(_errors_url(run_id, sample.subset), status_code=303)


def _card(item: Any, *, run: Any, subset: str, tags: Any, can_tag: bool, **more: Any) -> dict[str, Any]:
    """The context every template that shows an example's card needs, plus what the page adds."""
    return {"item": item, "run": run, "subset": subset, "tags": tags, "can_tag": can_tag, **more}


@router.get("/runs/{run_id}/errors/{image_id}", include_in_schema=False)
def error_detail_page(request: Request, run_id: int, image_id: int, db: DB, user: Viewer) -> Response:
    detail = service.error_detail(db, run_id=run_id, image_id=image_id)
    can_tag = role_at_least(user, "reviewer")
    context = _card(detail.item, run=detail.run, subset=detail.subset, tags=detail.tags, can_tag=can_tag, detail=detail)
    template = "error_analysis/_detail.html" if is_htmx(request) else "error_analysis/detail.html"
    return render(request, template, context)


@router.post("/runs/{run_id}/errors/{image_id}/tags/{tag_id}/toggle", include_in_schema=False)
def error_toggle_tag(
    request: Request, run_id: int, image_id: int, tag_id: int, db: DB, user: Reviewer, subset: str = "dev"
) -> Response:
    """What a digit key does: returns the example's card and, out of band, the updated ceiling table."""
    item = service.toggle_tag(db, run_id=run_id, image_id=image_id, tag_id=tag_id, actor=user)
    page = service.error_page(db, run_id=run_id, subset=subset)
    sample = page.sample
    context = _card(item, run=sample.run, subset=sample.subset, tags=page.tags, can_tag=True, analysis=page.analysis)
    return render(request, "error_analysis/_tagged.html", context)


@router.post("/runs/{run_id}/errors/{image_id}/note", include_in_schema=False)
def error_note(
    request: Request,
    run_id: int,
    image_id: int,
    db: DB,
    user: Reviewer,
    note: Annotated[str, Form()] = "",
) -> Response:
    item = service.set_note(db, run_id=run_id, image_id=image_id, note=note, actor=user)
    detail = service.error_detail(db, run_id=run_id, image_id=image_id)
    context = _card(item, run=detail.run, subset=detail.subset, tags=detail.tags, can_tag=True, saved=True)
    return render(request, "error_analysis/_noted.html", context)


@router.post("/datasets/{dataset_id}/tags", include_in_schema=False)
def tags_add(
    dataset_id: int,
    db: DB,
    user: Reviewer,
    name: Annotated[str, Form()],
    color: Annotated[str, Form()] = "",
    next: Annotated[str, Form()] = "/",
) -> Response:
    service.add_tag(db, dataset_id=dataset_id, name=name, color=color or None)
    return RedirectResponse(_back_to(next, "/"), status_code=303)


@router.post("/datasets/{dataset_id}/tags/{tag_id}", include_in_schema=False)
def tags_update(
    dataset_id: int,
    tag_id: int,
    db: DB,
    user: Reviewer,
    name: Annotated[str, Form()] = "",
    color: Annotated[str, Form()] = "",
    next: Annotated[str, Form()] = "/",
) -> Response:
    service.update_tag(db, dataset_id=dataset_id, tag_id=tag_id, name=name or None, color=color or None)
    return RedirectResponse(_back_to(next, "/"), status_code=303)


@router.post("/datasets/{dataset_id}/tags/{tag_id}/merge", include_in_schema=False)
def tags_merge(
    dataset_id: int,
    tag_id: int,
    db: DB,
    user: Reviewer,
    into: Annotated[int, Form()],
    next: Annotated[str, Form()] = "/",
) -> Response:
    service.merge_tag(db, dataset_id=dataset_id, tag_id=tag_id, into_id=into)
    return RedirectResponse(_back_to(next, "/"), status_code=303)
