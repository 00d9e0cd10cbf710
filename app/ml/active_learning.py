"""Which unlabeled images to label next: uncertainty, diversity and both, as pure functions over numpy arrays.

- Uncertainty: the margin between the model's two most probable classes (small margin = the model hesitates), or
  the entropy of its probabilities, normalised to 0..1.
- Diversity: k-center greedy (Sener & Savarese, 2018) in embedding space: each next pick is the candidate farthest
  from everything picked so far (and from the already labelled images when given), so a batch covers the pool.
- Hybrid: the most uncertain candidates (a few times the batch), then a greedy pick that weighs each candidate's
  uncertainty against its distance to the picks so far: a batch is not fifty copies of one hard case.

Embeddings are the backbone's pooled features, L2-normalised and randomly projected to a few dozen dimensions
(Johnson-Lindenstrauss: distances survive up to a few percent), so a pool of 100,000 fits in a dozen megabytes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from app.ml.arrays import Float32Array, Int64Array

STRATEGIES = ("uncertainty", "diversity", "hybrid")
EMBEDDING_DIMS = 64
PROJECTION_SEED = 20_260_601
# Hybrid looks at this many times the batch of the most uncertain candidates before it spreads its picks.
HYBRID_CANDIDATES = 3
# Weight of diversity against uncertainty in the hybrid's greedy pick (0: uncertainty only, 1: diversity only).
HYBRID_DIVERSITY_WEIGHT = 0.3


@dataclass(frozen=True)
class Ranking:
    """Rows of the pool in the order to label them, with the score each was picked by (higher = picked first)."""

    indices: Int64Array
    scores: npt.NDArray[np.float64]


def margins(probs: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """Top-1 minus top-2 probability of each row (1.0 for a single class)."""
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] == 0:
        raise ValueError("probabilities must be a 2-D array with one column per class")
    if p.shape[1] == 1:
        return np.ones(p.shape[0])
    top2 = np.partition(p, p.shape[1] - 2, axis=1)[:, -2:]
    return np.asarray(top2[:, 1] - top2[:, 0])


def normalised_entropy(probs: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """Entropy of each row divided by log(classes): 0 = certain, 1 = uniform."""
    p = np.clip(np.asarray(probs, dtype=np.float64), 1e-12, 1.0)
    if p.ndim != 2 or p.shape[1] == 0:
        raise ValueError("probabilities must be a 2-D array with one column per class")
    if p.shape[1] == 1:
        return np.zeros(p.shape[0])
    return np.asarray(-(p * np.log(p)).sum(axis=1) / np.log(p.shape[1]))


def uncertainty(probs: npt.ArrayLike, *, measure: str = "margin") -> npt.NDArray[np.float64]:
    """0..1, higher = less sure: 1 - margin, or the normalised entropy."""
    if measure == "margin":
        return 1.0 - margins(probs)
    if measure == "entropy":
        return normalised_entropy(probs)
    raise ValueError(f"measure must be 'margin' or 'entropy'; got {measure!r}")


def project_features(
    features: npt.ArrayLike, *, dims: int = EMBEDDING_DIMS, seed: int = PROJECTION_SEED
) -> Float32Array:
    """L2-normalised features times a fixed Gaussian matrix (seeded by the input width, so every run of one
    backbone projects alike), float32 [N, min(dims, width)]."""
    x = np.asarray(features, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError("features must be a 2-D array")
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    x = x / np.maximum(norms, 1e-12)
    width = x.shape[1]
    if width <= dims:
        return x.astype(np.float32)
    rng = np.random.default_rng([seed, width])
    matrix = rng.standard_normal((width, dims)).astype(np.float32) / np.float32(np.sqrt(dims))
    return np.asarray(x @ matrix, dtype=np.float32)


def _min_sq_distances(points: Float32Array, centers: Float32Array, *, chunk: int = 4096) -> npt.NDArray[np.float64]:
    """Squared distance of each point to its nearest center (inf without centers), in chunks of centers."""
    best = np.full(points.shape[0], np.inf)
    if centers.shape[0] == 0:
        return best
    point_norms = (points.astype(np.float64) ** 2).sum(axis=1)
    for start in range(0, centers.shape[0], chunk):
        block = centers[start : start + chunk].astype(np.float64)
        d = point_norms[:, None] - 2.0 * points.astype(np.float64) @ block.T + (block**2).sum(axis=1)[None, :]
        best = np.minimum(best, np.maximum(d, 0.0).min(axis=1))
    return best


def _check(embeddings: npt.ArrayLike, limit: int) -> Float32Array:
    x = np.asarray(embeddings, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError("embeddings must be a 2-D array")
    if limit < 0:
        raise ValueError("limit must be 0 or more")
    return x


def greedy_pick(
    embeddings: npt.ArrayLike,
    limit: int,
    *,
    weights: npt.ArrayLike | None = None,
    diversity_weight: float = 1.0,
    labelled: npt.ArrayLike | None = None,
) -> Ranking:
    """Pick `limit` rows one by one, each maximising (1 - w) * weight + w * distance to the nearest pick so far
    (and labelled row), distances scaled by the largest one at the start. w = 1 and no weights: k-center greedy.
    Without labelled rows the first pick is the row of highest weight (or the farthest from the mean), score 1."""
    x = _check(embeddings, limit)
    n = x.shape[0]
    limit = min(limit, n)
    if not 0.0 <= diversity_weight <= 1.0:
        raise ValueError("diversity_weight must be between 0 and 1")
    w = np.zeros(n) if weights is None else np.asarray(weights, dtype=np.float64)
    if w.shape != (n,):
        raise ValueError("one weight per row is needed")
    centers = np.zeros((0, x.shape[1]), dtype=np.float32) if labelled is None else np.asarray(labelled, np.float32)
    nearest = _min_sq_distances(x, centers)
    picked = np.zeros(limit, dtype=np.int64)
    scores = np.zeros(limit)
    available = np.ones(n, dtype=bool)
    start = 0
    if limit and not np.isfinite(nearest).any():
        # Nothing labelled: start from the most uncertain row, or (diversity alone) the farthest from the mean.
        spread = ((x - x.mean(axis=0)) ** 2).sum(axis=1)
        first = int(np.argmax(w)) if weights is not None else int(np.argmax(spread))
        picked[0], scores[0], available[first] = first, 1.0, False
        nearest = ((x - x[first]) ** 2).sum(axis=1).astype(np.float64)
        start = 1
    scale = float(np.sqrt(nearest.max())) if n else 1.0
    scale = scale if scale > 0 else 1.0
    for step in range(start, limit):
        combined = (1.0 - diversity_weight) * w + diversity_weight * np.sqrt(nearest) / scale
        combined[~available] = -np.inf
        choice = int(np.argmax(combined))
        picked[step], scores[step] = choice, combined[choice]
        available[choice] = False
        # Only the new pick can bring a row's nearest center closer: one row of distances per step.
        nearest = np.minimum(nearest, ((x - x[choice]) ** 2).sum(axis=1))
    return Ranking(picked, scores)


def rank_pool(
    probs: npt.ArrayLike,
    embeddings: npt.ArrayLike,
    *,
    strategy: str,
    limit: int,
    measure: str = "margin",
    labelled: npt.ArrayLike | None = None,
    candidates: int = HYBRID_CANDIDATES,
    diversity_weight: float = HYBRID_DIVERSITY_WEIGHT,
) -> Ranking:
    """The next `limit` pool rows to label by `strategy` (one of STRATEGIES); ties keep row order."""
    p = np.asarray(probs, dtype=np.float64)
    x = _check(embeddings, limit)
    if p.shape[0] != x.shape[0]:
        raise ValueError("probabilities and embeddings must have one row per pool image each")
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {', '.join(STRATEGIES)}; got {strategy!r}")
    if strategy == "diversity":
        return greedy_pick(x, limit, labelled=labelled)
    unsure = uncertainty(p, measure=measure) if p.shape[0] else np.zeros(0)
    order = np.argsort(-unsure, kind="stable")
    if strategy == "uncertainty":
        top = order[:limit]
        return Ranking(top.astype(np.int64), unsure[top])
    shortlist = order[: max(limit, limit * candidates)]
    picked = greedy_pick(
        x[shortlist], limit, weights=unsure[shortlist], diversity_weight=diversity_weight, labelled=labelled
    )
    return Ranking(shortlist[picked.indices].astype(np.int64), picked.scores)
