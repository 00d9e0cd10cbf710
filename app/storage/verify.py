"""`errorbook storage verify`: every image row whose blob (or thumbnail) is missing or holds other bytes.

Read-only and batched by image id, so it runs beside a live install; on an object store the existence check is
one HEAD request per object and the digest check (opt-in) one download.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Literal

from sqlalchemy.orm import Session

from app.core.storage import CHUNK, BlobStore
from app.storage import repository

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


@dataclass
class VerifyResult:
    images: int = 0
    objects: int = 0
    problems: list[BlobProblem] = field(default_factory=list)


def verify_blobs(
    *, sessions: Callable[[], Session], blobs: BlobStore, check_digests: bool = False
) -> Iterator[BlobProblem | VerifyResult]:
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
    yield result


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
