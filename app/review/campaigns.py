"""Label review campaigns: dev and test together by one selection rule (train only on request), open or closed,
their progress per subset, claims so reviewers do not collide, and the large view of one item."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.orm import Session

from app.core.errors import Conflict, DomainError, Invalid, NotFound, check_between
from app.core.limits import MAX_SELECTION
from app.core.lookup import get_or_404
from app.labels import service as label_service
from app.labels.repository import HistoryRow
from app.ml.top_classes import TopClass, top_classes
from app.models import Dataset, Review, Run, User, utcnow
from app.review import logic, repository
from app.review.rescoring import rescored_metrics
from app.review.suspicion import MAX_PER_SUBSET, REVIEWED_SUBSETS, TRAIN, finished_run, ordered_labels, rank

MAX_SEED = 2**63 - 1
CLAIM_SECONDS = 15 * 60
DEFAULT_CLAIM_SIZE = 20
MAX_CLAIM_SIZE = 200
CLAIM_ROUNDS = 5  # rounds of claiming when other reviewers keep winning the same items
OPEN, CLOSED = "open", "closed"
REVIEW_STATUSES = (OPEN, CLOSED)


class CampaignRuleError(DomainError, status_code=400, code="campaign_rule"):
    """A campaign that would treat dev and test differently (the seed's rule: correct both, the same way)."""


@dataclass(frozen=True)
class ItemView(repository.CampaignItem):
    label: str
    label_version: int
    excluded_reason: str | None
    predicted: str | None
    claimed_by: str | None
    claim_active: bool
    decided_by: str | None
    image_version: str


@dataclass(frozen=True)
class ProgressView:
    """How far a campaign is, per subset, whether dev and test drift apart, and its run re-scored."""

    review: Review
    progress: list[logic.SubsetProgress]
    drift: str | None
    rescored: dict[str, dict[str, Any]]


@dataclass(frozen=True)
class ReviewView:
    review: Review
    run: Run
    dataset: Dataset
    labels: list[str]  # in key order: the run's classes first, then labels it never saw
    items: list[ItemView]
    status: ProgressView
    pending_claims: int

    @property
    def subsets(self) -> list[str]:
        return self.review.subsets.split(",")


@dataclass(frozen=True)
class ItemDetail:
    review: Review
    item: ItemView
    filename: str
    width: int
    height: int
    top: list[TopClass]
    history: list[HistoryRow]
    labels: list[str]


def campaign_subsets(subsets: Sequence[str], *, include_train: bool) -> list[str]:
    """The campaign rule: dev and test together, always; train only through its own explicit option."""
    asked = [subset.strip().lower() for subset in subsets]
    if sorted(set(asked)) != sorted(REVIEWED_SUBSETS) or len(asked) != len(REVIEWED_SUBSETS):
        if TRAIN in asked:
            detail = "train is not reviewed through subsets; set include_train (a separate, explicit option)"
        else:
            detail = f"got {', '.join(asked) or 'none'}"
        raise CampaignRuleError(
            "a label review always covers dev and test together, with the same selection rule, so they stay one "
            f"distribution: subsets must be exactly dev and test ({detail})",
            extra={"required_subsets": list(REVIEWED_SUBSETS)},
        )
    return [*REVIEWED_SUBSETS, TRAIN] if include_train else list(REVIEWED_SUBSETS)


def create_review(
    session: Session,
    *,
    dataset_id: int,
    run_id: int,
    subsets: Sequence[str],
    suspicious_per_subset: int,
    correct_per_subset: int,
    seed: int,
    include_train: bool = False,
    actor: User,
) -> Review:
    """Start a campaign: the top-K most suspicious examples of each subset plus a random sample of correctly
    classified ones, by one rule for all subsets."""
    chosen = campaign_subsets(subsets, include_train=include_train)
    for name, value, low in (
        ("suspicious_per_subset", suspicious_per_subset, 1),
        ("correct_per_subset", correct_per_subset, 0),
    ):
        check_between(value, low, MAX_PER_SUBSET, f"{name} must be between {low} and {MAX_PER_SUBSET}; got {value}")
    check_between(seed, 0, MAX_SEED, f"the seed must be a whole number from 0 to {MAX_SEED}; got {seed}")
    dataset = get_or_404(session, Dataset, dataset_id)
    run = finished_run(session, run_id)
    if run.dataset_id != dataset.id:
        raise Invalid(f"run {run.id} belongs to another dataset, not to {dataset.name!r}")
    labels = label_service.names(session, dataset_id=dataset.id)
    items: list[dict[str, Any]] = []
    for subset in chosen:
        ranked, _ = rank(session, run=run, subset=subset, labels=labels)
        if ranked.image_ids.size == 0:
            raise Conflict(f"run {run.id} has no scored {subset} predictions, so {subset} cannot be reviewed")
        selected = logic.select_for_review(
            ranked, suspicious=suspicious_per_subset, correct=correct_per_subset, seed=seed, subset=subset
        )
        items.extend(
            {
                "image_id": example.image_id,
                "subset": subset,
                "selection": example.selection,
                "rank": example.rank,
                "suspicion": example.suspicion,
                "status": logic.PENDING,
            }
            for example in selected
        )
    review = Review(
        dataset_id=dataset.id,
        run_id=run.id,
        subsets=",".join(chosen),
        suspicious_per_subset=suspicious_per_subset,
        correct_per_subset=correct_per_subset,
        seed=seed,
        status=OPEN,
        created_by_id=actor.id,
    )
    return repository.add_review(session, review=review, items=items)


def get_review(session: Session, review_id: int) -> Review:
    return get_or_404(session, Review, review_id)


def open_review(session: Session, review_id: int) -> Review:
    review = get_review(session, review_id)
    if review.status != OPEN:
        raise Conflict(f"review {review.id} is closed; reopen it to claim or decide its items")
    return review


def open_campaigns(session: Session, *, dataset_id: int) -> list[Review]:
    """The dataset's open campaigns, newest first: where picked images can be added to be relabelled."""
    return [review for review in repository.reviews_of_dataset(session, dataset_id=dataset_id) if review.status == OPEN]


def set_review_status(session: Session, *, review_id: int, status: str) -> Review:
    """Close a finished campaign (its items can no longer be claimed or decided in it; changes made in it stay
    revertible) or reopen it."""
    if status not in REVIEW_STATUSES:
        raise Invalid(f"a review is {' or '.join(REVIEW_STATUSES)}; got {status!r}")
    review = get_review(session, review_id)
    review.status = status
    session.flush()
    return review


def progress(session: Session, review: Review) -> list[logic.SubsetProgress]:
    counts: dict[str, dict[str, int]] = {subset: {} for subset in review.subsets.split(",")}
    for subset, status, count in repository.status_counts(session, review_id=review.id):
        counts.setdefault(subset, {})[status] = count
    return [
        logic.SubsetProgress(
            subset=subset,
            done=sum(count for status, count in by_status.items() if status not in logic.UNDECIDED),
            total=sum(by_status.values()),
            relabeled=by_status.get(logic.RELABELED, 0),
            ambiguous=by_status.get(logic.AMBIGUOUS, 0),
        )
        for subset, by_status in counts.items()
    ]


def item_views(rows: Sequence[repository.ItemRow], labels: dict[int, str], now: datetime) -> list[ItemView]:
    return [
        ItemView(
            **{place.name: getattr(row, place.name) for place in fields(repository.CampaignItem)},
            label=labels.get(row.label_id, "?"),
            label_version=row.label_version,
            excluded_reason=row.excluded_reason,
            predicted=labels.get(row.predicted_label_id) if row.predicted_label_id is not None else None,
            claimed_by=row.claimed_by,
            claim_active=row.claim_expires_at is not None and row.claim_expires_at >= now,
            decided_by=row.decided_by,
            image_version=row.image_sha256[:16],
        )
        for row in rows
    ]


def review_view(session: Session, *, review_id: int, only_for: User | None = None) -> ReviewView:
    """A campaign: all its items, or (``only_for``) those a reviewer holds or decided, with progress per subset."""
    status = progress_view(session, review_id=review_id)
    review = status.review
    run = get_or_404(session, Run, review.run_id)
    dataset = get_or_404(session, Dataset, review.dataset_id)
    labels = label_service.names(session, dataset_id=review.dataset_id)
    rows = repository.item_rows(session, review=review, held_or_decided_by=only_for.id if only_for else None)
    return ReviewView(
        review=review,
        run=run,
        dataset=dataset,
        labels=ordered_labels(run, labels),
        items=item_views(rows, labels, utcnow()),
        status=status,
        pending_claims=repository.pending_claims(session, review_id=review.id, user_id=only_for.id) if only_for else 0,
    )


def progress_view(session: Session, *, review_id: int) -> ProgressView:
    review = get_review(session, review_id)
    counts = progress(session, review)
    return ProgressView(
        review=review,
        progress=counts,
        drift=logic.drift_warning(counts),
        rescored=rescored_metrics(session, run_id=review.run_id),
    )


def claim_items(session: Session, *, review_id: int, actor: User, count: int = DEFAULT_CLAIM_SIZE) -> list[ItemView]:
    """Hold up to ``count`` pending items for ``actor`` for CLAIM_SECONDS (renewing the ones already held), so two
    reviewers of one campaign get different items. Each claim is a conditional UPDATE, so two reviewers racing for
    an item cannot both get it; the loser simply takes the next free one."""
    check_between(count, 1, MAX_CLAIM_SIZE, f"claim between 1 and {MAX_CLAIM_SIZE} items at a time; got {count}")
    review = open_review(session, review_id)
    now = utcnow()
    expires_at = now + timedelta(seconds=CLAIM_SECONDS)
    repository.renew_claims(session, review_id=review.id, user_id=actor.id, expires_at=expires_at)
    wanted = count - repository.pending_claims(session, review_id=review.id, user_id=actor.id)
    for _round in range(CLAIM_ROUNDS):
        if wanted <= 0:
            break
        # A lost race means another reviewer's claim is committed, so the next query no longer offers that item.
        candidates = repository.claimable_item_ids(session, review_id=review.id, now=now, limit=wanted)
        for item_id in candidates:
            if repository.claim_if_free(session, item_id=item_id, user_id=actor.id, now=now, expires_at=expires_at):
                wanted -= 1
    labels = label_service.names(session, dataset_id=review.dataset_id)
    rows = repository.item_rows(session, review=review, held_or_decided_by=actor.id)
    return [item for item in item_views(rows, labels, now) if item.status == logic.PENDING]


def item_detail(session: Session, *, review_id: int, image_id: int) -> ItemDetail:
    """The large view of a campaign item: the run's top-3 classes and the image's label history."""
    review = get_review(session, review_id)
    image = label_service.get_image(session, image_id)
    labels = label_service.names(session, dataset_id=review.dataset_id)
    rows = repository.item_rows(session, review=review, image_ids=[image_id])
    if not rows:
        raise NotFound(f"image {image_id} is not part of review {review_id}")
    run = get_or_404(session, Run, review.run_id)
    prediction = repository.prediction(session, run_id=review.run_id, image_id=image_id)
    top = top_classes(prediction.probs, run.label_names, 3) if prediction is not None else []
    return ItemDetail(
        review=review,
        item=item_views(rows, labels, utcnow())[0],
        filename=image.filename,
        width=image.width,
        height=image.height,
        top=top,
        history=label_service.history(session, image_id=image_id),
        labels=ordered_labels(run, labels),
    )


@dataclass(frozen=True)
class PickedAdded:
    added: int
    already: int  # in the campaign before


def add_picked_items(session: Session, *, review_id: int, image_ids: Sequence[int]) -> PickedAdded:
    """Add images picked by hand (a map selection, a grid of neighbours) to an open campaign, ahead of its ranked
    items. Each must be one of the campaign run's predictions in the campaign's subsets; if any is not, nothing is
    added and the answer names them. Picked items count in the progress, not in the ranking's precision."""
    wanted = list(dict.fromkeys(image_ids))
    check_between(len(wanted), 1, MAX_SELECTION, f"pick between 1 and {MAX_SELECTION} images; got {len(wanted)}")
    review = open_review(session, review_id)
    run = get_or_404(session, Run, review.run_id)
    present = repository.item_image_ids(session, review_id=review.id)
    new = [image_id for image_id in wanted if image_id not in present]
    subsets = review.subsets.split(",")
    rows = {row[0]: row for row in repository.predictions_of(session, run_id=run.id, image_ids=new)}
    refused = [image_id for image_id in new if image_id not in rows or rows[image_id][1] not in subsets]
    if refused:
        raise Invalid(
            f"{len(refused)} of the {len(wanted)} images are not among run {run.id}'s {' and '.join(subsets)} "
            f"predictions, which this campaign reviews (e.g. {', '.join(map(str, refused[:5]))}); nothing was added",
            extra={"images": refused[: label_service.LISTED_IMAGES]},
        )
    labels = label_service.names(session, dataset_id=review.dataset_id)
    columns = {str(name): index for index, name in enumerate(run.label_names)}
    start = repository.first_rank(session, review_id=review.id) - len(new)
    items = []
    for place, image_id in enumerate(new):
        _, subset, probs, label_id = rows[image_id]
        column = columns.get(labels.get(label_id, "") if label_id is not None else "", -1)
        items.append(
            {
                "image_id": image_id,
                "subset": subset,
                "selection": logic.PICKED,
                "rank": start + place,
                "suspicion": round(logic.self_doubt(probs, column), 6),
            }
        )
    if items:
        repository.add_items(session, review_id=review.id, items=items)
        session.flush()
    return PickedAdded(added=len(new), already=len(wanted) - len(new))
