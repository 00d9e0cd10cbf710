"""How many labels does each "label these next" strategy need to reach a dev accuracy, and how long is one round?

Data: scikit-learn's handwritten digits (1,797 real 8x8 scans, shipped inside the package: offline), 10 classes.
The "cached features" are the 64 pixel intensities, standardised; the model is the app's own linear head
(`app.ml.training.train_linear_head`, the linear mode's trainer), retrained from scratch every round. Per seed:
500 images are dev, the rest the unlabeled pool; a random seed set of SEED_LABELS labelled images; then rounds of
BATCH images chosen by each strategy (random, uncertainty = smallest margin, hybrid = margin balanced with
k-center greedy diversity, `app.ml.active_learning.rank_pool`), until dev accuracy reaches the target. The
number reported is the labelled count when it first does (the whole pool when it never does).

Round time: a synthetic pool of 10,000 and 100,000 images with 1,280-wide features (EfficientNet-Lite0's width):
score the pool with the head (as the pool job does after extraction; extraction itself is the feature cache's and
the runtime's business, measured in bench/train.py), project to the stored embedding, rank (hybrid, batch 100),
retrain the head on 2,000 labelled images.

    .venv/bin/python bench/active_learning.py [--seeds 5] [--target 0.94]

scikit-learn comes with the ``bench`` extra (``pip install -e '.[bench]'``).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
import numpy.typing as npt
import torch

from app.ml.active_learning import project_features, rank_pool
from app.ml.training import TrainingConfig, predict_from_features, train_linear_head

DEV_SIZE = 500
SEED_LABELS = 20
BATCH = 10
STRATEGIES = ("random", "uncertainty", "hybrid")
HEAD = TrainingConfig(epochs=40, learning_rate=0.05, batch_size=32, weight_decay=1e-4, patience=6)


def _digits() -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]:
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        sys.exit("scikit-learn is missing: pip install -e '.[bench]'")
    digits = load_digits()
    x = digits.data.astype(np.float32)
    x = (x - x.mean(axis=0)) / (x.std(axis=0) + 1e-6)
    return x, digits.target.astype(np.int64)


def _fit(x: np.ndarray, y: np.ndarray, dev_x: np.ndarray, dev_y: np.ndarray, seed: int) -> dict[str, torch.Tensor]:
    config = TrainingConfig(**{**vars(HEAD), "seed": seed})
    return train_linear_head(
        train_features=x, train_labels=y, dev_features=dev_x, dev_labels=dev_y, num_classes=10, config=config
    ).head_state


def labels_needed(strategy: str, seed: int, target: float, x: np.ndarray, y: np.ndarray) -> tuple[int, float]:
    """(labels when dev accuracy first reached `target`, the accuracy then) for one strategy and seed."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(y))
    dev, pool = order[:DEV_SIZE], order[DEV_SIZE:]
    labelled = list(pool[:SEED_LABELS])
    unlabelled = list(pool[SEED_LABELS:])
    embeddings = project_features(x)
    accuracy = 0.0
    while True:
        head = _fit(x[labelled], y[labelled], x[dev], y[dev], seed)
        accuracy = float((predict_from_features(head_state=head, features=x[dev]).argmax(1) == y[dev]).mean())
        if accuracy >= target or not unlabelled:
            return len(labelled), accuracy
        rows = np.array(unlabelled)
        if strategy == "random":
            chosen = rng.choice(len(rows), size=min(BATCH, len(rows)), replace=False)
        else:
            probs = predict_from_features(head_state=head, features=x[rows])
            chosen = rank_pool(probs, embeddings[rows], strategy=strategy, limit=BATCH).indices
        picked = set(rows[chosen].tolist())
        labelled.extend(sorted(picked))
        unlabelled = [i for i in unlabelled if i not in picked]


def round_time(pool_size: int, *, width: int = 1280, classes: int = 10, labelled: int = 2000) -> dict[str, float]:
    rng = np.random.default_rng(0)
    centres = rng.normal(0, 1, (classes, width)).astype(np.float32)
    pool_classes = rng.integers(classes, size=pool_size)
    pool = centres[pool_classes] + rng.normal(0, 3, (pool_size, width)).astype(np.float32)
    train_classes = rng.integers(classes, size=labelled)
    train = centres[train_classes] + rng.normal(0, 3, (labelled, width)).astype(np.float32)
    head = _fit(train[:200], train_classes[:200], train[:200], train_classes[:200], 0)
    t0 = time.perf_counter()
    probs = predict_from_features(head_state=head, features=pool)
    embeddings = project_features(pool)
    t1 = time.perf_counter()
    rank_pool(probs, embeddings, strategy="hybrid", limit=100)
    t2 = time.perf_counter()
    _fit(train, train_classes, train[:500], train_classes[:500], 0)
    t3 = time.perf_counter()
    return {"score": t1 - t0, "rank": t2 - t1, "retrain": t3 - t2, "total": t3 - t0}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--target", type=float, default=0.94)
    args = parser.parse_args()
    torch.set_num_threads(1)
    x, y = _digits()
    print(f"digits: {len(y)} images, dev {DEV_SIZE}, seed set {SEED_LABELS}, batch {BATCH}, target {args.target:.0%}")
    print(f"cores: {os.cpu_count()}, load average {os.getloadavg()[0]:.1f}")
    results: dict[str, list[int]] = {s: [] for s in STRATEGIES}
    for seed in range(args.seeds):
        line = []
        for strategy in STRATEGIES:
            needed, accuracy = labels_needed(strategy, seed, args.target, x, y)
            results[strategy].append(needed)
            line.append(f"{strategy} {needed} ({accuracy:.1%})")
        print(f"seed {seed}: " + ", ".join(line), flush=True)
    random_mean = float(np.mean(results["random"]))
    print("\nlabels to reach the target (mean over seeds; fewer is better):")
    for strategy in STRATEGIES:
        mean = float(np.mean(results[strategy]))
        print(f"  {strategy:12s} {mean:7.1f}  ({1 - mean / random_mean:+.0%} fewer than random)")
    print("\none round (score pool + rank hybrid batch of 100 + retrain on 2,000), 1,280-wide features:")
    for size in (10_000, 100_000):
        t = round_time(size)
        print(
            f"  pool {size:>7,}: score {t['score']:.2f} s, rank {t['rank']:.2f} s, retrain {t['retrain']:.2f} s, "
            f"total {t['total']:.2f} s",
            flush=True,
        )


if __name__ == "__main__":
    main()
