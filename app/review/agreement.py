"""Two-reviewer agreement: in a campaign that requires it, a relabel is a proposal that leaves the label as it was,
until another reviewer confirms it (then it is applied through the versioned relabel path, against the version it
was proposed on, with both names in the history) or rejects it.

A proposal leaves ``proposed`` by one conditional UPDATE, so two reviewers deciding it at once cannot both win; the
confirmed label is written with ``UPDATE images ... WHERE label_version = :base``, so a relabel made since (in or
outside the campaign) refuses the confirmation with 409 naming that change.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session

from app.core.errors import Conflict, Forbidden, NotFound
from app.labels import service as label_service
from app.models import Image, LabelProposal, Review, User, utcnow
from app.review import campaigns, logic, relabel, repository
from app.review.relabel import LabelState
from app.review.repository import ProposalRow

# A proposal with names, and whether it is stale or withdrawn.
ProposalView = ProposalRow


@dataclass(frozen=True)
class Outcome:
    """What a relabel, confirmation or rejection did: the image's label state, and the proposal it touched."""

    state: LabelState
    proposal: ProposalView | None = None


@dataclass(frozen=True)
class AgreementView:
    review: Review
    required: bool
    open: list[ProposalView]
    disagreements: list[ProposalView]  # rejected by a second reviewer
    stats: logic.AgreementStats


def start_campaign(session: Session, *, require_agreement: bool | None, **campaign: Any) -> Review:
    """``campaigns.create_review`` plus the agreement rule: as asked, else on for campaigns that touch test."""
    review = campaigns.create_review(session, **campaign)
    review.require_agreement = logic.requires_agreement(review.subsets.split(","), asked=require_agreement)
    session.flush()
    return review


def _view(session: Session, proposal: LabelProposal) -> ProposalView:
    rows = repository.proposal_rows(session, review_id=proposal.review_id, image_ids=[proposal.image_id])
    return next(row for row in rows if row.id == proposal.id)


def _describe(proposal: LabelProposal, labels: dict[int, str], who: str | None) -> str:
    by = f" by {who}" if who else ""
    return f"{labels.get(proposal.old_label_id, '?')} → {labels.get(proposal.new_label_id, '?')}{by}"


def refuse_if_proposed(session: Session, *, review_id: int | None, image_id: int) -> None:
    """A campaign decision on an item whose relabel waits for a second reviewer is refused: that comes first."""
    if review_id is None:
        return
    proposal = repository.open_proposal(session, review_id=review_id, image_id=image_id)
    if proposal is None:
        return
    labels = label_service.names(session, dataset_id=label_service.get_image(session, image_id).dataset_id)
    proposer = session.get(User, proposal.proposed_by_id) if proposal.proposed_by_id else None
    raise Conflict(
        f"image {image_id} has an open proposal in review {review_id} "
        f"({_describe(proposal, labels, proposer.name if proposer else None)}): "
        "another reviewer confirms or rejects it first",
        extra={"proposal_id": proposal.id, "review_status": logic.PROPOSED},
    )


def change_label(session: Session, *, request: relabel.RelabelRequest, actor: User) -> Outcome:
    """A relabel: applied at once (``relabel.change_label``), or, in a campaign that requires agreement, recorded as
    a proposal that leaves the label as it was."""
    review = campaigns.get_review(session, request.review_id) if request.review_id is not None else None
    if review is None or not review.require_agreement:
        return Outcome(relabel.change_label(session, request=request, actor=actor))
    image = label_service.get_image(session, request.image_id)
    item = relabel.campaign_item(session, review_id=review.id, image=image)
    assert item is not None
    refuse_if_proposed(session, review_id=review.id, image_id=image.id)
    by_name = {name: label_id for label_id, name in label_service.names(session, dataset_id=image.dataset_id).items()}
    if by_name.get(request.label, image.label_id) == image.label_id:
        # An unknown label is refused there; the label it already has keeps the item, as in any campaign.
        return Outcome(relabel.change_label(session, request=request, actor=actor))
    cleaned = label_service.clean_reason(request.reason)
    # Lock the image at the version seen: a concurrent relabel either finished first (409 here) or waits.
    label_service.lock_version(session, image=image, expected_version=request.expected_version)
    proposal = repository.add_proposal(
        session,
        LabelProposal(
            review_id=review.id,
            image_id=image.id,
            old_label_id=image.label_id,
            new_label_id=by_name[request.label],
            base_version=request.expected_version,
            reason=cleaned,
            state=logic.PROPOSED,
            proposed_by_id=actor.id,
        ),
    )
    relabel.decide(item, status=logic.PROPOSED, actor=actor)
    session.flush()
    return Outcome(relabel.state(session, image, review_status=logic.PROPOSED), _view(session, proposal))


def _open_proposal(session: Session, *, review_id: int, image_id: int) -> tuple[Review, Image, LabelProposal]:
    review = campaigns.open_review(session, review_id)
    image = label_service.get_image(session, image_id)
    proposal = repository.open_proposal(session, review_id=review.id, image_id=image.id)
    if proposal is not None:
        return review, image, proposal
    latest = repository.latest_proposal(session, review_id=review.id, image_id=image.id)
    if latest is None:
        raise NotFound(f"image {image.id} has no proposed relabel in review {review.id}")
    raise _already_decided(session, latest)


def _already_decided(session: Session, proposal: LabelProposal) -> Conflict:
    session.refresh(proposal)
    decider = session.get(User, proposal.decided_by_id) if proposal.decided_by_id else None
    by = f" by {decider.name}" if decider else ""
    return Conflict(
        f"the proposed relabel of image {proposal.image_id} was already {proposal.state}{by}",
        extra={"proposal_id": proposal.id, "state": proposal.state, "decided_by": decider.name if decider else None},
    )


def _moved_on(session: Session, image: Image, proposal: LabelProposal) -> Conflict:
    """The 409 for a proposal whose image was relabelled since: which change, by whom, and the label now."""
    session.refresh(image)
    labels = label_service.names(session, dataset_id=image.dataset_id)
    current = relabel.state(session, image)
    found = label_service.first_change_after(session, image_id=image.id, version=proposal.base_version)
    change, who = found if found is not None else (None, None)
    what = "a later change"
    if change is not None:
        by = f" by {who}" if who else ""
        what = (
            f"change #{change.id} ({change.kind}, {labels.get(change.old_label_id or 0, '–')} → "
            f"{labels.get(change.new_label_id or 0, '–')}{by}, {change.created_at:%Y-%m-%d %H:%M} UTC)"
        )
    return Conflict(
        f"image {image.id} was relabelled since this proposal ({_describe(proposal, labels, None)}, made on version "
        f"{proposal.base_version}): {what} made it {current.label!r} (version {current.label_version}). "
        "Reject the proposal, and propose again if the label should still change.",
        extra={
            "image_id": image.id,
            "proposal_id": proposal.id,
            "label": current.label,
            "label_version": current.label_version,
            "change_id": change.id if change is not None else None,
            "changed_by": who,
        },
    )


def confirm(session: Session, *, review_id: int, image_id: int, actor: User) -> Outcome:
    """A second reviewer agrees: the proposed label is applied, as a relabel by the proposer confirmed by them."""
    review, image, proposal = _open_proposal(session, review_id=review_id, image_id=image_id)
    if proposal.proposed_by_id == actor.id:
        raise Forbidden(
            f"you proposed this relabel of image {image.id}; another reviewer has to confirm it",
            extra={"proposal_id": proposal.id},
        )
    if image.label_version != proposal.base_version:
        raise _moved_on(session, image, proposal)
    now = utcnow()
    if not repository.decide_proposal_if_open(
        session, proposal_id=proposal.id, state=logic.CONFIRMED, user_id=actor.id, now=now, reason=""
    ):
        raise _already_decided(session, proposal)
    try:
        change = label_service.set_label(
            session,
            image=image,
            label_id=proposal.new_label_id,
            expected_version=proposal.base_version,
            reason=proposal.reason,
            user_id=proposal.proposed_by_id,
            review_id=review.id,
            confirmed_by_id=actor.id,
        )
    except label_service.StaleVersion:
        raise _moved_on(session, image, proposal) from None
    proposal.change_id = change.id
    item = repository.review_item(session, review_id=review.id, image_id=image.id)
    assert item is not None
    # As for any relabel: an item already excluded as ambiguous stays counted as such.
    relabel.decide(item, status=logic.AMBIGUOUS if image.excluded_reason else logic.RELABELED, actor=actor)
    session.flush()
    session.refresh(proposal)
    state = relabel.state(session, image, change_id=change.id, review_status=item.status)
    return Outcome(state, _view(session, proposal))


def reject(session: Session, *, review_id: int, image_id: int, reason: str = "", actor: User) -> Outcome:
    """A second reviewer disagrees: the label stays and the item counts as kept. The proposer rejecting their own
    proposal withdraws it instead: the item waits for a decision again."""
    review, image, proposal = _open_proposal(session, review_id=review_id, image_id=image_id)
    cleaned = label_service.clean_reason(reason)
    if not repository.decide_proposal_if_open(
        session, proposal_id=proposal.id, state=logic.REJECTED, user_id=actor.id, now=utcnow(), reason=cleaned
    ):
        raise _already_decided(session, proposal)
    withdrawn = proposal.proposed_by_id == actor.id
    item = repository.review_item(session, review_id=review.id, image_id=image.id)
    assert item is not None
    if image.excluded_reason:
        relabel.decide(item, status=logic.AMBIGUOUS, actor=actor)
    elif withdrawn:
        relabel.decide(item, status=logic.PENDING, actor=None)
    else:
        relabel.decide(item, status=logic.KEPT, actor=actor)
    session.flush()
    session.refresh(proposal)
    return Outcome(relabel.state(session, image, review_status=item.status), _view(session, proposal))


def proposals_by_image(session: Session, *, review_id: int) -> dict[int, ProposalView]:
    """Each item's latest proposal, for the campaign's item list."""
    return {row.image_id: row for row in repository.proposal_rows(session, review_id=review_id)}


def agreement_view(session: Session, *, review_id: int) -> AgreementView:
    review = campaigns.get_review(session, review_id)
    rows = repository.proposal_rows(session, review_id=review.id)
    views = rows
    outcomes = [logic.ProposalOutcome(row.state, row.proposed_by_id, row.decided_by_id) for row in rows]
    return AgreementView(
        review=review,
        required=review.require_agreement,
        open=[view for view in views if view.state == logic.PROPOSED],
        disagreements=[view for view in views if view.state == logic.REJECTED and not view.withdrawn],
        stats=logic.agreement_stats(outcomes),
    )
