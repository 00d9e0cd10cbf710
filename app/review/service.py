"""Label review: is it worth it, suspicion ranking, campaigns over dev and test together, versioned relabeling with
a full history (every change can be reverted), claims so reviewers do not collide, and re-scored runs.

Every label or exclusion change is a conditional ``UPDATE images ... WHERE label_version = :expected`` followed by a
``label_changes`` row, in the request's transaction: a stale version changes nothing and answers 409 with the
current label and who set it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import numpy as np
from sqlalchemy.orm import Session

from app.core.errors import Conflict, DomainError, Invalid, NotFound
from app.error_analysis import service as error_analysis
from app.ml.error_analysis import LabelFixDecision, decide_label_fix
from app.ml.metrics import rescore
from app.models import Dataset, Image, LabelChange, Review, ReviewItem, Run, User, utcnow
from app.review import logic, repository
from app.review.repository import HistoryRow

REVIEWED_SUBSETS = ("dev", "test")
TRAIN = "train"
MAX_PER_SUBSET = 1_000
MAX_SEED = 2**63 - 1
MAX_REASON_CHARS = 1_000
CLAIM_SECONDS = 15 * 60
DEFAULT_CLAIM_SIZE = 20
MAX_CLAIM_SIZE = 200
CLAIM_ROUNDS = 5  # rounds of claiming when other reviewers keep winning the same items
DECISIONS = (logic.KEPT, logic.PENDING)
OPEN, CLOSED = "open", "closed"
REVIEW_STATUSES = (OPEN, CLOSED)


class CampaignRuleError(DomainError):
    """A campaign that would treat dev and test differently (the seed's rule: correct both, the same way)."""

    status_code = 400
    code = "campaign_rule"


@dataclass(frozen=True)
class LabelState:
    """An image's label as a client must name it for its next change, and what the last request did."""

    image_id: int
    label: str | None  # None: unlabeled (the pool)
    label_version: int
    excluded_reason: str | None
    change_id: int | None = None  # the history row this request wrote, if it changed anything
    review_status: str | None = None  # the campaign item's status after this request, when a campaign was named


@dataclass(frozen=True)
class ItemView:
    image_id: int
    subset: str
    selection: str
    rank: int
    suspicion: float
    status: str
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
class TopClass:
    label: str
    probability: float


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


@dataclass(frozen=True)
class SuspiciousExample:
    image_id: int
    label: str
    suggested: str | None
    suspicion: float
    flagged: bool


@dataclass(frozen=True)
class SubsetSuspicionSummary:
    subset: str
    size: int
    flagged: int
    top: list[SuspiciousExample]
    disagreements: int = 0  # images whose most probable class is not their label


@dataclass(frozen=True)
class RescoredRun:
    run: Run
    metrics: dict[str, dict[str, Any]]


@dataclass(frozen=True)
class RunReviewPage:
    run: Run
    dataset: Dataset
    decision: LabelFixDecision
    sample_reviewed: bool  # whether the run's dev errors have a current error-analysis sample at all
    suspicion: list[SubsetSuspicionSummary]
    reviews: list[tuple[Review, list[logic.SubsetProgress]]]
    rescored: list[RescoredRun]


# --- runs, labels and probabilities -----------------------------------------------------------------------------


def _finished_run(session: Session, run_id: int) -> Run:
    run = repository.get_run(session, run_id)
    if run is None:
        raise NotFound(f"run {run_id} does not exist")
    if run.status != "succeeded":
        raise Conflict(f"run {run_id} is {run.status}; label review needs a run that finished training")
    return run


def _dataset(session: Session, dataset_id: int) -> Dataset:
    dataset = repository.get_dataset(session, dataset_id)
    if dataset is None:
        raise NotFound(f"dataset {dataset_id} does not exist")
    return dataset


def _ordered_labels(run: Run, labels: dict[int, str]) -> list[str]:
    """Key order: the run's classes (its probability columns) first, then labels added after it trained."""
    names = [str(name) for name in run.label_names]
    return names + sorted(name for name in labels.values() if name not in names)


def _rank(
    session: Session, *, run: Run, subset: str, labels: dict[int, str]
) -> tuple[logic.SubsetSuspicion, dict[int, int]]:
    """The subset ranked by suspicion, and each ranked image's current label id."""
    rows = repository.subset_rows(session, run_id=run.id, subset=subset)
    columns = {str(name): index for index, name in enumerate(run.label_names)}
    width = len(columns)
    probs = np.zeros((len(rows), width), dtype=np.float64)
    for index, row in enumerate(rows):
        vector = np.frombuffer(row.probs, dtype=np.float32)[:width]
        probs[index, : vector.size] = vector
    ranked = logic.rank_subset(
        image_ids=[row.image_id for row in rows],
        probs=probs,
        labels=[columns.get(labels.get(row.label_id, ""), -1) for row in rows],
    )
    return ranked, {row.image_id: row.label_id for row in rows}


def suspicious_examples(session: Session, *, run_id: int, subset: str, limit: int = 50) -> SubsetSuspicionSummary:
    """The subset's examples ranked by how likely their given label is wrong (from the run's probabilities)."""
    if subset not in (*REVIEWED_SUBSETS, TRAIN):
        raise Invalid(f"subset must be dev, test or train; got {subset!r}")
    if not 1 <= limit <= MAX_PER_SUBSET:
        raise Invalid(f"limit must be between 1 and {MAX_PER_SUBSET}")
    run = _finished_run(session, run_id)
    labels = repository.labels_of(session, dataset_id=run.dataset_id)
    known_names = set(labels.values())
    ranked, label_of = _rank(session, run=run, subset=subset, labels=labels)
    names = [str(name) for name in run.label_names]
    top = []
    for row in ranked.order[:limit].tolist():
        image_id = int(ranked.image_ids[row])
        column = int(ranked.suggested[row])
        top.append(
            SuspiciousExample(
                image_id=image_id,
                label=labels.get(label_of[image_id], "?"),
                suggested=names[column] if 0 <= column < len(names) and names[column] in known_names else None,
                suspicion=float(ranked.scores[row]),
                flagged=bool(ranked.flagged[row]),
            )
        )
    size, flagged, agreed = ranked.image_ids.size, int(ranked.flagged.sum()), int(ranked.correctly_classified.sum())
    return SubsetSuspicionSummary(subset=subset, size=size, flagged=flagged, top=top, disagreements=size - agreed)


# --- campaigns -----------------------------------------------------------------------------------------------------


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
    if not 1 <= suspicious_per_subset <= MAX_PER_SUBSET:
        raise Invalid(f"suspicious_per_subset must be between 1 and {MAX_PER_SUBSET}; got {suspicious_per_subset}")
    if not 0 <= correct_per_subset <= MAX_PER_SUBSET:
        raise Invalid(f"correct_per_subset must be between 0 and {MAX_PER_SUBSET}; got {correct_per_subset}")
    if not 0 <= seed <= MAX_SEED:
        raise Invalid(f"the seed must be a whole number from 0 to {MAX_SEED}; got {seed}")
    dataset = _dataset(session, dataset_id)
    run = _finished_run(session, run_id)
    if run.dataset_id != dataset.id:
        raise Invalid(f"run {run.id} belongs to another dataset, not to {dataset.name!r}")
    labels = repository.labels_of(session, dataset_id=dataset.id)
    items: list[dict[str, Any]] = []
    for subset in chosen:
        ranked, _ = _rank(session, run=run, subset=subset, labels=labels)
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


def _review(session: Session, review_id: int) -> Review:
    review = repository.get_review(session, review_id)
    if review is None:
        raise NotFound(f"review {review_id} does not exist")
    return review


def _open_review(session: Session, review_id: int) -> Review:
    review = _review(session, review_id)
    if review.status != OPEN:
        raise Conflict(f"review {review.id} is closed; reopen it to claim or decide its items")
    return review


def set_review_status(session: Session, *, review_id: int, status: str) -> Review:
    """Close a finished campaign (its items can no longer be claimed or decided in it; changes made in it stay
    revertible) or reopen it."""
    if status not in REVIEW_STATUSES:
        raise Invalid(f"a review is {' or '.join(REVIEW_STATUSES)}; got {status!r}")
    review = _review(session, review_id)
    review.status = status
    session.flush()
    return review


def _progress(session: Session, review: Review) -> list[logic.SubsetProgress]:
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


def _item_views(rows: Sequence[repository.ItemRow], labels: dict[int, str], now: datetime) -> list[ItemView]:
    return [
        ItemView(
            image_id=row.image_id,
            subset=row.subset,
            selection=row.selection,
            rank=row.rank,
            suspicion=row.suspicion,
            status=row.status,
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
    run = repository.get_run(session, review.run_id)
    dataset = repository.get_dataset(session, review.dataset_id)
    assert run is not None and dataset is not None  # reviews cascade with their run and dataset
    labels = repository.labels_of(session, dataset_id=review.dataset_id)
    rows = repository.item_rows(session, review=review, held_or_decided_by=only_for.id if only_for else None)
    return ReviewView(
        review=review,
        run=run,
        dataset=dataset,
        labels=_ordered_labels(run, labels),
        items=_item_views(rows, labels, utcnow()),
        status=status,
        pending_claims=repository.pending_claims(session, review_id=review.id, user_id=only_for.id) if only_for else 0,
    )


def progress_view(session: Session, *, review_id: int) -> ProgressView:
    review = _review(session, review_id)
    progress = _progress(session, review)
    return ProgressView(
        review=review,
        progress=progress,
        drift=logic.drift_warning(progress),
        rescored=rescored_metrics(session, run_id=review.run_id),
    )


def claim_items(session: Session, *, review_id: int, actor: User, count: int = DEFAULT_CLAIM_SIZE) -> list[ItemView]:
    """Hold up to ``count`` pending items for ``actor`` for CLAIM_SECONDS (renewing the ones already held), so two
    reviewers of one campaign get different items. Each claim is a conditional UPDATE, so two reviewers racing for
    an item cannot both get it; the loser simply takes the next free one."""
    if not 1 <= count <= MAX_CLAIM_SIZE:
        raise Invalid(f"claim between 1 and {MAX_CLAIM_SIZE} items at a time; got {count}")
    review = _open_review(session, review_id)
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
    labels = repository.labels_of(session, dataset_id=review.dataset_id)
    rows = repository.item_rows(session, review=review, held_or_decided_by=actor.id)
    return [item for item in _item_views(rows, labels, now) if item.status == logic.PENDING]


# --- label changes ------------------------------------------------------------------------------------------------


def _image(session: Session, image_id: int) -> Image:
    image = repository.get_image(session, image_id)
    if image is None:
        raise NotFound(f"image {image_id} does not exist")
    return image


def _state(session: Session, image: Image, **extra: Any) -> LabelState:
    label = repository.get_label(session, image.label_id) if image.label_id is not None else None
    return LabelState(
        image_id=image.id,
        label=label.name if label is not None else (None if image.label_id is None else "?"),
        label_version=image.label_version,
        excluded_reason=image.excluded_reason,
        **extra,
    )


def label_state(session: Session, *, image_id: int) -> LabelState:
    return _state(session, _image(session, image_id))


def _stale(session: Session, image: Image, *, expected_version: int) -> Conflict:
    """The 409 for a change made against an old version: the current label, its version and who set it."""
    session.refresh(image)
    current = _state(session, image)
    latest = repository.latest_change(session, image_id=image.id)
    changed_by = latest[1] if latest is not None else None
    changed_at = latest[0].created_at.isoformat() if latest is not None else None
    return Conflict(
        f"image {image.id} changed since you looked (you saw version {expected_version}, it is now "
        f"{current.label_version}): its label is {current.label!r}"
        + (f", set by {changed_by}" if changed_by else "")
        + ". Look again and redo your change if it still applies.",
        extra={
            "image_id": image.id,
            "label": current.label,
            "label_version": current.label_version,
            "excluded_reason": current.excluded_reason,
            "changed_by": changed_by,
            "changed_at": changed_at,
        },
    )


def _clean_reason(reason: str, *, required: bool = False) -> str:
    cleaned = reason.strip()
    if required and not cleaned:
        raise Invalid("say why: a reason is recorded with the change")
    if len(cleaned) > MAX_REASON_CHARS:
        raise Invalid(f"a reason can be at most {MAX_REASON_CHARS} characters; this one has {len(cleaned)}")
    return cleaned


def _campaign_item(session: Session, *, review_id: int | None, image: Image) -> ReviewItem | None:
    if review_id is None:
        return None
    review = _open_review(session, review_id)
    item = repository.review_item(session, review_id=review.id, image_id=image.id)
    if review.dataset_id != image.dataset_id or item is None:
        raise Invalid(f"image {image.id} is not part of review {review.id}")
    return item


def _decide(item: ReviewItem | None, *, status: str, actor: User) -> str | None:
    if item is None:
        return None
    item.status = status
    item.decided_by_id = actor.id
    item.decided_at = utcnow()
    return status


def _reopen(item: ReviewItem) -> str:
    """The item needs a decision again (its decision was undone)."""
    item.status, item.decided_by_id, item.decided_at = logic.PENDING, None, None
    return item.status


def change_label(
    session: Session,
    *,
    image_id: int,
    label: str,
    expected_version: int,
    review_id: int | None = None,
    reason: str = "",
    actor: User,
) -> LabelState:
    """Relabel an image, naming the version the reviewer saw. Choosing the label it already has changes nothing
    (within a campaign it keeps the item)."""
    image = _image(session, image_id)
    labels = repository.labels_of(session, dataset_id=image.dataset_id)
    by_name = {name: label_id for label_id, name in labels.items()}
    if label not in by_name and image.label_id is None:
        # The first label of an image uploaded unlabeled may be new (a dataset can start with no labels at all).
        from app.datasets.service import add_label

        created = add_label(session, dataset_id=image.dataset_id, name=label, user_id=actor.id)
        label, by_name[created.name] = created.name, created.id
    if label not in by_name:
        raise Invalid(
            f"dataset has no label {label!r}; known labels: {', '.join(sorted(by_name))}",
            extra={"labels": sorted(by_name)},
        )
    cleaned = _clean_reason(reason)
    item = _campaign_item(session, review_id=review_id, image=image)
    if image.label_version != expected_version:
        raise _stale(session, image, expected_version=expected_version)
    new_label_id = by_name[label]
    if new_label_id == image.label_id:
        status = None
        if item is not None:
            status = decide_item(
                session,
                review_id=item.review_id,
                image_id=image.id,
                decision=logic.KEPT,
                expected_version=expected_version,
                actor=actor,
            ).review_status
        return _state(session, image, review_status=status)
    old_label_id = image.label_id
    if not repository.set_label_if_version(
        session, image_id=image.id, expected_version=expected_version, label_id=new_label_id
    ):
        raise _stale(session, image, expected_version=expected_version)
    change = repository.add_change(
        session,
        LabelChange(
            image_id=image.id,
            # The first label of an image uploaded unlabeled is a change like any other, named for what it is.
            kind="relabel" if old_label_id is not None else "label",
            old_label_id=old_label_id,
            new_label_id=new_label_id,
            version=expected_version + 1,
            reason=cleaned,
            review_id=item.review_id if item is not None else None,
            user_id=actor.id,
        ),
    )
    # An item already excluded as ambiguous stays counted as such: its new label is not scored either.
    status = _decide(item, status=logic.AMBIGUOUS if image.excluded_reason else logic.RELABELED, actor=actor)
    session.refresh(image)
    return _state(session, image, change_id=change.id, review_status=status)


def mark_ambiguous(
    session: Session,
    *,
    image_id: int,
    reason: str,
    expected_version: int,
    review_id: int | None = None,
    actor: User,
) -> LabelState:
    """Leave an image out of scoring (its label cannot be told), with a recorded reason; revertible."""
    image = _image(session, image_id)
    cleaned = _clean_reason(reason, required=True)
    item = _campaign_item(session, review_id=review_id, image=image)
    if image.label_version != expected_version:
        raise _stale(session, image, expected_version=expected_version)
    if image.excluded_reason is not None:
        raise Conflict(f"image {image.id} is already excluded from scoring ({image.excluded_reason!r})")
    if not repository.set_exclusion_if_version(
        session, image_id=image.id, expected_version=expected_version, excluded_reason=cleaned
    ):
        raise _stale(session, image, expected_version=expected_version)
    change = repository.add_change(
        session,
        LabelChange(
            image_id=image.id,
            kind="ambiguous",
            old_label_id=image.label_id,
            new_label_id=image.label_id,
            version=expected_version + 1,
            reason=cleaned,
            review_id=item.review_id if item is not None else None,
            user_id=actor.id,
        ),
    )
    status = _decide(item, status=logic.AMBIGUOUS, actor=actor)
    session.refresh(image)
    return _state(session, image, change_id=change.id, review_status=status)


def decide_item(
    session: Session, *, review_id: int, image_id: int, decision: str, expected_version: int, actor: User
) -> LabelState:
    """Keep an item's label as it is (``kept``), or undo that (``pending``). Keeping names the version seen, so
    a label someone changed meanwhile is not confirmed blindly."""
    if decision not in DECISIONS:
        raise Invalid(f"decision must be one of {', '.join(DECISIONS)}; got {decision!r}")
    image = _image(session, image_id)
    item = _campaign_item(session, review_id=review_id, image=image)
    assert item is not None
    # Lock the image row at the version seen: a concurrent relabel either finished first (409 here) or waits.
    if not repository.lock_if_version(session, image_id=image.id, expected_version=expected_version):
        raise _stale(session, image, expected_version=expected_version)
    if item.status not in (logic.PENDING, logic.KEPT):
        raise Conflict(
            f"image {image.id} was already decided in this review ({item.status}); undo that change first",
            extra={"review_status": item.status},
        )
    if decision == logic.KEPT:
        _decide(item, status=logic.KEPT, actor=actor)
    else:
        _reopen(item)
    session.flush()
    return _state(session, image, review_status=item.status)


def revert_change(
    session: Session, *, change_id: int, expected_version: int | None = None, reason: str = "", actor: User
) -> LabelState:
    """Take a change back with a new history row (a revert of a revert redoes the change). Only a change still
    in effect can be reverted: if a later change touched the same thing, that one has to be reverted first."""
    change = repository.get_change(session, change_id)
    if change is None:
        raise NotFound(f"label change {change_id} does not exist")
    image = _image(session, change.image_id)
    cleaned = _clean_reason(reason) or f"revert of change {change.id}"
    records = {
        row.id: logic.ChangeRecord(
            id=row.id,
            kind=row.kind,
            old_label_id=row.old_label_id,
            new_label_id=row.new_label_id,
            reason=row.reason,
            reverts_change_id=row.reverts_change_id,
        )
        for row in repository.changes_of_image(session, image_id=image.id)
    }
    try:
        effect = logic.effect_of(change.id, records)
    except logic.NotRevertible as exc:
        raise Invalid(str(exc)) from exc
    version = image.label_version if expected_version is None else expected_version
    if image.label_version != version:
        raise _stale(session, image, expected_version=version)
    current = image.label_id if effect.field == "label" else image.excluded_reason
    if current != effect.after:
        raise Conflict(
            f"change {change.id} is no longer in effect: a later change to image {image.id} replaced it; "
            "revert that one first",
            extra={"label_version": image.label_version, "history": f"/api/images/{image.id}/history"},
        )
    old_label_id = image.label_id
    if effect.field == "label":
        if not isinstance(effect.before, int):
            raise Invalid(f"change {change.id} has no earlier label to go back to")
        applied = repository.set_label_if_version(
            session, image_id=image.id, expected_version=version, label_id=effect.before
        )
    else:
        before = effect.before if isinstance(effect.before, str) else None
        applied = repository.set_exclusion_if_version(
            session, image_id=image.id, expected_version=version, excluded_reason=before
        )
    if not applied:
        raise _stale(session, image, expected_version=version)
    session.refresh(image)
    revert = repository.add_change(
        session,
        LabelChange(
            image_id=image.id,
            kind="revert",
            old_label_id=old_label_id,
            new_label_id=image.label_id,
            version=image.label_version,
            reason=cleaned,
            review_id=change.review_id,
            reverts_change_id=change.id,
            user_id=actor.id,
        ),
    )
    status = None
    if change.review_id is not None:
        item = repository.review_item(session, review_id=change.review_id, image_id=image.id)
        new_status = logic.item_status_for(effect.inverse())
        if item is not None and new_status == logic.PENDING:
            status = _reopen(item)
        elif item is not None:
            status = _decide(item, status=new_status, actor=actor)
    session.flush()
    return _state(session, image, change_id=revert.id, review_status=status)


def image_history(session: Session, *, image_id: int) -> list[HistoryRow]:
    _image(session, image_id)
    return repository.history(session, image_id=image_id)


def item_detail(session: Session, *, review_id: int, image_id: int) -> ItemDetail:
    """The large view of a campaign item: the run's top-3 classes and the image's label history."""
    review = _review(session, review_id)
    image = _image(session, image_id)
    labels = repository.labels_of(session, dataset_id=review.dataset_id)
    rows = repository.item_rows(session, review=review, image_ids=[image_id])
    if not rows:
        raise NotFound(f"image {image_id} is not part of review {review_id}")
    run = repository.get_run(session, review.run_id)
    prediction = repository.prediction(session, run_id=review.run_id, image_id=image_id)
    assert run is not None
    top: list[TopClass] = []
    if prediction is not None:
        probs = np.frombuffer(prediction.probs, dtype=np.float32)
        names = [str(name) for name in run.label_names]
        for column in np.argsort(-probs, kind="stable")[:3].tolist():
            top.append(TopClass(names[column] if column < len(names) else f"#{column}", float(probs[column])))
    return ItemDetail(
        review=review,
        item=_item_views(rows, labels, utcnow())[0],
        filename=image.filename,
        width=image.width,
        height=image.height,
        top=top,
        history=repository.history(session, image_id=image_id),
        labels=_ordered_labels(run, labels),
    )


# --- re-scoring ---------------------------------------------------------------------------------------------------


def _rate(value: float) -> float | None:
    return None if math.isnan(value) else value


def rescored_metrics(session: Session, *, run_id: int) -> dict[str, dict[str, Any]]:
    """A run's dev/test metrics from its stored predictions against the current labels (no retraining), next to
    the metrics against the labels it was scored with. Excluded (ambiguous) images are left out of "after".

    Per subset: ``accuracy``, ``error``, ``before_accuracy``, ``before_error`` (None for an empty subset),
    ``count`` (images scored after), ``changed`` (images whose label differs from the one the run saw) and
    ``excluded``.
    """
    run = repository.get_run(session, run_id)
    if run is None:
        raise NotFound(f"run {run_id} does not exist")
    result: dict[str, dict[str, Any]] = {}
    for subset in REVIEWED_SUBSETS:
        # The cached subset (kept current by label changes) rather than a join of the predictions with the images
        # on every campaign page and progress poll.
        state = error_analysis.subset_state(session, run=run, subset=subset)
        if not state.image_ids.size:
            continue
        before = rescore(state.predicted, state.labels_at_prediction, np.zeros(state.image_ids.size, dtype=bool))
        after = rescore(state.predicted, state.labels, state.excluded)
        result[subset] = {
            "accuracy": _rate(after.accuracy),
            "error": _rate(after.error),
            "before_accuracy": _rate(before.accuracy),
            "before_error": _rate(before.error),
            "count": after.count,
            "changed": int(np.count_nonzero(state.labels != state.labels_at_prediction)),
            "excluded": int(np.count_nonzero(state.excluded)),
        }
    return result


# --- the run's review page: is it worth it? -------------------------------------------------------------------------


def _smallest_run_gap(session: Session, *, run: Run, dev_error: float) -> float | None:
    """How close the nearest other finished run of the same split is in (re-scored) dev error."""
    gaps = []
    for other in repository.finished_runs_of_split(session, split_id=run.split_id):
        if other.id == run.id:
            continue
        other_error = rescored_metrics(session, run_id=other.id).get("dev", {}).get("error")
        if other_error is not None:
            gaps.append(abs(other_error - dev_error))
    return min(gaps) if gaps else None


def label_fix_decision(session: Session, *, run: Run) -> tuple[LabelFixDecision, bool]:
    """Whether fixing labels is worth it, from the ``mislabeled`` share of the run's reviewed dev errors (the error
    analysis' current sample), and whether that sample exists yet."""
    reviewed = mislabeled = 0
    dev = rescored_metrics(session, run_id=run.id).get("dev", {})
    dev_error = dev.get("error") or 0.0
    sampled = repository.has_current_error_sample(session, run_id=run.id, subset="dev")
    if sampled:
        analysis = error_analysis.analyse(session, run_id=run.id, subset="dev")
        dev_error = analysis.subset_error
        reviewed = analysis.reviewed
        mislabeled = next((row.count for row in analysis.rows if row.tag == error_analysis.MISLABELED), 0)
    decision = decide_label_fix(
        dev_error=dev_error,
        mislabeled=mislabeled,
        reviewed=reviewed,
        smallest_run_gap=_smallest_run_gap(session, run=run, dev_error=dev_error),
        avoidable_bias=(run.diagnosis or {}).get("gaps", {}).get("avoidable_bias"),
    )
    return decision, sampled


def run_review_page(session: Session, *, run_id: int) -> RunReviewPage:
    run = _finished_run(session, run_id)
    dataset = _dataset(session, run.dataset_id)
    decision, sampled = label_fix_decision(session, run=run)
    reviews = [
        (review, _progress(session, review)) for review in repository.reviews_of_dataset(session, dataset_id=dataset.id)
    ]
    return RunReviewPage(
        run=run,
        dataset=dataset,
        decision=decision,
        sample_reviewed=sampled,
        suspicion=[suspicious_examples(session, run_id=run.id, subset=subset, limit=8) for subset in REVIEWED_SUBSETS],
        reviews=reviews,
        rescored=[
            RescoredRun(run=other, metrics=rescored_metrics(session, run_id=other.id))
            for other in repository.finished_runs_of_dataset(session, dataset_id=dataset.id)
        ],
    )
