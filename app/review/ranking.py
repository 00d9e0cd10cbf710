"""One run's out-of-sample images ranked for a grid: by fused suspicion, today's suspicion, loss or confidence.

"fused" is ``app.ml.suspicion.fused_suspicion``: the run's probability of each image's current label together
with the label vote of its nearest labelled neighbours in embedding space (stored by the embeddings job,
``NeighbourStore``), so a relabel moves its neighbours' scores at once. Train images are left out: the run
trained on them, so its confidence there says little about their labels.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, TypeVar

import numpy as np
from sqlalchemy.orm import Session

from app.core.errors import Invalid
from app.core.lookup import get_or_404
from app.embeddings import repository as embeddings_repository
from app.embeddings import service as embeddings
from app.embeddings.store import EmbeddingsRoot, NeighbourStore
from app.ml.suspicion import fused_suspicion, knn_label_vote
from app.models import Run
from app.training.states import RunStatus


class HasImageId(Protocol):
    @property
    def image_id(self) -> int: ...


RANKINGS = ("fused", "suspicion", "loss", "confidence")
# How a grid's sort menu names each ranking (the dataset grid and the campaign grid say the same).
RANKING_NAMES = {
    "fused": "fused suspicion (model + neighbours)",
    "suspicion": "suspicion (model)",
    "loss": "loss, highest first",
    "confidence": "confidence, lowest first",
}
Item = TypeVar("Item", bound=HasImageId)
IN_SAMPLE = "train"
_EPSILON = 1e-7


@dataclass(frozen=True)
class Ranked:
    """Image ids in grid order (most suspicious, highest loss or least confident first) and their scores."""

    run_id: int
    by: str
    image_ids: list[int]
    scores: dict[int, float]


def rank_run_images(session: Session, *, dataset_id: int, run_id: int, by: str, root: EmbeddingsRoot) -> Ranked:
    if by not in RANKINGS:
        raise Invalid(f"sort by one of {', '.join(RANKINGS)}; got {by!r}")
    run = get_or_404(session, Run, run_id, dataset_id=dataset_id)
    if run.status != RunStatus.SUCCEEDED:
        raise Invalid(f"run {run_id} is {run.status}; only a finished run's predictions can sort the grid")
    rows = [row for row in embeddings_repository.run_predictions(session, run.id) if row[1] != IN_SAMPLE]
    columns = {str(name): index for index, name in enumerate(run.label_names)}
    width = max(len(columns), 2)
    image_ids = np.array([row[0] for row in rows], dtype=np.int64)
    probs = np.zeros((len(rows), width))
    for place, row in enumerate(rows):
        vector = np.frombuffer(row[3], dtype=np.float32)[:width]
        probs[place, : vector.size] = vector
    # A label the run never saw has no column: its probability counts as 0 (as doubtful as can be).
    given = np.array([columns.get(row[4], -1) for row in rows], dtype=np.int64)
    own = np.where(given >= 0, probs[np.arange(len(rows)), np.clip(given, 0, None)], 0.0)
    if by == "confidence":
        scores = probs.max(axis=1) if len(rows) else np.zeros(0)
        order = np.lexsort((image_ids, scores))  # least confident first
    else:
        if by == "fused":
            scores = _fused(session, run=run, image_ids=image_ids, probs=probs, given=given, root=root)
        elif by == "loss":
            scores = -np.log(np.clip(own, _EPSILON, 1.0))
        else:
            scores = 1.0 - own
        order = np.lexsort((image_ids, -scores))
    ordered = image_ids[order].tolist()
    by_image = {i: round(float(s), 4) for i, s in zip(ordered, scores[order].tolist(), strict=True)}
    return Ranked(run.id, by, ordered, by_image)


def _fused(
    session: Session, *, run: Run, image_ids: np.ndarray, probs: np.ndarray, given: np.ndarray, root: EmbeddingsRoot
) -> np.ndarray:
    backbone = str(run.config.get("backbone") or "") or None
    sets = {s.backbone: s for s in embeddings_repository.sets_of(session, run.dataset_id) if s.count > 0}
    embedding_set = sets.get(backbone or "") or embeddings.usable_set(session, dataset_id=run.dataset_id, backbone=None)
    found = NeighbourStore(embeddings.store_of(root, embedding_set)).read()
    if found is None:
        raise embeddings.EmbeddingsMissing(
            f"the {embedding_set.backbone} embeddings of dataset {run.dataset_id} have no neighbours yet: run the "
            f'job again with POST /api/datasets/{run.dataset_id}/embeddings {{"backbone": "{embedding_set.backbone}"}}',
            extra={"start": f"/api/datasets/{run.dataset_id}/embeddings", "backbone": embedding_set.backbone},
        )
    if not image_ids.size:
        return np.zeros(0)
    labels = embeddings_repository.dataset_labels(session, run.dataset_id)
    neighbour_labels, weights = _neighbour_columns(run, image_ids, found, labels)
    vote = knn_label_vote(neighbour_labels, probs.shape[1], neighbour_weights=weights)
    # A label the run has no column for scores 1: as doubtful as can be.
    known = given >= 0
    scores = np.ones(image_ids.size)
    if known.any():
        scores[known] = fused_suspicion(probs[known], given[known], vote[known])
    return scores


def _neighbour_columns(
    run: Run,
    image_ids: np.ndarray,
    found: tuple[np.ndarray, np.ndarray, np.ndarray],
    labels: dict[int, str],
) -> tuple[np.ndarray, np.ndarray]:
    """Each image's neighbours' current labels as the run's columns (-1: none or unknown), and their similarities."""
    stored_ids, neighbour_ids, similarities = found
    columns = {str(name): index for index, name in enumerate(run.label_names)}
    place = {image_id: row for row, image_id in enumerate(stored_ids.tolist())}
    neighbour_labels = np.full((image_ids.size, neighbour_ids.shape[1]), -1, dtype=np.int64)
    weights = np.zeros(neighbour_labels.shape)
    for query, image_id in enumerate(image_ids.tolist()):
        row = place.get(image_id)
        if row is None:
            continue  # not embedded yet: the vote is uniform and the model decides alone
        for slot, neighbour in enumerate(neighbour_ids[row].tolist()):
            column = columns.get(labels.get(neighbour, ""), -1)
            if column >= 0:
                neighbour_labels[query, slot], weights[query, slot] = column, similarities[row, slot]
    return neighbour_labels, weights


def finished_runs(session: Session, *, dataset_id: int) -> list[Run]:
    """The runs whose predictions can sort a grid, newest first."""
    return embeddings_repository.finished_runs(session, dataset_id)


def in_ranked_order(items: list[Item], ranked: Ranked | None) -> list[Item]:
    """A grid's items in the ranking's order; those it does not rank (train, excluded) after them, as they were."""
    if ranked is None:
        return items
    place = {image_id: index for index, image_id in enumerate(ranked.image_ids)}
    return sorted(items, key=lambda item: place.get(item.image_id, len(place)))
