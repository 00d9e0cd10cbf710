"""Data health: scan a dataset (as a job) for the issue types of `logic.ISSUE_TYPES`, and read the result.

A scan reads every image's columns once, finds each issue with the pure rules of `app.health.logic`, and stores
the findings (`image_issues`) and a summary row (`health_scans`). The health page then reads one row, whatever
the dataset's size, and the grid's issue filter reads an index (dataset, type, score).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from sqlalchemy.orm import Session

from app.core.errors import Conflict, Invalid
from app.core.lookup import get_or_404
from app.core.storage import BlobStore
from app.embeddings.store import EmbeddingsRoot, open_store
from app.health import logic, repository
from app.jobs import service as jobs
from app.jobs import states as job_states
from app.ml.images import SIGNATURE_LENGTH, thumbnail_signature
from app.ml.near_duplicates import group_near_duplicates, merge_groupings
from app.ml.similarity import fit_projection
from app.models import Dataset, HealthScan, Job, utcnow

HEALTH_JOB = "health.scan"
EXAMPLES = 8
DEFAULT_BACKBONE = "efficientnet_lite0"
# Above this many vectors the kNN distances of the outlier check are searched on a PCA projection of this size.
_EXACT_OUTLIER_LIMIT = 5_000
_OUTLIER_DIMS = 64
_APPROXIMATE_OUTLIER_LIMIT = 50_000
_CHUNK = 65_536


class HealthMissing(Conflict, code="health_missing"):
    """409 naming the scan to start."""


@dataclass(frozen=True)
class IssueSummary:
    type: str
    count: int
    examples: list[int]
    checked: int  # images the check could judge (measured, hashed, embedded, ...)


@dataclass(frozen=True)
class HealthReport:
    status: str  # queued, running, ready, failed
    job_id: int | None
    image_count: int  # images the scan covered
    new_images: bool  # images arrived since the scan
    backbone: str | None
    scanned_at: str | None
    issues: list[IssueSummary]


def check_issue_type(issue: str) -> str:
    if issue not in logic.ISSUE_TYPES:
        raise Invalid(f"unknown issue type {issue!r}; known types: {', '.join(logic.ISSUE_TYPES)}")
    return issue


SORTS = ("score", "-score")


def issue_filter(session: Session, *, dataset_id: int, issue: str | None, sort: str | None) -> str | None:
    """The image grid's issue filter, checked: a known type on a scanned dataset (409 naming the scan if not)."""
    if sort is not None and sort not in SORTS:
        raise Invalid(f"sort must be one of {', '.join(SORTS)} (the issue's score), got {sort!r}")
    if sort is not None and not issue:
        raise Invalid("sorting by score needs an issue filter (issue=TYPE)")
    if not issue:
        return None
    check_issue_type(issue)
    require_scan(session, dataset_id=dataset_id)
    return issue


def worst_issues(session: Session, *, dataset_id: int) -> dict[int, str] | None:
    """Each image with findings in the latest scan and the worst of them (``logic.worst_issue``); None when the
    dataset was never scanned (no findings would read as "all healthy")."""
    if repository.scan_of(session, dataset_id) is None:
        return None
    found: dict[int, list[str]] = {}
    for image_id, kind in repository.issue_types_of_images(session, dataset_id):
        found.setdefault(image_id, []).append(kind)
    return {image_id: logic.worst_issue(types) for image_id, types in found.items()}


def require_scan(session: Session, *, dataset_id: int) -> HealthScan:
    scan = repository.scan_of(session, dataset_id)
    if scan is None:
        raise HealthMissing(
            f"dataset {dataset_id} has not been scanned for data health yet: start the scan with "
            f"POST /api/datasets/{dataset_id}/health",
            extra={"start": f"/api/datasets/{dataset_id}/health"},
        )
    return scan


def start_scan(session: Session, *, dataset_id: int, user_id: int | None, max_attempts: int) -> tuple[HealthScan, Job]:
    """Queue a scan (or return the one already queued or running for this dataset)."""
    get_or_404(session, Dataset, dataset_id)
    scan = repository.scan_of(session, dataset_id) or repository.add_scan(session, dataset_id)
    job, queued = jobs.active_or_enqueue(
        session,
        job_id=scan.job_id,
        kind=HEALTH_JOB,
        payload={"dataset_id": dataset_id},
        created_by_id=user_id,
        max_attempts=max_attempts,
    )
    if not queued:
        return scan, job
    scan.job_id = job.id
    if scan.scanned_at is None:
        scan.status = "queued"
    session.flush()
    return scan, job


def report(session: Session, *, dataset_id: int) -> HealthReport:
    """The latest scan's summary; 409 with the scan to start when the dataset was never scanned."""
    get_or_404(session, Dataset, dataset_id)
    scan = require_scan(session, dataset_id=dataset_id)
    status = scan.status
    if scan.job_id is not None:
        job_status = jobs.get_job(session, job_id=scan.job_id).status
        if job_status in job_states.ACTIVE:
            status = job_status
        elif job_status in job_states.UNSUCCESSFUL and scan.scanned_at is None:
            status = "failed"
    return HealthReport(
        status=status,
        job_id=scan.job_id,
        image_count=scan.image_count,
        new_images=repository.last_image_id(session, dataset_id) > scan.last_image_id,
        backbone=scan.backbone,
        scanned_at=scan.scanned_at.isoformat(timespec="seconds") if scan.scanned_at else None,
        issues=[IssueSummary(**entry) for entry in scan.summary],
    )


# ---- the scan -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Findings:
    """What a scan found, before it is stored: per issue type, positions into `image_ids` and their scores."""

    dataset_id: int
    image_ids: np.ndarray
    found: dict[str, logic.Flagged]
    checked: dict[str, int]
    backbone: str | None


def scan_dataset(session: Session, *, dataset_id: int, blobs: BlobStore, embeddings_root: EmbeddingsRoot) -> HealthScan:
    """Find every issue of the dataset's images and store the findings and the summary (flushes only)."""
    findings = find_issues(session, dataset_id=dataset_id, blobs=blobs, embeddings_root=embeddings_root)
    return store_findings(session, findings=findings)


def find_issues(session: Session, *, dataset_id: int, blobs: BlobStore, embeddings_root: EmbeddingsRoot) -> Findings:
    """Every issue of the dataset's images (reads only, so a job can run it outside its write transaction)."""
    get_or_404(session, Dataset, dataset_id)
    columns = repository.scan_columns(session, dataset_id)
    count = int(columns.image_ids.size)
    found: dict[str, logic.Flagged] = {}
    checked: dict[str, int] = {}
    stats = _stats(columns)
    measured = int(stats.measured.sum())
    sized = int(((stats.width > 0) & (stats.height > 0)).sum())
    found["unmeasured"] = logic.Flagged(np.flatnonzero(~stats.measured).astype(np.int64), np.zeros(count - measured))
    checked["unmeasured"] = count
    for issue, flagged in logic.stat_issues(stats).items():
        found[issue] = flagged
        checked[issue] = measured if issue in logic.STAT_ISSUES else sized
    exact = _copy_groups(session, dataset_id, columns.image_ids)
    near = group_near_duplicates(
        columns.phashes,
        missing=columns.phash_missing,
        inner_hashes=columns.inner_phashes,
        inner_missing=columns.inner_phash_missing,
        signatures=_signature_loader(session, columns.image_ids, blobs),
    ).group_ids
    found["exact_duplicate"] = logic.duplicate_groups(exact)
    found["near_duplicate"] = logic.near_only(near, exact)
    checked["exact_duplicate"] = count
    checked["near_duplicate"] = count - int(columns.phash_missing.sum())
    # Exact copies are near-identical too: a conflict group is the union of both groupings' groups.
    found["label_conflict"] = logic.label_conflicts(merge_groupings(exact, near), columns.label_ids)
    checked["label_conflict"] = count
    backbone, found["outlier"], checked["outlier"] = _outliers(session, dataset_id, columns.image_ids, embeddings_root)
    return Findings(dataset_id, columns.image_ids, found, checked, backbone)


def _stats(columns: repository.ScanColumns) -> logic.Stats:
    table = columns.stats
    return logic.Stats(
        brightness=table[:, 0],
        contrast=table[:, 1],
        sharpness=table[:, 2],
        entropy=table[:, 3],
        colourfulness=table[:, 4],
        width=columns.width,
        height=columns.height,
    )


def _copy_groups(session: Session, dataset_id: int, image_ids: np.ndarray) -> np.ndarray:
    """Group ids per image where images sharing a thumbnail (the same decoded picture: same pixels, whatever the
    file's bytes) share a group; every other image is alone. Identical files never get this far: ingest refuses
    a second copy of the same bytes."""
    groups = np.arange(image_ids.size, dtype=np.int64)
    shared = repository.copies(session, dataset_id)
    if not shared:
        return groups
    ids = np.array([image_id for image_id, _ in shared], dtype=np.int64)
    positions = np.searchsorted(image_ids, ids)
    first_of: dict[str, int] = {}
    for position, (_, digest) in zip(positions.tolist(), shared, strict=True):
        groups[position] = first_of.setdefault(digest, position)
    return groups


def _signature_loader(
    session: Session, image_ids: np.ndarray, blobs: BlobStore
) -> Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """Pixel signatures of thumbnails, read only for images whose hash has a close partner (as splits do)."""

    def load(positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        rows = np.zeros((positions.size, SIGNATURE_LENGTH), dtype=np.uint8)
        found = np.zeros(positions.size, dtype=bool)
        for row, digest in enumerate(repository.thumbnails_of(session, image_ids[positions].tolist())):
            if digest is None:
                continue
            try:
                with blobs.open(digest) as file:
                    signature = thumbnail_signature(file.read())
            except OSError:
                signature = None
            if signature is not None:
                rows[row], found[row] = signature, True
        return rows, found

    return load


def _outliers(
    session: Session, dataset_id: int, image_ids: np.ndarray, root: EmbeddingsRoot
) -> tuple[str | None, logic.Flagged, int]:
    """(backbone read, outliers as positions into `image_ids`, images judged); nothing judged without embeddings."""
    sets = repository.embedding_sets(session, dataset_id)
    chosen = next((s for s in sets if s.backbone == DEFAULT_BACKBONE), sets[0] if sets else None)
    if chosen is None:
        return None, logic.Flagged.none(), 0
    store = open_store(root, dataset_id=dataset_id, backbone=chosen.backbone)
    stored_ids = store.ids()
    rows = np.flatnonzero(np.isin(stored_ids, image_ids))  # vectors of deleted images are skipped
    positions = np.searchsorted(image_ids, stored_ids[rows])
    flagged = logic.outliers(_knn_distances(store.vectors(), rows))
    return chosen.backbone, logic.Flagged(positions[flagged.positions], flagged.scores), int(positions.size)


def _knn_distances(vectors: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Mean kNN distance of each of `rows` (of the float16 memmap `vectors`), read in chunks: a million vectors
    of 1,280 dims are 5 GB as float32, their 64-dim projection 256 MB."""
    count = rows.size
    if count <= _EXACT_OUTLIER_LIMIT:
        return logic.knn_mean_distance(np.asarray(vectors[rows], dtype=np.float32))
    sample = np.sort(np.random.default_rng(0).choice(rows, size=min(count, 10_000), replace=False))
    projection = fit_projection(np.asarray(vectors[sample], dtype=np.float32), _OUTLIER_DIMS)
    projected = np.concatenate(
        [
            projection.project(np.asarray(vectors[rows[start : start + _CHUNK]], dtype=np.float32))
            for start in range(0, count, _CHUNK)
        ]
    )
    if count <= _APPROXIMATE_OUTLIER_LIMIT:
        return logic.knn_mean_distance(projected)
    from app.ml.ann import usearch_index

    Index = usearch_index().Index  # an ANN index for a million images' kNN, as the similar-images search uses

    index = Index(ndim=projected.shape[1], metric="cos", dtype="f16")
    index.add(np.arange(count, dtype=np.uint64), projected)
    found = index.search(projected, logic.OUTLIER_NEIGHBOURS + 1)
    distances = np.asarray(found.distances, dtype=np.float64)[:, 1:]  # the first hit is the image itself
    return np.asarray(distances.mean(axis=1), dtype=np.float64)


def store_findings(session: Session, *, findings: Findings) -> HealthScan:
    """Replace the dataset's findings and summary with these (flushes only)."""
    scan = repository.scan_of(session, findings.dataset_id) or repository.add_scan(session, findings.dataset_id)
    image_ids = findings.image_ids
    rows: list[dict[str, Any]] = []
    summary: list[dict[str, Any]] = []
    for issue in logic.ISSUE_TYPES:
        flagged = findings.found[issue]
        ids = image_ids[flagged.positions].tolist()
        groups = None if flagged.groups is None else image_ids[flagged.groups].tolist()
        for place, (image_id, score) in enumerate(zip(ids, flagged.scores.tolist(), strict=True)):
            rows.append(
                {"image_id": image_id, "type": issue, "score": float(score), "group_key": groups and groups[place]}
            )
        examples = image_ids[logic.examples(flagged, EXAMPLES)].tolist()
        summary.append({"type": issue, "count": len(ids), "examples": examples, "checked": findings.checked[issue]})
    repository.replace_issues(session, findings.dataset_id, rows)
    scan.summary = summary
    scan.status = "ready"
    scan.backbone = findings.backbone
    scan.image_count = int(image_ids.size)
    scan.last_image_id = int(image_ids[-1]) if image_ids.size else 0
    scan.scanned_at = utcnow()
    session.flush()
    return scan


def fail_scan(session: Session, *, dataset_id: int) -> None:
    scan = repository.scan_of(session, dataset_id)
    if scan is not None and scan.scanned_at is None:
        scan.status = "failed"
        session.flush()
