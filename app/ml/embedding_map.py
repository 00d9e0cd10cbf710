"""A 2-D map of an embedding: UMAP fitted on a sample, the rest placed by `transform`, scaled into [0, 1]².

Vectors are first PCA-reduced (fitted on the same sample) to `PCA_DIMS`: UMAP's neighbour search and its
transform cost grow with the dimension, and 1280-d backbone features carry their neighbourhoods in far fewer.
Fitting on a sample bounds the fit's time and memory; `transform` places every other row against the fitted
neighbour graph, chunk by chunk. Below `MIN_UMAP_ROWS` rows UMAP has too few neighbours to mean anything, so
the map is the first two principal components instead.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt

from app.ml.similarity import fit_projection

DEFAULT_SAMPLE_SIZE = 20_000
PCA_DIMS = 50
MIN_UMAP_ROWS = 50
_NEIGHBOURS = 15
_TRANSFORM_CHUNK = 20_000

Progress = Callable[[float], None]


def layout(
    vectors: npt.ArrayLike,
    *,
    sample_size: int = DEFAULT_SAMPLE_SIZE,
    seed: int | None = 0,
    progress: Progress | None = None,
) -> npt.NDArray[np.float32]:
    """One (x, y) in [0, 1] per row of `vectors`, in row order.

    `seed` fixes the sample and UMAP's randomness (UMAP then runs on one thread); None lets it use every core.
    """
    rows = np.asarray(vectors)
    if rows.ndim != 2:
        raise ValueError("vectors must be a 2-d array (rows x dimensions)")
    count = rows.shape[0]
    if count == 0:
        return np.zeros((0, 2), dtype=np.float32)
    if sample_size < 2:
        raise ValueError("sample_size must be at least 2")
    rng = np.random.default_rng(seed)
    sample = np.sort(rng.permutation(count)[:sample_size]) if count > sample_size else None
    fit_rows = np.asarray(rows if sample is None else rows[sample], dtype=np.float32)
    if count < MIN_UMAP_ROWS or fit_rows.shape[0] < MIN_UMAP_ROWS:
        return _scaled(_principal_plane(rows, fit_rows))
    projection = fit_projection(fit_rows, min(PCA_DIMS, fit_rows.shape[1]))
    reduced_fit = projection.project(fit_rows)
    model = _umap(min(_NEIGHBOURS, fit_rows.shape[0] - 1), seed)
    coordinates = np.empty((count, 2), dtype=np.float32)
    fitted = np.asarray(model.fit_transform(reduced_fit), dtype=np.float32)
    if sample is None:
        return _scaled(fitted)
    coordinates[sample] = fitted
    rest = np.setdiff1d(np.arange(count), sample, assume_unique=True)
    for low in range(0, rest.size, _TRANSFORM_CHUNK):
        chunk = rest[low : low + _TRANSFORM_CHUNK]
        coordinates[chunk] = model.transform(projection.project(np.asarray(rows[chunk], dtype=np.float32)))
        if progress is not None:
            progress(min(1.0, (low + chunk.size) / rest.size))
    return _scaled(coordinates)


def _umap(neighbours: int, seed: int | None) -> Any:
    import umap  # numba: compiled on first use, so imported only where a map is laid out

    # A seed makes UMAP single-threaded anyway; saying so keeps it from warning.
    threads = 1 if seed is not None else -1
    return umap.UMAP(
        n_neighbors=neighbours, n_components=2, metric="euclidean", random_state=seed, min_dist=0.1, n_jobs=threads
    )


def _principal_plane(rows: np.ndarray, fit_rows: np.ndarray) -> npt.NDArray[np.float32]:
    """The first two principal axes (one axis is flat when the rows span only one)."""
    centred = np.asarray(rows, dtype=np.float64) - fit_rows.mean(axis=0)
    if fit_rows.shape[0] < 2:
        return np.zeros((rows.shape[0], 2), dtype=np.float32)
    _, _, axes = np.linalg.svd(fit_rows - fit_rows.mean(axis=0), full_matrices=False)
    plane = np.zeros((rows.shape[0], 2))
    used = min(2, axes.shape[0])
    plane[:, :used] = centred @ axes[:used].T
    return plane.astype(np.float32)


def _scaled(points: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """Into [0, 1] on both axes with one scale (the map keeps its aspect); non-finite points go to the centre."""
    finite = np.isfinite(points).all(axis=1)
    out = np.full(points.shape, 0.5, dtype=np.float32)
    if not finite.any():
        return out
    low, high = points[finite].min(axis=0), points[finite].max(axis=0)
    span = float((high - low).max()) or 1.0
    offset = (1.0 - (high - low) / span) / 2  # centre the shorter axis
    out[finite] = (points[finite] - low) / span + offset
    return out
