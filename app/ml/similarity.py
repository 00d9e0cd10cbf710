"""Nearest neighbours in embedding space: unit vectors, exact top-k, PCA for the index and recall of an index.

Vectors are compared by cosine similarity: every stored vector is scaled to unit length once, so a dot product is
the similarity. Exact search is a brute-force pass over the float16 rows (usearch), fast enough for tens of
thousands of images; larger sets use an approximate index (app/embeddings/store.py), measured
against this exact search by `recall_at_k`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from app.ml.ann import usearch_index

FloatArray = npt.NDArray[np.floating]
# Two images whose vectors agree this closely are exact copies as far as the backbone can tell.
COPY_SIMILARITY = 0.9995


def unit_rows(vectors: npt.ArrayLike) -> npt.NDArray[np.float32]:
    """Rows scaled to unit length (zero rows stay zero)."""
    rows = np.atleast_2d(np.asarray(vectors, dtype=np.float32))
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    return (rows / np.where(norms > 0, norms, np.float32(1.0))).astype(np.float32)


@dataclass(frozen=True)
class Neighbours:
    """Row positions (into the searched matrix) most similar first, with their cosine similarities."""

    positions: npt.NDArray[np.int64]
    similarities: npt.NDArray[np.float32]


def exact_top_k(vectors: FloatArray, query: npt.ArrayLike, k: int, *, exclude: int | None = None) -> Neighbours:
    """The `k` rows of `vectors` (unit rows) most similar to the unit vector `query`, skipping row `exclude`.

    usearch's brute-force search reads the float16 rows as they are stored (SIMD, without the GIL): converting the
    whole matrix to float32 per query was 90% of a query's time at 30,000 rows. Its top candidates, with a margin
    for rounding, are then scored again in float32 so ties and copies sort as `ordered` says.
    """
    usearch = usearch_index()
    MetricKind, brute_force = usearch.MetricKind, usearch.search  # noqa: N806  (the library's names)

    rows = vectors if vectors.dtype in (np.float16, np.float32) else np.asarray(vectors, dtype=np.float32)
    wanted = np.asarray(query, dtype=np.float32).reshape(-1)
    excluded = exclude is not None and 0 <= exclude < rows.shape[0]
    count = min(k, rows.shape[0] - excluded)
    if count <= 0:
        return Neighbours(np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32))
    found = brute_force(
        rows, wanted.astype(rows.dtype), min(rows.shape[0], 2 * count + 1), MetricKind.IP, exact=True, threads=1
    )
    candidates = np.sort(np.asarray(found.keys, dtype=np.int64).reshape(-1))
    if excluded:
        candidates = candidates[candidates != exclude]
    best = ordered(candidates, dot_scores(rows[candidates], wanted))
    return Neighbours(best.positions[:count], best.similarities[:count])


def dot_scores(rows: FloatArray, query: npt.ArrayLike) -> npt.NDArray[np.float32]:
    """`rows @ query` for a few hundred float16 (or float32) rows, accumulated in float32 by usearch's SIMD
    kernels: on the loaded 2-core machine 512 rows took 16 ms to convert to float32 and 40 ms in OpenBLAS's
    matrix-vector product (its threads wait on busy cores), 4 ms this way."""
    usearch = usearch_index()
    MetricKind, brute_force = usearch.MetricKind, usearch.search  # noqa: N806  (the library's names)

    block = rows if rows.dtype in (np.float16, np.float32) else np.asarray(rows, dtype=np.float32)
    block = np.ascontiguousarray(block)
    scores = np.zeros(block.shape[0], dtype=np.float32)
    if block.shape[0] == 0:
        return scores
    wanted = np.asarray(query, dtype=np.float32).reshape(-1).astype(block.dtype)
    found = brute_force(block, wanted, block.shape[0], MetricKind.IP, exact=True, threads=1)
    scores[np.asarray(found.keys, dtype=np.int64).reshape(-1)] = 1.0 - np.asarray(found.distances, np.float32).reshape(
        -1
    )
    return scores


def ordered(positions: npt.ArrayLike, similarities: npt.ArrayLike) -> Neighbours:
    """Most similar first (ties by position); exact copies get similarity 1.0 so they sort first, stably."""
    places = np.asarray(positions, dtype=np.int64)
    scores = np.clip(np.asarray(similarities, dtype=np.float32), -1.0, 1.0)
    scores = np.where(scores >= COPY_SIMILARITY, np.float32(1.0), scores)
    order = np.lexsort((places, -scores))
    return Neighbours(places[order], scores[order])


@dataclass(frozen=True)
class Projection:
    """A PCA fitted on a sample: `project` maps vectors to `components.shape[0]` unit-length dimensions."""

    mean: npt.NDArray[np.float32]
    components: npt.NDArray[np.float32]

    def project(self, vectors: FloatArray) -> npt.NDArray[np.float32]:
        return unit_rows((np.asarray(vectors, dtype=np.float32) - self.mean) @ self.components.T)


def fit_projection(sample: FloatArray, dims: int) -> Projection:
    """PCA of the sample rows down to `dims` dimensions: eigenvectors of the covariance (a features x features
    matrix, far cheaper than an SVD of the sample itself)."""
    rows = np.asarray(sample, dtype=np.float32)
    mean = rows.mean(axis=0)
    centred = rows - mean
    covariance = (centred.T @ centred).astype(np.float64) / max(1, rows.shape[0] - 1)
    _, vectors = np.linalg.eigh(covariance)  # ascending eigenvalues
    keep = min(dims, rows.shape[1])
    return Projection(mean.astype(np.float32), vectors[:, ::-1][:, :keep].T.astype(np.float32).copy())


def recall_at_k(approximate: npt.ArrayLike, exact: npt.ArrayLike) -> float:
    """Mean share of each query's exact top-k found in its approximate top-k (rows: queries, columns: ranks)."""
    found = np.asarray(approximate)
    truth = np.asarray(exact)
    if truth.size == 0:
        return 1.0
    hits = [
        np.intersect1d(found_row, truth_row).size / truth_row.size
        for found_row, truth_row in zip(found, truth, strict=True)
    ]
    return float(np.mean(hits))
