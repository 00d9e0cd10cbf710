"""HTTP routes (pages and JSON API) for review; thin: parse, call the service, render."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Form, Query, Request
from fastapi.responses import RedirectResponse, Response

from app.core.schemas import SelectionIn
from app.ml.error_analysis import format_percent
from app.review import agreement, campaigns, honesty, ranking, relabel, rescoring, run_page, suspicion
from app.review.schemas import (
    AgreementOut,
    ClaimIn,
    DecisionIn,
    ExcludeIn,
    ExclusionsIn,
    ExclusionsOut,
    HistoryOut,
    HonestyOut,
    ItemOut,
    LabelIn,
    LabelOut,
    PickedOut,
    RejectIn,
    RevertIn,
    ReviewCreated,
    ReviewIn,
    ReviewOut,
    ReviewStatusIn,
    ReviewStatusOut,
    SuspicionOut,
)
from app.web.deps import DB, AppSettings, Reviewer, Viewer
from app.web.templating import render

router = APIRouter()

VIEWS = ("mine", "all")


def _can_review(user: Any) -> bool:
    return user.role in ("reviewer", "admin")


# --- JSON API ----------------------------------------------------------------------------------------------------


@router.post("/api/datasets/{dataset_id}/reviews", response_model=ReviewCreated, status_code=201)
def api_create_review(dataset_id: int, body: ReviewIn, db: DB, user: Reviewer) -> ReviewCreated:
    # The body's fields are start_campaign's keyword arguments, name for name.
    review = agreement.start_campaign(db, dataset_id=dataset_id, actor=user, **body.model_dump())
    return ReviewCreated(review_id=review.id)


@router.get("/api/reviews/{review_id}", response_model=ReviewOut)
def api_review(review_id: int, db: DB, user: Viewer) -> ReviewOut:
    view = campaigns.review_view(db, review_id=review_id)
    return ReviewOut.of(view, agreement.proposals_by_image(db, review_id=review_id))


@router.patch("/api/reviews/{review_id}", response_model=ReviewStatusOut)
def api_set_review_status(review_id: int, body: ReviewStatusIn, db: DB, user: Reviewer) -> ReviewStatusOut:
    review = campaigns.set_review_status(db, review_id=review_id, status=body.status)
    return ReviewStatusOut(id=review.id, status=review.status)


@router.post("/api/reviews/{review_id}/items", response_model=PickedOut)
def api_add_items(review_id: int, body: SelectionIn, db: DB, user: Reviewer) -> PickedOut:
    """Add picked images (a map selection, a grid of neighbours) to the campaign, to be relabelled in it."""
    added = campaigns.add_picked_items(db, review_id=review_id, image_ids=body.image_ids)
    return PickedOut(added=added.added, already=added.already)


@router.post("/api/reviews/{review_id}/claim", response_model=list[ItemOut])
def api_claim(review_id: int, db: DB, user: Reviewer, body: ClaimIn | None = None) -> list[ItemOut]:
    count = body.count if body is not None else campaigns.DEFAULT_CLAIM_SIZE
    return [ItemOut.of(item) for item in campaigns.claim_items(db, review_id=review_id, actor=user, count=count)]


@router.post("/api/reviews/{review_id}/items/{image_id}/decision", response_model=LabelOut)
def api_decide(review_id: int, image_id: int, body: DecisionIn, db: DB, user: Reviewer) -> LabelOut:
    agreement.refuse_if_proposed(db, review_id=review_id, image_id=image_id)
    state = relabel.decide_item(
        db,
        review_id=review_id,
        image_id=image_id,
        decision=body.decision,
        expected_version=body.expected_version,
        actor=user,
    )
    return LabelOut.of(state)


@router.get("/api/images/{image_id}/label", response_model=LabelOut)
def api_label(image_id: int, db: DB, user: Viewer) -> LabelOut:
    return LabelOut.of(relabel.label_state(db, image_id=image_id))


@router.post("/api/images/{image_id}/label", response_model=LabelOut)
def api_change_label(image_id: int, body: LabelIn, db: DB, user: Reviewer) -> LabelOut:
    request = relabel.RelabelRequest(image_id=image_id, **body.model_dump())
    outcome = agreement.change_label(db, request=request, actor=user)
    return LabelOut.of(outcome.state, outcome.proposal)


@router.post("/api/reviews/{review_id}/items/{image_id}/confirm", response_model=LabelOut)
def api_confirm(review_id: int, image_id: int, db: DB, user: Reviewer) -> LabelOut:
    outcome = agreement.confirm(db, review_id=review_id, image_id=image_id, actor=user)
    return LabelOut.of(outcome.state, outcome.proposal)


@router.post("/api/reviews/{review_id}/items/{image_id}/reject", response_model=LabelOut)
def api_reject(review_id: int, image_id: int, db: DB, user: Reviewer, body: RejectIn | None = None) -> LabelOut:
    reason = body.reason if body is not None else ""
    outcome = agreement.reject(db, review_id=review_id, image_id=image_id, reason=reason, actor=user)
    return LabelOut.of(outcome.state, outcome.proposal)


@router.get("/api/reviews/{review_id}/agreement", response_model=AgreementOut)
def api_agreement(review_id: int, db: DB, user: Viewer) -> AgreementOut:
    return AgreementOut.model_validate(agreement.agreement_view(db, review_id=review_id))


@router.get("/api/reviews/{review_id}/honesty", response_model=HonestyOut)
def api_honesty(review_id: int, db: DB, user: Viewer) -> HonestyOut:
    return HonestyOut.model_validate(honesty.honesty_view(db, review_id=review_id))


@router.post("/api/images/{image_id}/exclude", response_model=LabelOut)
def api_exclude(image_id: int, body: ExcludeIn, db: DB, user: Reviewer) -> LabelOut:
    agreement.refuse_if_proposed(db, review_id=body.review_id, image_id=image_id)
    state = relabel.mark_ambiguous(db, image_id=image_id, actor=user, **body.model_dump())
    return LabelOut.of(state)


@router.post("/api/datasets/{dataset_id}/exclusions", response_model=ExclusionsOut)
def api_set_exclusions(dataset_id: int, body: ExclusionsIn, db: DB, user: Reviewer) -> ExclusionsOut:
    """Exclude a selection from scoring as ambiguous, or score it again (``excluded: false``), all or nothing."""
    done = relabel.set_exclusions(db, dataset_id=dataset_id, actor=user, **body.model_dump())
    return ExclusionsOut(changed=done.changed, unchanged=done.unchanged)


@router.get("/api/images/{image_id}/history", response_model=list[HistoryOut])
def api_history(image_id: int, db: DB, user: Viewer) -> list[HistoryOut]:
    return relabel.image_history(db, image_id=image_id)


@router.post("/api/label-changes/{change_id}/revert", response_model=LabelOut)
def api_revert(change_id: int, db: DB, user: Reviewer, body: RevertIn | None = None) -> LabelOut:
    body = body or RevertIn()
    state = relabel.revert_change(
        db, change_id=change_id, expected_version=body.expected_version, reason=body.reason, actor=user
    )
    return LabelOut.of(state)


@router.get("/api/runs/{run_id}/rescored")
def api_rescored(run_id: int, db: DB, user: Viewer) -> dict[str, dict[str, Any]]:
    return rescoring.rescored_metrics(db, run_id=run_id)


@router.get("/api/runs/{run_id}/suspicious", response_model=SuspicionOut)
def api_suspicious(run_id: int, db: DB, user: Viewer, subset: str = "dev", limit: int = 50) -> SuspicionOut:
    return SuspicionOut.model_validate(suspicion.suspicious_examples(db, run_id=run_id, subset=subset, limit=limit))


# --- pages -------------------------------------------------------------------------------------------------------


@router.get("/runs/{run_id}/review", include_in_schema=False)
def run_review_page(request: Request, run_id: int, db: DB, user: Viewer) -> Response:
    page = run_page.run_review_page(db, run_id=run_id)
    return render(
        request,
        "review/run.html",
        {
            "page": page,
            "run": page.run,
            "can_review": _can_review(user),
            "max_per_subset": suspicion.MAX_PER_SUBSET,
            "fmt": format_percent,
        },
    )


@router.post("/runs/{run_id}/review", include_in_schema=False)
def run_review_start(
    run_id: int,
    db: DB,
    user: Reviewer,
    dataset_id: Annotated[int, Form()],
    subsets: Annotated[list[str], Form()],
    suspicious_per_subset: Annotated[int, Form()] = 50,
    correct_per_subset: Annotated[int, Form()] = 10,
    seed: Annotated[int, Form()] = 0,
    include_train: Annotated[bool, Form()] = False,
    require_agreement: Annotated[bool, Form()] = False,  # an unticked box sends nothing; the form ticks it
) -> Response:
    review = agreement.start_campaign(
        db,
        require_agreement=require_agreement,
        dataset_id=dataset_id,
        run_id=run_id,
        subsets=subsets,
        suspicious_per_subset=suspicious_per_subset,
        correct_per_subset=correct_per_subset,
        seed=seed,
        include_train=include_train,
        actor=user,
    )
    # Whoever starts a campaign sees its first items at once rather than an empty grid and a button to press.
    campaigns.claim_items(db, review_id=review.id, actor=user, count=campaigns.DEFAULT_CLAIM_SIZE)
    return RedirectResponse(f"/reviews/{review.id}", status_code=303)


@router.get("/reviews/{review_id}", include_in_schema=False)
def review_page(
    request: Request,
    review_id: int,
    db: DB,
    user: Viewer,
    settings: AppSettings,
    view: str = "mine",
    sort: Annotated[
        str, Query(max_length=20, description="campaign order, or fused, suspicion, loss, confidence")
    ] = "",
    run_id: Annotated[
        int | None, Query(description="the run whose predictions sort (the campaign's by default)")
    ] = None,
) -> Response:
    which = view if view in VIEWS and _can_review(user) else "all"
    loaded = campaigns.review_view(db, review_id=review_id, only_for=user if which == "mine" else None)
    ranked = None
    if sort:
        ranked = ranking.rank_run_images(
            db, dataset_id=loaded.dataset.id, run_id=run_id or loaded.run.id, by=sort, root=settings.embeddings_dir
        )
    context = {
        "items": ranking.in_ranked_order(loaded.items, ranked),
        "sort": {"by": sort, "run_id": ranked.run_id if ranked else loaded.run.id, "names": ranking.RANKINGS},
        "sort_names": ranking.RANKING_NAMES,
        "scores": ranked.scores if ranked else {},
        "runs": ranking.finished_runs(db, dataset_id=loaded.dataset.id),
        "view": loaded,
        "status": loaded.status,
        "which": which,
        "can_review": _can_review(user),
        "can_decide": _can_review(user) and loaded.review.status == campaigns.OPEN,
        **_checks(db, review_id),
        "proposals": agreement.proposals_by_image(db, review_id=review_id),
    }
    return render(request, "review/campaign.html", context)


def _checks(db: DB, review_id: int) -> dict[str, Any]:
    return {
        "agreement": agreement.agreement_view(db, review_id=review_id),
        "honesty": honesty.honesty_view(db, review_id=review_id),
    }


@router.get("/reviews/{review_id}/checks", include_in_schema=False)
def review_checks(request: Request, review_id: int, db: DB, user: Viewer) -> Response:
    """Open proposals, disagreements, the agreement rate and the honesty figures, polled like the progress."""
    context = {**_checks(db, review_id), "can_review": _can_review(user)}
    return render(request, "review/campaign.html", context, block="checks")


@router.get("/reviews/{review_id}/progress", include_in_schema=False)
def review_progress(request: Request, review_id: int, db: DB, user: Viewer) -> Response:
    """Progress for dev and test side by side (and the run re-scored), polled and refreshed after each change."""
    status = campaigns.progress_view(db, review_id=review_id)
    return render(request, "review/campaign.html", {"status": status}, block="progress")


@router.post("/reviews/{review_id}/status", include_in_schema=False)
def review_set_status(review_id: int, db: DB, user: Reviewer, status: Annotated[str, Form()]) -> Response:
    campaigns.set_review_status(db, review_id=review_id, status=status)
    return RedirectResponse(f"/reviews/{review_id}", status_code=303)


@router.post("/reviews/{review_id}/claim", include_in_schema=False)
def review_claim(
    review_id: int, db: DB, user: Reviewer, count: Annotated[int, Form()] = campaigns.DEFAULT_CLAIM_SIZE
) -> Response:
    campaigns.claim_items(db, review_id=review_id, actor=user, count=count)
    return RedirectResponse(f"/reviews/{review_id}?view=mine", status_code=303)


@router.get("/reviews/{review_id}/items/{image_id}", include_in_schema=False)
def review_item(request: Request, review_id: int, image_id: int, db: DB, user: Viewer) -> Response:
    detail = campaigns.item_detail(db, review_id=review_id, image_id=image_id)
    context = {
        "detail": detail,
        "item": detail.item,
        "can_review": _can_review(user),
        "can_decide": _can_review(user) and detail.review.status == campaigns.OPEN,
        "proposal": agreement.proposals_by_image(db, review_id=review_id).get(image_id),
    }
    return render(request, "review/_item.html", context)
