"""Embeddings: start the job that stores a dataset's vectors for a backbone, list them, find similar images."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import numpy as np
from sqlalchemy.orm import Session

from app.core.errors import Conflict, Invalid, NotFound
from app.core.lookup import get_or_404
from app.embeddings import repository
from app.embeddings.states import UNFINISHED, EmbeddingSetStatus
from app.embeddings.store import EmbeddingsRoot, EmbeddingStore, MapStore, open_store
from app.health import service as health
from app.jobs import service as jobs
from app.jobs import states as job_states
from app.ml.backbone_choices import BACKBONE_NAMES, DEFAULT_BACKBONE, SCRATCH_BACKBONE, TORCHVISION_PREFIX
from app.ml.images import Rejection, inspect_image
from app.ml.similarity import unit_rows
from app.models import EmbeddingSet, Image, Job, Run, Split

if TYPE_CHECKING:
    from app.ml.backbones import Backbone

EMBEDDINGS_JOB = "embeddings.build"
Row = TypeVar("Row", Run, Split)
# Random weights (simple_cnn) give vectors that say nothing about the pictures.
_WITHOUT_PRETRAINED_WEIGHTS = (SCRATCH_BACKBONE,)


class EmbeddingsMissing(Conflict, code="embeddings_missing"):
    """409 naming the job to start (its URL and backbone are in the answer)."""


@dataclass(frozen=True)
class Neighbour:
    image_id: int
    similarity: float
    label: str
    subsets: list[str]


def torch_home() -> Path | None:
    return Path(os.environ["TORCH_HOME"]) if os.environ.get("TORCH_HOME") else None


def usable_backbones() -> list[str]:
    """Backbones whose embeddings mean something (pretrained weights); check_backbone says if they are here."""
    return [name for name in BACKBONE_NAMES if name not in _WITHOUT_PRETRAINED_WEIGHTS]


def check_backbone(name: str, *, home: Path | None) -> None:
    """422 unless `name` is a known backbone whose pretrained weights are installed here (no network)."""
    usable = usable_backbones()
    if name not in BACKBONE_NAMES:
        raise Invalid(f"unknown backbone {name!r}; backbones with pretrained weights: {', '.join(usable)}")
    if name in _WITHOUT_PRETRAINED_WEIGHTS:
        raise Invalid(f"backbone {name!r} has no pretrained weights, so its embeddings would mean nothing")
    if name.startswith(TORCHVISION_PREFIX):
        from app.ml.backbones import torchvision_weights_file  # torch, only for these names

        weights = torchvision_weights_file(name[len(TORCHVISION_PREFIX) :], home)
        if not weights.exists():
            raise Invalid(f"backbone {name!r} has no offline weights: expected them at {weights}")


def _dataset(session: Session, dataset_id: int) -> None:
    if repository.get_dataset(session, dataset_id) is None:
        raise NotFound(f"dataset {dataset_id} not found")


def start_embeddings(
    session: Session,
    *,
    dataset_id: int,
    backbone: str,
    user_id: int | None,
    home: Path | None,
    max_attempts: int,
) -> tuple[EmbeddingSet, Job]:
    """Queue the job (or return the one already queued or running for this dataset and backbone)."""
    _dataset(session, dataset_id)
    check_backbone(backbone, home=home)
    embedding_set = repository.find_set(session, dataset_id, backbone) or repository.add_set(
        session, dataset_id=dataset_id, backbone=backbone
    )
    job, queued = jobs.active_or_enqueue(
        session,
        job_id=embedding_set.job_id,
        kind=EMBEDDINGS_JOB,
        payload={"set_id": embedding_set.id},
        created_by_id=user_id,
        max_attempts=max_attempts,
    )
    if not queued:
        return embedding_set, job
    embedding_set.job_id = job.id
    embedding_set.status = EmbeddingSetStatus.QUEUED
    session.flush()
    return embedding_set, job


def _status(session: Session, embedding_set: EmbeddingSet) -> str:
    """A set whose job ended without finishing it reads as failed (the job says why)."""
    unfinished = embedding_set.status in UNFINISHED and embedding_set.job_id is not None
    if unfinished and jobs.get_job(session, job_id=embedding_set.job_id or 0).status in job_states.UNSUCCESSFUL:
        return EmbeddingSetStatus.FAILED
    return embedding_set.status


def list_embeddings(session: Session, *, dataset_id: int) -> list[tuple[EmbeddingSet, str]]:
    """The dataset's embedding sets, each with its live status."""
    _dataset(session, dataset_id)
    return [(s, _status(session, s)) for s in repository.sets_of(session, dataset_id)]


def store_of(root: EmbeddingsRoot, embedding_set: EmbeddingSet) -> EmbeddingStore:
    return open_store(root, dataset_id=embedding_set.dataset_id, backbone=embedding_set.backbone)


def _usable_set(session: Session, dataset_id: int, backbone: str | None) -> EmbeddingSet:
    """The set to search: the named backbone's, else the default backbone's, else any with vectors; 409 if none."""
    sets = [s for s in repository.sets_of(session, dataset_id) if s.count > 0]
    wanted = [s for s in sets if s.backbone == (backbone or DEFAULT_BACKBONE)] or ([] if backbone else sets)
    if not wanted:
        name = backbone or DEFAULT_BACKBONE
        raise EmbeddingsMissing(
            f"no embeddings of dataset {dataset_id} with {name} yet: start the job with "
            f'POST /api/datasets/{dataset_id}/embeddings {{"backbone": "{name}"}}',
            extra={"start": f"/api/datasets/{dataset_id}/embeddings", "backbone": name},
        )
    return wanted[0]


def usable_set(session: Session, *, dataset_id: int, backbone: str | None) -> EmbeddingSet:
    return _usable_set(session, dataset_id, backbone)


def _neighbours(session: Session, image_ids: np.ndarray, similarities: np.ndarray) -> list[Neighbour]:
    ids = [int(image_id) for image_id in image_ids.tolist()]
    facts = repository.facts_of(session, ids)
    return [
        Neighbour(image_id, round(float(similarity), 6), *facts[image_id])
        for image_id, similarity in zip(ids, similarities.tolist(), strict=True)
    ]


def similar_to_image(
    session: Session, *, image_id: int, k: int, backbone: str | None, root: EmbeddingsRoot
) -> list[Neighbour]:
    image = repository.get_image(session, image_id)
    if image is None:
        raise NotFound(f"image {image_id} not found")
    embedding_set = _usable_set(session, image.dataset_id, backbone)
    store = store_of(root, embedding_set)
    query = store.vector_of(image_id)
    if query is None:
        raise EmbeddingsMissing(
            f"image {image_id} has no {embedding_set.backbone} embedding yet: run the job again with "
            f'POST /api/datasets/{image.dataset_id}/embeddings {{"backbone": "{embedding_set.backbone}"}}',
            extra={"start": f"/api/datasets/{image.dataset_id}/embeddings", "backbone": embedding_set.backbone},
        )
    found_ids, similarities = store.search(query, k, exclude_id=image_id)
    return _neighbours(session, found_ids, similarities)


def dataset_of_image(session: Session, *, image_id: int) -> int:
    return get_or_404(session, Image, image_id).dataset_id


def neighbourhood(session: Session, *, dataset_id: int, image_id: int, k: int, root: EmbeddingsRoot) -> tuple[int, ...]:
    """An image of this dataset followed by its `k` nearest neighbours, most similar first (the grid's
    "find more like this")."""
    get_or_404(session, Image, image_id, dataset_id=dataset_id)
    found = similar_to_image(session, image_id=image_id, k=k, backbone=None, root=root)
    return (image_id, *(neighbour.image_id for neighbour in found))


@lru_cache(maxsize=2)
def _loaded_backbone(name: str, home: Path | None) -> Backbone:
    """Loaded on the first query by upload (the web process imports torch only then)."""
    from app.ml.backbones import load_backbone

    return load_backbone(name, torch_home=home)


def similar_to_upload(
    session: Session,
    *,
    dataset_id: int,
    data: bytes,
    filename: str,
    k: int,
    backbone: str | None,
    root: EmbeddingsRoot,
    scratch_dir: Path,
    home: Path | None,
) -> list[Neighbour]:
    """Neighbours of an uploaded picture, which is decoded, embedded and forgotten (nothing is stored)."""
    _dataset(session, dataset_id)
    inspected = inspect_image(data, filename=filename)
    if isinstance(inspected, Rejection):
        raise Invalid(f"{filename or 'the file'} is not a usable image: {inspected.reason}")
    embedding_set = _usable_set(session, dataset_id, backbone)
    check_backbone(embedding_set.backbone, home=home)
    scratch_dir.mkdir(parents=True, exist_ok=True)
    from app.ml.features import extract_features

    with tempfile.NamedTemporaryFile(dir=scratch_dir, suffix=".img") as temporary:
        temporary.write(data)
        temporary.flush()
        result = extract_features(
            backbone=_loaded_backbone(embedding_set.backbone, home),
            image_paths=[Path(temporary.name)],
            image_sha256s=["upload"],
            cache_dir=None,
            num_workers=0,
        )
    found_ids, similarities = store_of(root, embedding_set).search(unit_rows(result.features)[0], k)
    return _neighbours(session, found_ids, similarities)


# ---- the map ----------------------------------------------------------------------------------------------

MAP_COLOURS = ("label", "subset", "correct", "issue", "suspicion")
# Images a run trained on are scored in-sample: their suspicion would flatter the labels.
_IN_SAMPLE = "train"


@dataclass(frozen=True)
class MapPoints:
    backbone: str
    count: int
    points_json: bytes  # the JSON array of {"image_id", "x", "y"}
    stale: bool  # the store has rows the map does not show yet (the job lays them out)


def map_points(session: Session, *, dataset_id: int, backbone: str | None, root: EmbeddingsRoot) -> MapPoints:
    """The stored 2-D map; 409 naming the job when there are no embeddings or no map of them yet."""
    _dataset(session, dataset_id)
    embedding_set = _usable_set(session, dataset_id, backbone)
    found = MapStore(store_of(root, embedding_set)).points_json()
    if found is None:
        raise EmbeddingsMissing(
            f"the {embedding_set.backbone} embeddings of dataset {dataset_id} have no map yet: run the job with "
            f'POST /api/datasets/{dataset_id}/embeddings {{"backbone": "{embedding_set.backbone}"}}',
            extra={"start": f"/api/datasets/{dataset_id}/embeddings", "backbone": embedding_set.backbone},
        )
    count, points_json = found
    return MapPoints(embedding_set.backbone, count, points_json, stale=embedding_set.count > count)


@dataclass(frozen=True)
class MapPage:
    dataset_id: int
    dataset_name: str
    backbones: list[str]
    splits: list[Split]
    runs: list[Run]


def map_page(session: Session, *, dataset_id: int) -> MapPage:
    """What the map page offers to choose from: backbones with vectors, ready splits, finished runs."""
    dataset = repository.get_dataset(session, dataset_id)
    if dataset is None:
        raise NotFound(f"dataset {dataset_id} not found")
    return MapPage(
        dataset_id=dataset_id,
        dataset_name=dataset.name,
        backbones=[s.backbone for s in repository.sets_of(session, dataset_id) if s.count > 0],
        splits=repository.ready_splits(session, dataset_id),
        runs=repository.finished_runs(session, dataset_id),
    )


def map_colours(
    session: Session, *, dataset_id: int, by: str, split_id: int | None, run_id: int | None
) -> tuple[str, dict[int, str | float]]:
    """What to colour each image by: its subset in a split, right/wrong in a run, its worst data-health finding,
    or the run's suspicion.

    Returns a description of the source ("split v3", "run 7") and the values by image id (images without one
    are left out: not in the split, not predicted by the run).
    """
    _dataset(session, dataset_id)
    if by not in MAP_COLOURS:
        raise Invalid(f"colour by one of {', '.join(MAP_COLOURS)}; got {by!r}")
    if by == "label":
        return "labels", dict(repository.dataset_labels(session, dataset_id))
    if by == "subset":
        return _subset_colours(session, dataset_id=dataset_id, split_id=split_id)
    if by == "issue":
        issues = health.worst_issues(session, dataset_id=dataset_id)
        return ("the data-health scan", dict(issues)) if issues is not None else ("no data-health scan yet", {})
    run = _asked_or_newest(session, Run, run_id, dataset_id=dataset_id, newest=repository.newest_finished_run)
    if run is None:
        return "no finished run", {}
    rows = repository.run_predictions(session, run.id)
    if by == "correct":
        return f"run {run.id}", {image_id: "wrong" if error else "right" for image_id, _, error, _, _ in rows}
    return f"run {run.id} (dev and test)", _self_doubt(run, rows)


def _subset_colours(session: Session, *, dataset_id: int, split_id: int | None) -> tuple[str, dict[int, str | float]]:
    split = _asked_or_newest(session, Split, split_id, dataset_id=dataset_id, newest=repository.newest_ready_split)
    if split is None:
        return "no ready split", {}
    return f"split v{split.version}", dict(repository.split_subsets(session, split.id))


def _asked_or_newest(
    session: Session,
    model: type[Row],
    row_id: int | None,
    *,
    dataset_id: int,
    newest: Callable[[Session, int], Row | None],
) -> Row | None:
    """The dataset's row the caller named (404 if it is not the dataset's), else the dataset's newest one."""
    if row_id is not None:
        return get_or_404(session, model, row_id, dataset_id=dataset_id)
    return newest(session, dataset_id)


def _self_doubt(run: Run, rows: list[tuple[int, str, bool, bytes, str]]) -> dict[int, str | float]:
    """1 - the run's probability of each held-out image's current label (self-confidence, app.ml.suspicion)."""
    columns = {str(name): index for index, name in enumerate(run.label_names)}
    values: dict[int, str | float] = {}
    for image_id, subset, _, probs, label in rows:
        if subset == _IN_SAMPLE:
            continue
        vector = np.frombuffer(probs, dtype=np.float32)
        column = columns.get(label)
        # A label the run never saw is as doubtful as can be.
        own = float(vector[column]) if column is not None and column < vector.size else 0.0
        values[image_id] = round(1.0 - own, 4)
    return values


# ---- the job's steps --------------------------------------------------------------------------------------


def begin_build(session: Session, *, set_id: int) -> EmbeddingSet:
    embedding_set = repository.get_set(session, set_id)
    if embedding_set is None:
        raise NotFound(f"embedding set {set_id} not found")
    embedding_set.status = EmbeddingSetStatus.RUNNING
    session.flush()
    return embedding_set


def images_to_embed(session: Session, *, dataset_id: int, stored_ids: np.ndarray) -> list[tuple[int, str]]:
    """(image id, blob sha256) of the dataset's images the store lacks: a resumed or later run does only these."""
    stored = set(stored_ids.tolist())
    return [(image_id, sha) for image_id, sha in repository.image_blobs(session, dataset_id) if image_id not in stored]


def finish_build(session: Session, *, set_id: int, count: int, dims: int, index_kind: str) -> None:
    embedding_set = repository.get_set(session, set_id)
    if embedding_set is None:
        raise NotFound(f"embedding set {set_id} not found")
    embedding_set.status, embedding_set.count, embedding_set.dims = EmbeddingSetStatus.READY, count, dims
    embedding_set.index_kind = index_kind
    session.flush()


def fail_build(session: Session, *, set_id: int) -> None:
    embedding_set = repository.get_set(session, set_id)
    if embedding_set is not None:
        embedding_set.status = EmbeddingSetStatus.FAILED
        session.flush()
