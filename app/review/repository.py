"""Queries for label review: campaign items, claims, proposals and re-scoring rows (label writes and history are
``app.labels.repository``'s)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import ColumnElement, CursorResult, and_, func, insert, or_, select, update
from sqlalchemy.orm import Session, aliased

from app.models import (
    ErrorSample,
    Image,
    Label,
    LabelProposal,
    Prediction,
    Review,
    ReviewItem,
    Run,
    User,
)
from app.training.states import RunStatus


@dataclass(frozen=True)
class SubsetRow:
    """A scored example of a run's subset: its current label and the run's probabilities for it."""

    image_id: int
    label_id: int
    probs: bytes


@dataclass(frozen=True)
class CampaignItem:
    """Where an image stands in a campaign: why it was picked, its place in the order and its review status."""

    image_id: int
    subset: str
    selection: str
    rank: int
    suspicion: float
    status: str


@dataclass(frozen=True)
class ItemRow(CampaignItem):
    """A campaign item with the image's current state and the run's prediction for it (columns in this order)."""

    claimed_by_id: int | None
    claimed_by: str | None
    claim_expires_at: datetime | None
    decided_by: str | None
    label_id: int
    label_version: int
    excluded_reason: str | None
    predicted_label_id: int | None
    image_sha256: str  # of the thumbnail when there is one: a cache key for the image URLs


def subset_rows(session: Session, *, run_id: int, subset: str) -> list[SubsetRow]:
    """Every example of the subset the run predicted that is still scored (not excluded)."""
    query = (
        select(Prediction.image_id, Image.label_id, Prediction.probs)
        .join(Image, Image.id == Prediction.image_id)
        .where(Prediction.run_id == run_id, Prediction.subset == subset, Image.excluded_reason.is_(None))
    )
    rows = session.execute(query)
    return [SubsetRow(image_id, label_id, probs) for image_id, label_id, probs in rows if label_id is not None]


def prediction(session: Session, *, run_id: int, image_id: int) -> Prediction | None:
    return session.get(Prediction, (run_id, image_id))


def add_review(session: Session, *, review: Review, items: Sequence[dict[str, Any]]) -> Review:
    session.add(review)
    session.flush()
    if items:
        session.execute(insert(ReviewItem), [{"review_id": review.id, **item} for item in items])
    return review


def add_items(session: Session, *, review_id: int, items: Sequence[dict[str, Any]]) -> None:
    session.execute(insert(ReviewItem), [{"review_id": review_id, **item} for item in items])


def item_image_ids(session: Session, *, review_id: int) -> set[int]:
    return set(session.scalars(select(ReviewItem.image_id).where(ReviewItem.review_id == review_id)))


def first_rank(session: Session, *, review_id: int) -> int:
    return int(session.scalar(select(func.min(ReviewItem.rank)).where(ReviewItem.review_id == review_id)) or 0)


def predictions_of(
    session: Session, *, run_id: int, image_ids: Sequence[int]
) -> list[tuple[int, str, bytes, int | None]]:
    """(image id, subset, probs, current label id) of the run's predictions for these images."""
    query = (
        select(Prediction.image_id, Prediction.subset, Prediction.probs, Image.label_id)
        .join(Image, Image.id == Prediction.image_id)
        .where(Prediction.run_id == run_id, Prediction.image_id.in_(image_ids))
    )
    return [(image_id, subset, probs, label_id) for image_id, subset, probs, label_id in session.execute(query)]


def reviews_of_dataset(session: Session, *, dataset_id: int) -> list[Review]:
    query = select(Review).where(Review.dataset_id == dataset_id).order_by(Review.id.desc())
    return list(session.scalars(query))


def review_item(session: Session, *, review_id: int, image_id: int) -> ReviewItem | None:
    query = select(ReviewItem).where(ReviewItem.review_id == review_id, ReviewItem.image_id == image_id)
    return session.scalar(query)


def item_rows(
    session: Session,
    *,
    review: Review,
    image_ids: Sequence[int] | None = None,
    held_or_decided_by: int | None = None,
) -> list[ItemRow]:
    """Items in review order (rank, then subset, so dev and test alternate), optionally only some images or only
    those a reviewer holds or decided."""
    claimer, decider = aliased(User), aliased(User)
    query = (
        select(
            ReviewItem.image_id,
            ReviewItem.subset,
            ReviewItem.selection,
            ReviewItem.rank,
            ReviewItem.suspicion,
            ReviewItem.status,
            ReviewItem.claimed_by_id,
            claimer.name,
            ReviewItem.claim_expires_at,
            decider.name,
            Image.label_id,
            Image.label_version,
            Image.excluded_reason,
            Prediction.predicted_label_id,
            func.coalesce(Image.thumb_sha256, Image.sha256),
        )
        .join(Image, Image.id == ReviewItem.image_id)
        .outerjoin(Prediction, and_(Prediction.image_id == ReviewItem.image_id, Prediction.run_id == review.run_id))
        .outerjoin(claimer, claimer.id == ReviewItem.claimed_by_id)
        .outerjoin(decider, decider.id == ReviewItem.decided_by_id)
        .where(ReviewItem.review_id == review.id)
        .order_by(ReviewItem.rank, ReviewItem.subset)
    )
    if image_ids is not None:
        query = query.where(ReviewItem.image_id.in_(list(image_ids)))
    if held_or_decided_by is not None:
        query = query.where(
            or_(ReviewItem.claimed_by_id == held_or_decided_by, ReviewItem.decided_by_id == held_or_decided_by)
        )
    rows: Sequence[Any] = session.execute(query).all()
    return [ItemRow(*row) for row in rows]


def status_counts(session: Session, *, review_id: int) -> list[tuple[str, str, int]]:
    """(subset, status, count) of a campaign's items."""
    query = (
        select(ReviewItem.subset, ReviewItem.status, func.count())
        .where(ReviewItem.review_id == review_id)
        .group_by(ReviewItem.subset, ReviewItem.status)
    )
    return [(subset, status, count) for subset, status, count in session.execute(query)]


def _updated_one(result: Any) -> bool:
    return cast(CursorResult[Any], result).rowcount == 1


# --- claims -------------------------------------------------------------------------------------------------------


def _free(now: datetime) -> ColumnElement[bool]:
    return or_(ReviewItem.claimed_by_id.is_(None), ReviewItem.claim_expires_at < now)


def claimable_item_ids(session: Session, *, review_id: int, now: datetime, limit: int) -> list[int]:
    """Pending items nobody holds (or whose claim expired), in review order. On Postgres they are locked, skipping
    rows another reviewer's claim or decision has locked, so reviewers claiming at once take different items
    instead of queueing behind each other's transactions (SQLite runs writers one at a time anyway)."""
    query = (
        select(ReviewItem.id)
        .where(ReviewItem.review_id == review_id, ReviewItem.status == "pending", _free(now))
        .order_by(ReviewItem.rank, ReviewItem.subset)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    return list(session.scalars(query))


def claim_if_free(session: Session, *, item_id: int, user_id: int, now: datetime, expires_at: datetime) -> bool:
    """Take one item unless someone else holds an unexpired claim on it (re-checked by the UPDATE itself)."""
    statement = (
        update(ReviewItem)
        .where(ReviewItem.id == item_id, ReviewItem.status == "pending", _free(now))
        .values(claimed_by_id=user_id, claim_expires_at=expires_at)
        .execution_options(synchronize_session=False)
    )
    return _updated_one(session.execute(statement))


def pending_claims(session: Session, *, review_id: int, user_id: int) -> int:
    query = select(func.count()).where(
        ReviewItem.review_id == review_id, ReviewItem.status == "pending", ReviewItem.claimed_by_id == user_id
    )
    return int(session.scalar(query) or 0)


def renew_claims(session: Session, *, review_id: int, user_id: int, expires_at: datetime) -> None:
    session.execute(
        update(ReviewItem)
        .where(ReviewItem.review_id == review_id, ReviewItem.status == "pending", ReviewItem.claimed_by_id == user_id)
        .values(claim_expires_at=expires_at)
        .execution_options(synchronize_session=False)
    )


# --- re-scoring and the "is it worth it" panel --------------------------------------------------------------


def finished_runs_of_split(session: Session, *, split_id: int) -> list[Run]:
    query = select(Run).where(Run.split_id == split_id, Run.status == RunStatus.SUCCEEDED).order_by(Run.id)
    return list(session.scalars(query))


def finished_runs_of_dataset(session: Session, *, dataset_id: int) -> list[Run]:
    query = select(Run).where(Run.dataset_id == dataset_id, Run.status == RunStatus.SUCCEEDED).order_by(Run.id.desc())
    return list(session.scalars(query))


def has_current_error_sample(session: Session, *, run_id: int, subset: str) -> bool:
    query = select(ErrorSample.id).where(
        ErrorSample.run_id == run_id, ErrorSample.subset == subset, ErrorSample.is_current
    )
    return session.scalar(query.limit(1)) is not None


# --- two-reviewer agreement -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ProposalRow:
    """A proposal with names: labels, who proposed and decided, and the image's current label version."""

    id: int
    image_id: int
    subset: str
    state: str
    old_label: str
    new_label: str
    base_version: int
    reason: str
    proposed_by_id: int | None
    proposed_by: str | None
    proposed_at: datetime
    decided_by_id: int | None
    decided_by: str | None
    decided_at: datetime | None
    decision_reason: str
    change_id: int | None
    label_version: int

    @property
    def stale(self) -> bool:
        """Still open, but the image was relabelled since: confirming it would be refused."""
        return self.state == "proposed" and self.label_version != self.base_version

    @property
    def withdrawn(self) -> bool:
        """Rejected by the reviewer who proposed it."""
        return self.state == "rejected" and self.decided_by_id == self.proposed_by_id


def open_proposal(session: Session, *, review_id: int, image_id: int) -> LabelProposal | None:
    query = select(LabelProposal).where(
        LabelProposal.review_id == review_id, LabelProposal.image_id == image_id, LabelProposal.state == "proposed"
    )
    return session.scalar(query.order_by(LabelProposal.id.desc()).limit(1))


def latest_proposal(session: Session, *, review_id: int, image_id: int) -> LabelProposal | None:
    query = select(LabelProposal).where(LabelProposal.review_id == review_id, LabelProposal.image_id == image_id)
    return session.scalar(query.order_by(LabelProposal.id.desc()).limit(1))


def add_proposal(session: Session, proposal: LabelProposal) -> LabelProposal:
    session.add(proposal)
    session.flush()
    return proposal


def decide_proposal_if_open(
    session: Session, *, proposal_id: int, state: str, user_id: int, now: datetime, reason: str
) -> bool:
    """Move a proposal out of ``proposed``; of two reviewers deciding it at once only one matches the row (Postgres
    re-checks the WHERE clause after waiting for the other's row lock; SQLite runs writers one at a time)."""
    statement = (
        update(LabelProposal)
        .where(LabelProposal.id == proposal_id, LabelProposal.state == "proposed")
        .values(state=state, decided_by_id=user_id, decided_at=now, decision_reason=reason)
        .execution_options(synchronize_session=False)
    )
    return _updated_one(session.execute(statement))


def proposal_rows(session: Session, *, review_id: int, image_ids: Sequence[int] | None = None) -> list[ProposalRow]:
    """A campaign's proposals, oldest first."""
    old, new, proposer, decider = aliased(Label), aliased(Label), aliased(User), aliased(User)
    query = (
        select(
            LabelProposal.id,
            LabelProposal.image_id,
            ReviewItem.subset,
            LabelProposal.state,
            old.name,
            new.name,
            LabelProposal.base_version,
            LabelProposal.reason,
            LabelProposal.proposed_by_id,
            proposer.name,
            LabelProposal.proposed_at,
            LabelProposal.decided_by_id,
            decider.name,
            LabelProposal.decided_at,
            LabelProposal.decision_reason,
            LabelProposal.change_id,
            Image.label_version,
        )
        .join(old, old.id == LabelProposal.old_label_id)
        .join(new, new.id == LabelProposal.new_label_id)
        .join(Image, Image.id == LabelProposal.image_id)
        .join(
            ReviewItem,
            and_(ReviewItem.review_id == LabelProposal.review_id, ReviewItem.image_id == LabelProposal.image_id),
        )
        .outerjoin(proposer, proposer.id == LabelProposal.proposed_by_id)
        .outerjoin(decider, decider.id == LabelProposal.decided_by_id)
        .where(LabelProposal.review_id == review_id)
        .order_by(LabelProposal.id)
    )
    if image_ids is not None:
        query = query.where(LabelProposal.image_id.in_(list(image_ids)))
    rows: Sequence[Any] = session.execute(query).all()
    return [ProposalRow(*row) for row in rows]


def campaign_items(session: Session, *, review_id: int) -> list[tuple[int, str, str, str, float]]:
    """(image_id, subset, selection, status, suspicion) of a campaign's items."""
    query = select(
        ReviewItem.image_id, ReviewItem.subset, ReviewItem.selection, ReviewItem.status, ReviewItem.suspicion
    ).where(ReviewItem.review_id == review_id)
    return [
        (image_id, subset, selection, status, score)
        for image_id, subset, selection, status, score in session.execute(query)
    ]
