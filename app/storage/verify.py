"""`errorbook storage verify`: every image row whose blob (or thumbnail) is missing or holds other bytes, and every
finished run or embedding set whose stored files are missing.

Read-only and batched by image id, so it runs beside a live install; on an object store the existence check is
one HEAD request per object and the digest check (opt-in) one download.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from sqlalchemy.orm import Session

from app.core.artefacts import ArtefactStore
from app.core.storage import CHUNK, BlobStore
from app.storage import repository

# The files a finished run always has (model.onnx too when its export was written); an embedding set's rows.
RUN_FILES = ("model.pt", "labels.json", "model.torchscript.pt")
SET_FILES = ("meta.json", "ids.i64", "vectors.f16")

BATCH = 1_000


@dataclass(frozen=True)
class BlobProblem:
    image_id: int
    dataset_id: int
    filename: str
    kind: Literal["image", "thumbnail"]
    sha256: str
    problem: Literal["missing", "digest mismatch"]

    def describe(self) -> str:
        return (
            f"image {self.image_id} ({self.filename!r}, dataset {self.dataset_id}): {self.kind} "
            f"{self.sha256[:12]}… {self.problem}"
        )


@dataclass(frozen=True)
class ArtefactProblem:
    owner: str  # "run 7", "embedding set 3 (dataset 2, efficientnet_lite0)"
    key: str
    problem: Literal["missing"] = "missing"

    def describe(self) -> str:
        return f"{self.owner}: {self.key} {self.problem}"


@dataclass
class VerifyResult:
    images: int = 0
    objects: int = 0
    artefacts: int = 0
    problems: list[BlobProblem | ArtefactProblem] = field(default_factory=list)


def verify_blobs(
    *, sessions: Callable[[], Session], blobs: BlobStore, check_digests: bool = False
) -> Iterator[BlobProblem | ArtefactProblem | VerifyResult]:
    """Yields each problem as found, then the totals (so a long check reports as it goes)."""
    result = VerifyResult()
    after = 0
    while True:
        with sessions() as session:
            rows = repository.image_blobs_after(session, after_id=after, limit=BATCH)
        if not rows:
            break
        for image_id, dataset_id, filename, sha256, thumb in rows:
            result.images += 1
            for kind, digest in (("image", sha256), ("thumbnail", thumb)):
                if digest is None:
                    continue
                result.objects += 1
                problem = _problem(blobs, digest, check_digests)
                if problem is not None:
                    found = BlobProblem(image_id, dataset_id, filename, kind, digest, problem)  # type: ignore[arg-type]
                    result.problems.append(found)
                    yield found
        after = rows[-1][0]
    for missing in _artefact_problems(sessions, blobs.artefacts, result):
        result.problems.append(missing)
        yield missing
    yield result


def _artefact_problems(
    sessions: Callable[[], Session], artefacts: ArtefactStore, result: VerifyResult
) -> Iterator[ArtefactProblem]:
    from app.embeddings.store import set_prefix

    with sessions() as session:
        runs = repository.runs_with_models(session)
        sets = repository.embedding_sets_with_rows(session)
    for run_id, model_path, timings in runs:
        written = (timings.get("model_onnx") or {}).get("written")
        for name in (*RUN_FILES, *(("model.onnx",) if written else ())):
            result.artefacts += 1
            if not _run_file_exists(artefacts, run_id, model_path, name):
                yield ArtefactProblem(f"run {run_id}", f"runs/{run_id}/{name}")
    for set_id, dataset_id, backbone in sets:
        prefix = set_prefix(dataset_id, backbone)
        for name in SET_FILES:
            result.artefacts += 1
            if not artefacts.exists(f"{prefix}/{name}"):
                yield ArtefactProblem(f"embedding set {set_id} (dataset {dataset_id}, {backbone})", f"{prefix}/{name}")


def _run_file_exists(artefacts: ArtefactStore, run_id: int, model_path: str, name: str) -> bool:
    """In the store under runs/<id>/, or (a run recorded before that) in the folder it names on this host."""
    legacy = Path(model_path)
    return (legacy.is_absolute() and (legacy / name).is_file()) or artefacts.exists(f"runs/{run_id}/{name}")


def _problem(blobs: BlobStore, sha256: str, check_digest: bool) -> Literal["missing", "digest mismatch"] | None:
    if not blobs.exists(sha256):
        return "missing"
    if check_digest:
        hasher = hashlib.sha256()
        with blobs.open(sha256) as fh:
            while chunk := fh.read(CHUNK):
                hasher.update(chunk)
        if hasher.hexdigest() != sha256:
            return "digest mismatch"
    return None
