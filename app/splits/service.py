"""Splits: preview, create (as a job), extend, read, manifest and export."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
from sqlalchemy.orm import Session

from app.core.errors import Conflict, Invalid, NotFound
from app.core.storage import BlobStore
from app.jobs import service as jobs
from app.ml.images import SIGNATURE_LENGTH, thumbnail_signature
from app.ml.near_duplicates import SignatureLoader, group_near_duplicates
from app.ml.splitting import (
    SUBSETS,
    PreviousAssignment,
    SplitInput,
    SplitParams,
    SplitSummary,
    imported_subset_codes,
    preview_split,
    validate_params,
)
from app.models import Job, Split
from app.splits import repository
from app.splits.input_store import ImagesKey, SplitInputStore, StableColumns
from app.splits.logic import params_from_dict, params_to_dict
from app.splits.states import SplitStatus

SPLIT_JOB = "split.build"


@dataclass(frozen=True)
class Preview:
    counts: dict[str, Any]
    warnings: list[dict[str, str]]
    groups: dict[str, Any]
    rows: list[Any]
    sources: tuple[str, ...]
    labels: tuple[str, ...]


def check_params(params: SplitParams) -> SplitParams:
    problems = validate_params(params)
    if problems:
        raise Invalid("; ".join(problems))
    return params


def _check_target_source(session: Session, dataset_id: int, params: SplitParams) -> None:
    """A target source that no image has would leave dev and test empty: a typo, refused rather than run."""
    if params.target_source is None:
        return
    sources = repository.sources_of(session, dataset_id)
    if params.target_source not in sources:
        known = ", ".join(repr(source) for source in sources) or "none yet"
        raise Invalid(f"target source {params.target_source!r} is not a source of this dataset (its sources: {known})")


def _codes(values: np.ndarray, names_of: dict[int, str]) -> tuple[np.ndarray, tuple[str, ...]]:
    """Integer ids to dense codes, with names sorted the way encode_categories sorts them."""
    unique_ids, inverse = np.unique(values, return_inverse=True)
    names = [names_of[int(i)] for i in unique_ids]
    order = np.argsort(np.array(names, dtype=object), kind="stable")
    rank = np.empty_like(order)
    rank[order] = np.arange(order.size)
    return rank[inverse].astype(np.int64), tuple(names[i] for i in order)


def _source_codes(sources: list[str]) -> tuple[np.ndarray, tuple[str, ...]]:
    names = tuple(sorted(set(sources)))
    code = {name: i for i, name in enumerate(names)}
    return np.fromiter((code[s] for s in sources), dtype=np.int64, count=len(sources)), names


# A preview also reads every label and codes it; keep the last few inputs per process, keyed by a fingerprint
# of images and labels, so tweaking the split form stays instant.
_INPUT_CACHE: dict[tuple[int | str | None, ...], SplitInput] = {}
_INPUT_CACHE_SIZE = 2


def split_input(
    session: Session,
    *,
    dataset_id: int,
    params: SplitParams,
    blobs: BlobStore,
    store: SplitInputStore | None = None,
) -> SplitInput:
    """The dataset as columns, with duplicate groups (sha256 is unique per dataset; near duplicates by dHash,
    verified on pixel signatures of the thumbnails in `blobs`).

    The columns that only new images change come from `store` when it holds them for this dataset's images
    (the ingest job fills it), and go into it when it does not; labels are always read fresh."""
    threshold = params.near_duplicate_threshold
    count, last_id, last_change, last_label = repository.images_fingerprint(session, dataset_id)
    # The target source decides which pool-labelled images are train-only (see _train_only).
    memory_key = (dataset_id, threshold, count, last_id, last_change, last_label, params.target_source)
    cached = _INPUT_CACHE.get(memory_key)
    if cached is not None:
        return cached
    stable = store.load(ImagesKey(dataset_id, threshold, count, last_id)) if store is not None else None
    label_ids = repository.label_ids_up_to(session, dataset_id, last_id) if stable is not None else None
    if stable is None or label_ids is None or label_ids.size != stable.image_ids.size:
        # No stored columns, or images committed out of id order since the fingerprint: read everything.
        stable, label_ids = _read_stable_columns(
            session, dataset_id=dataset_id, threshold=threshold, blobs=blobs, store=store
        )
    label_codes, label_names = _codes(label_ids, repository.label_names(session, dataset_id))
    data = SplitInput(
        image_ids=stable.image_ids,
        source_codes=stable.source_codes,
        source_names=stable.source_names,
        label_codes=label_codes,
        label_names=label_names,
        group_ids=stable.group_ids,
        imported_subsets=stable.imported_subsets,
        train_only=_train_only(session, dataset_id=dataset_id, stable=stable, target_source=params.target_source),
    )
    if len(_INPUT_CACHE) >= _INPUT_CACHE_SIZE:
        _INPUT_CACHE.pop(next(iter(_INPUT_CACHE)))
    _INPUT_CACHE[memory_key] = data
    return data


def _train_only(
    session: Session, *, dataset_id: int, stable: StableColumns, target_source: str | None
) -> np.ndarray | None:
    """Images labelled from the pool go to train, unless they are from the target source (then the split's rule
    places them, possibly in dev/test; app/pool/logic.py words this for the labelling page)."""
    pooled = repository.pool_labelled_ids(session, dataset_id)
    if not pooled.size:
        return None
    mask = np.isin(stable.image_ids, pooled)
    if target_source is not None and target_source in stable.source_names:
        mask &= stable.source_codes != stable.source_names.index(target_source)
    return mask


def _signature_loader(session: Session, image_ids: np.ndarray, blobs: BlobStore) -> SignatureLoader:
    """Pixel signatures of the thumbnails of the images at the positions asked for (only images whose hash has
    a close partner are asked for, so a million unrelated images read no thumbnail)."""

    def load(positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        rows = np.zeros((positions.size, SIGNATURE_LENGTH), dtype=np.uint8)
        found = np.zeros(positions.size, dtype=bool)
        for row, digest in enumerate(repository.thumbnails_of(session, image_ids[positions])):
            signature = _thumbnail_signature(blobs, digest)
            if signature is not None:
                rows[row], found[row] = signature, True
        return rows, found

    return load


def _thumbnail_signature(blobs: BlobStore, digest: str | None) -> np.ndarray | None:
    """None for a missing or unreadable thumbnail: that image then joins no near-duplicate group."""
    if digest is None:
        return None
    try:
        with blobs.open(digest) as file:
            return thumbnail_signature(file.read())
    except OSError:
        return None


def _stable_columns(
    session: Session, columns: repository.ImageColumns, threshold: int, blobs: BlobStore
) -> StableColumns:
    source_codes, source_names = _source_codes(columns.sources)
    groups = group_near_duplicates(
        columns.phashes,
        threshold=threshold,
        missing=columns.phash_missing,
        inner_hashes=columns.inner_phashes,
        inner_missing=columns.inner_phash_missing,
        signatures=_signature_loader(session, columns.image_ids, blobs),
    )
    return StableColumns(
        image_ids=columns.image_ids,
        source_codes=source_codes,
        source_names=source_names,
        group_ids=groups.group_ids,
        imported_subsets=imported_subset_codes(columns.imported_subsets) if any(columns.imported_subsets) else None,
    )


def _key_of_read(dataset_id: int, threshold: int, columns: repository.ImageColumns) -> ImagesKey:
    """Keyed by what was actually read (not by an earlier fingerprint, which concurrent ingests may outdate)."""
    return ImagesKey(dataset_id, threshold, int(columns.image_ids.size), int(columns.image_ids[-1]))


def _read_stable_columns(
    session: Session, *, dataset_id: int, threshold: int, blobs: BlobStore, store: SplitInputStore | None
) -> tuple[StableColumns, np.ndarray]:
    """Every image's columns from the database, near-duplicates grouped, and stored."""
    columns = repository.image_columns(session, dataset_id)
    stable = _stable_columns(session, columns, threshold, blobs)
    if store is not None and columns.image_ids.size:
        store.save(_key_of_read(dataset_id, threshold, columns), stable)
    return stable, columns.label_ids


def warm_split_input(session: Session, *, dataset_id: int, blobs: BlobStore, store: SplitInputStore) -> None:
    """Fill the store for the default threshold and each threshold this dataset's splits used, so the first
    preview after an upload reads a file instead of grouping a million hashes. The rows are read once."""
    thresholds = {SplitParams().near_duplicate_threshold}
    thresholds.update(
        params_from_dict(split.params).near_duplicate_threshold for split in repository.splits_of(session, dataset_id)
    )
    count, last_id, _change, _label = repository.images_fingerprint(session, dataset_id)
    missing = [t for t in sorted(thresholds) if store.load(ImagesKey(dataset_id, t, count, last_id)) is None]
    if not count or not missing:
        return
    columns = repository.image_columns(session, dataset_id)
    for threshold in missing:
        store.save(_key_of_read(dataset_id, threshold, columns), _stable_columns(session, columns, threshold, blobs))


def _previous(session: Session, split_id: int) -> PreviousAssignment:
    image_ids, subsets, _positions = repository.assignments(session, split_id)
    return PreviousAssignment(image_ids=image_ids, subsets=subsets)


def summary_to_preview(summary: SplitSummary) -> Preview:
    return Preview(
        counts=dict(summary.counts),
        warnings=[{"code": w["code"], "message": w["message"]} for w in summary.warnings],
        groups=dict(summary.groups),
        rows=summary.table_rows(),
        sources=summary.source_names,
        labels=summary.label_names,
    )


def preview(
    session: Session,
    *,
    dataset_id: int,
    params: SplitParams,
    blobs: BlobStore,
    store: SplitInputStore | None = None,
) -> Preview:
    """What a split with these parameters would contain; writes nothing to the database."""
    _dataset(session, dataset_id)
    check_params(params)
    _check_target_source(session, dataset_id, params)
    data = split_input(session, dataset_id=dataset_id, params=params, blobs=blobs, store=store)
    if data.image_ids.size == 0:
        raise Invalid("the dataset has no images yet; upload some first")
    return summary_to_preview(preview_split(data, params))


def create_split(
    session: Session,
    *,
    dataset_id: int,
    params: SplitParams,
    user_id: int | None,
    parent: Split | None = None,
    max_attempts: int,
) -> tuple[Split, Job]:
    dataset = _dataset(session, dataset_id)
    check_params(params)
    _check_target_source(session, dataset_id, params)
    if params.target_source is not None and params.target_source != dataset.target_source:
        dataset.target_source = params.target_source
    split = Split(
        dataset_id=dataset_id,
        version=repository.next_version(session, dataset_id),
        parent_id=parent.id if parent else None,
        status=SplitStatus.QUEUED,
        params=params_to_dict(params),
        created_by_id=user_id,
    )
    session.add(split)
    session.flush()
    job = jobs.enqueue(
        session, kind=SPLIT_JOB, payload={"split_id": split.id}, created_by_id=user_id, max_attempts=max_attempts
    )
    split.job_id = job.id
    session.flush()
    return split, job


def extend_split(session: Session, *, split_id: int, user_id: int | None, max_attempts: int) -> tuple[Split, Job]:
    """A new version that keeps every assignment of ``split_id`` and places only the images added since."""
    parent = get_split(session, split_id=split_id)
    if parent.status != SplitStatus.READY:
        raise Conflict(f"split v{parent.version} is {parent.status}; only a ready split can be extended")
    return create_split(
        session,
        dataset_id=parent.dataset_id,
        params=params_from_dict(parent.params),
        user_id=user_id,
        parent=parent,
        max_attempts=max_attempts,
    )


def get_split(session: Session, *, split_id: int) -> Split:
    split = repository.get_split(session, split_id)
    if split is None:
        raise NotFound(f"split {split_id} does not exist")
    return split


def splits_of(session: Session, *, dataset_id: int) -> list[Split]:
    _dataset(session, dataset_id)
    return repository.splits_of(session, dataset_id)


def newest_ready_split(session: Session, *, dataset_id: int) -> Split | None:
    return repository.newest_ready_split(session, dataset_id)


def ready_split(session: Session, *, split_id: int) -> Split:
    split = get_split(session, split_id=split_id)
    if split.status != SplitStatus.READY:
        raise Conflict(f"split v{split.version} is {split.status}, not ready yet")
    return split


def manifest_lines(session: Session, *, split_id: int) -> Iterator[tuple[str, str, str, str, str]]:
    ready_split(session, split_id=split_id)
    return repository.manifest_rows(session, split_id)


def export_rows(session: Session, *, split_id: int) -> Iterator[tuple[str, str, str, str]]:
    ready_split(session, split_id=split_id)
    return repository.export_rows(session, split_id)


def check_export_files(session: Session, *, split_id: int, blobs: BlobStore) -> None:
    """Refuse an export before its first byte when a file is missing: once streaming, the only way to fail is a
    cut-off zip that looks like a finished download. (A stat per file is small next to reading each one.)"""
    missing, first = 0, ""
    for _subset, _label, filename, sha256 in repository.export_rows(session, split_id):
        if not blobs.exists(sha256):
            missing, first = missing + 1, first or filename
    if missing:
        raise NotFound(
            f"{missing:,} file(s) of this split are missing from the blob store (first: {first}); "
            "restore the data directory or upload them again"
        )


def previous_assignment(session: Session, *, split_id: int) -> PreviousAssignment:
    return _previous(session, split_id)


def begin_build(session: Session, *, split_id: int) -> Split:
    split = get_split(session, split_id=split_id)
    if split.status != SplitStatus.READY:
        split.status = SplitStatus.BUILDING
        repository.clear_assignments(session, split.id)  # a retried job starts its writes afresh
        session.flush()
    return split


def write_assignments(
    session: Session, *, split_id: int, image_ids: np.ndarray, subsets: np.ndarray, positions: np.ndarray
) -> None:
    repository.insert_assignments(session, split_id=split_id, image_ids=image_ids, subsets=subsets, positions=positions)


def finish_build(session: Session, *, split_id: int, summary: SplitSummary) -> Split:
    """Only now does the split become visible as ready: readers never see a half-written one."""
    split = get_split(session, split_id=split_id)
    split.counts = dict(summary.counts)
    split.warnings = [{"code": w["code"], "message": w["message"]} for w in summary.warnings]
    split.groups = dict(summary.groups)
    split.status = SplitStatus.READY
    session.flush()
    return split


def fail_build(session: Session, *, split_id: int) -> None:
    split = get_split(session, split_id=split_id)
    split.status = SplitStatus.FAILED
    repository.clear_assignments(session, split.id)
    session.flush()


def subset_names() -> tuple[str, ...]:
    return SUBSETS


def dataset_sources(session: Session, *, dataset_id: int) -> list[str]:
    return repository.sources_of(session, dataset_id)


def get_dataset(session: Session, *, dataset_id: int) -> Any:
    return _dataset(session, dataset_id)


def _dataset(session: Session, dataset_id: int) -> Any:
    dataset = repository.get_dataset(session, dataset_id)
    if dataset is None:
        raise NotFound(f"dataset {dataset_id} does not exist")
    return dataset
