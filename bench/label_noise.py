"""How well do our suspicion rankings find flipped labels, next to cleanlab on the same probabilities?

Data: Gaussian blobs (numpy only): balanced classes; unequal class sizes and spreads (a linear model then
fits some classes worse); the latter with 10% of the train labels flipped too; and classes made of several
separate modes each ("multimodal": what a frozen backbone's embedding looks like to a linear head, which
cannot follow a class around). A softmax regression is trained on the train data; 5% of the held-out (dev +
test) labels are flipped to a random other class. Ranked on the model's held-out probabilities, each method's
top-K list (K = number of flips) is scored against the known flips: precision = hits / items listed (cleanlab
lists only what it flags, possibly fewer than K), recall = hits / flips. "flagged" is how many label issues
each method estimates (ideally K; for fused, the images with a suspicion above 0.5).

"today" is ``rank_suspicious`` (self-confidence, confident-learning flags); "fused" adds the label vote of
each held-out image's 10 nearest labelled neighbours (train and the other held-out images, with their noisy
labels) in feature space (``fused_suspicion``). "ceiling" ranks by the true posterior of the generating blobs
(1 - p_true(given label | x)), which no method can beat on average: it shows how much of the goal the data allow.

    .venv/bin/python bench/label_noise.py [--seeds 5]

cleanlab comes with the ``bench`` extra (``pip install -e '.[bench]'``); without it our figures still print.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from dataclasses import astuple, dataclass

import numpy as np
import numpy.typing as npt

from app.ml.suspicion import fused_suspicion, knn_label_vote, rank_suspicious

FLIP_RATE = 0.05
FEATURES = 8
TRAIN_SIZE = 6000
HELD_OUT_SIZE = 4000  # dev + test together, as a label review covers both
NEIGHBOURS = 10


@dataclass(frozen=True)
class Scenario:
    name: str
    class_priors: tuple[float, ...]
    class_spreads: tuple[float, ...]
    mean_scale: float
    train_flip_rate: float
    modes: int = 1


UNEQUAL_PRIORS = (0.45, 0.25, 0.15, 0.1, 0.05)
UNEQUAL_SPREADS = (0.7, 1.0, 1.3, 1.6, 1.0)
SCENARIOS = (
    Scenario("balanced", (0.2,) * 5, (1.0,) * 5, mean_scale=1.3, train_flip_rate=0.0),
    Scenario("unequal", UNEQUAL_PRIORS, UNEQUAL_SPREADS, mean_scale=1.3, train_flip_rate=0.0),
    Scenario("unequal+noisy", UNEQUAL_PRIORS, UNEQUAL_SPREADS, mean_scale=1.3, train_flip_rate=0.10),
    Scenario("multimodal", (0.2,) * 5, (1.0,) * 5, mean_scale=2.5, train_flip_rate=0.0, modes=3),
)

# A ranker gets held-out probabilities, given labels and the neighbours' vote; it returns example indices,
# most suspicious first, and how many label issues it estimates.
Ranker = Callable[
    [npt.NDArray[np.float64], npt.NDArray[np.int64], npt.NDArray[np.float64]], tuple[npt.NDArray[np.intp], int]
]


@dataclass(frozen=True)
class Score:
    listed: int
    hits: int
    flips: int
    flagged: int

    @property
    def precision(self) -> float:
        return self.hits / self.listed if self.listed else 0.0

    @property
    def recall(self) -> float:
        return self.hits / self.flips if self.flips else 0.0


def make_blobs(
    scenario: Scenario, centres: npt.NDArray[np.float64], size: int, rng: np.random.Generator
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.int64]]:
    """`centres` holds `modes` rows per class (class-major); each example falls in one of its class's modes."""
    labels = rng.choice(len(scenario.class_priors), size=size, p=scenario.class_priors)
    spreads = np.asarray(scenario.class_spreads)[labels, None]
    modes = labels * scenario.modes + rng.integers(0, scenario.modes, size=size)
    features = centres[modes] + spreads * rng.standard_normal((size, centres.shape[1]))
    return features, labels.astype(np.int64)


def flip_labels(
    labels: npt.NDArray[np.int64], num_classes: int, rate: float, rng: np.random.Generator
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.bool_]]:
    flipped = np.zeros(labels.size, dtype=bool)
    flipped[rng.choice(labels.size, size=round(rate * labels.size), replace=False)] = True
    # A shift of 1..k-1 classes always lands on a different class, uniformly.
    shifts = rng.integers(1, num_classes, size=labels.size)
    noisy = np.where(flipped, (labels + shifts) % num_classes, labels)
    return noisy, flipped


def softmax(logits: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return np.asarray(shifted / shifted.sum(axis=1, keepdims=True), dtype=np.float64)


def train_softmax_regression(
    features: npt.NDArray[np.float64], labels: npt.NDArray[np.int64], num_classes: int, *, steps: int = 400
) -> Callable[[npt.NDArray[np.float64]], npt.NDArray[np.float64]]:
    """Full-batch gradient descent on L2-regularised cross-entropy; returns a predict_proba function."""
    mean, std = features.mean(axis=0), features.std(axis=0) + 1e-9

    def design(raw: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        return np.hstack([(raw - mean) / std, np.ones((raw.shape[0], 1))])

    inputs = design(features)
    targets = np.eye(num_classes)[labels]
    weights = np.zeros((inputs.shape[1], num_classes))
    learning_rate, l2 = 0.5, 1e-4
    for _ in range(steps):
        gradient = inputs.T @ (softmax(inputs @ weights) - targets) / inputs.shape[0] + l2 * weights
        weights -= learning_rate * gradient
    return lambda raw: softmax(design(raw) @ weights)


def neighbour_labels(
    held_x: npt.NDArray[np.float64], pool_x: npt.NDArray[np.float64], pool_y: npt.NDArray[np.int64], k: int
) -> npt.NDArray[np.int64]:
    """Labels of each held-out example's k nearest pool examples (Euclidean); the pool starts with held_x itself,
    so each example's own row is skipped (its own label must not vote)."""
    squared = (pool_x**2).sum(axis=1)
    found = np.empty((held_x.shape[0], k), dtype=np.int64)
    for low in range(0, held_x.shape[0], 1000):
        block = held_x[low : low + 1000]
        distances = squared[None, :] - 2.0 * block @ pool_x.T
        distances[np.arange(block.shape[0]), low + np.arange(block.shape[0])] = np.inf
        found[low : low + block.shape[0]] = np.argpartition(distances, k, axis=1)[:, :k]
    return pool_y[found]


def true_posterior(
    scenario: Scenario, centres: npt.NDArray[np.float64], features: npt.NDArray[np.float64]
) -> npt.NDArray[np.float64]:
    """p(class | x) from the generating blobs themselves: the best any ranking could know (a ceiling)."""
    num_classes = len(scenario.class_priors)
    spreads = np.repeat(np.asarray(scenario.class_spreads), scenario.modes)
    squared = ((features[:, None, :] - centres[None, :, :]) ** 2).sum(axis=2)
    log_density = -squared / (2 * spreads**2) - features.shape[1] * np.log(spreads)
    per_class = log_density.reshape(features.shape[0], num_classes, scenario.modes)
    top = per_class.max(axis=(1, 2), keepdims=True)
    mixed = np.exp(per_class - top).mean(axis=2) * np.asarray(scenario.class_priors)
    return np.asarray(mixed / mixed.sum(axis=1, keepdims=True), dtype=np.float64)


def today(
    probs: npt.NDArray[np.float64], labels: npt.NDArray[np.int64], vote: npt.NDArray[np.float64]
) -> tuple[npt.NDArray[np.intp], int]:
    ranking = rank_suspicious(probs, labels)
    return ranking.order, int(ranking.flagged.sum())


def fused(
    probs: npt.NDArray[np.float64], labels: npt.NDArray[np.int64], vote: npt.NDArray[np.float64]
) -> tuple[npt.NDArray[np.intp], int]:
    scores = fused_suspicion(probs, labels, vote)
    # Its estimate of the issues: images on which the two witnesses together back the given label under half.
    return np.lexsort((np.arange(scores.size), -scores)).astype(np.intp), int((scores > 0.5).sum())


def load_cleanlab() -> Ranker | None:
    try:
        from cleanlab.filter import find_label_issues
    except ImportError:
        return None

    def cleanlab_ranked(
        probs: npt.NDArray[np.float64], labels: npt.NDArray[np.int64], vote: npt.NDArray[np.float64]
    ) -> tuple[npt.NDArray[np.intp], int]:
        ranked = np.asarray(find_label_issues(labels, probs, return_indices_ranked_by="self_confidence"))
        return ranked.astype(np.intp), int(ranked.size)

    return cleanlab_ranked


def score_top_k(ranked: npt.NDArray[np.intp], flagged: int, flipped: npt.NDArray[np.bool_]) -> Score:
    flips = int(flipped.sum())
    top = ranked[:flips]
    return Score(listed=int(top.size), hits=int(flipped[top].sum()), flips=flips, flagged=flagged)


def run_once(scenario: Scenario, seed: int, rankers: dict[str, Ranker]) -> tuple[float, dict[str, Score]]:
    rng = np.random.Generator(np.random.PCG64(seed))
    num_classes = len(scenario.class_priors)
    centres = scenario.mean_scale * rng.standard_normal((num_classes * scenario.modes, FEATURES))
    train_x, train_y = make_blobs(scenario, centres, TRAIN_SIZE, rng)
    held_x, held_y = make_blobs(scenario, centres, HELD_OUT_SIZE, rng)
    noisy_train_y, _ = flip_labels(train_y, num_classes, scenario.train_flip_rate, rng)
    noisy_y, flipped = flip_labels(held_y, num_classes, FLIP_RATE, rng)
    probs = train_softmax_regression(train_x, noisy_train_y, num_classes)(held_x)
    accuracy = float((probs.argmax(axis=1) == held_y).mean())
    pool_x, pool_y = np.vstack([held_x, train_x]), np.concatenate([noisy_y, noisy_train_y])
    vote = knn_label_vote(neighbour_labels(held_x, pool_x, pool_y, NEIGHBOURS), num_classes)
    scores = {name: score_top_k(*ranker(probs, noisy_y, vote), flipped) for name, ranker in rankers.items()}
    # With random flips, P(flipped | x, label) rises as p_true(label | x) falls: ranking by it is the ceiling.
    ceiling = 1.0 - true_posterior(scenario, centres, held_x)[np.arange(noisy_y.size), noisy_y]
    scores["ceiling"] = score_top_k(np.lexsort((np.arange(ceiling.size), -ceiling)).astype(np.intp), 0, flipped)
    return accuracy, scores


def format_cells(scores: dict[str, Score]) -> str:
    return "".join(f"{s.precision:>15.3f}{s.recall:>8.3f}{s.flagged:>9}" for s in scores.values())


def pool(scores: list[Score]) -> Score:
    return Score(*(sum(field) for field in zip(*(astuple(s) for s in scores), strict=True)))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=5, help="seeds per scenario (default 5)")
    args = parser.parse_args()

    rankers: dict[str, Ranker] = {"today": today, "fused": fused}
    cleanlab_ranked = load_cleanlab()
    if cleanlab_ranked is None:
        print("cleanlab is NOT importable (pip install -e '.[bench]'): printing our figures only.\n")
    else:
        rankers["cleanlab"] = cleanlab_ranked

    header = f"{'scenario':<14}{'seed':>5}{'acc':>7}{'K':>5}" + "".join(
        f"{name + ' P@K':>15}{'R@K':>8}{'flagged':>9}" for name in (*rankers, "ceiling")
    )
    print(header)
    print("-" * len(header))
    started = time.perf_counter()
    for scenario in SCENARIOS:
        per_seed: dict[str, list[Score]] = {name: [] for name in (*rankers, "ceiling")}
        for seed in range(args.seeds):
            accuracy, scores = run_once(scenario, seed, rankers)
            flips = scores["today"].flips
            print(f"{scenario.name:<14}{seed:>5}{accuracy:>7.3f}{flips:>5}{format_cells(scores)}")
            for name, score in scores.items():
                per_seed[name].append(score)
        pooled = {name: pool(scores) for name, scores in per_seed.items()}
        print(f"{scenario.name:<14}{'all':>5}{'':>7}{pooled['today'].flips:>5}{format_cells(pooled)}")
    elapsed = time.perf_counter() - started
    print(f"\nbase rate (precision of a random list): {FLIP_RATE:.3f}; took {elapsed:.1f} s")
    if cleanlab_ranked is None:
        print("cleanlab comparison skipped: cleanlab is not installed.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
