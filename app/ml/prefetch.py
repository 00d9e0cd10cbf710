"""Decode the next batches in threads while the runtime computes the current one.

Pillow releases the GIL while it decodes and resizes, and onnxruntime while it computes, so threads overlap
both without the cost of processes (no pickling of images, one copy of the model). Results come back in input
order.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

import numpy as np
import numpy.typing as npt

Result = TypeVar("Result")
DecodeOne = Callable[[Path], npt.NDArray[np.uint8]]


def decode_threads(cores: int, *, on_gpu: bool) -> int:
    """How many threads decode while the model computes.

    On a CPU the model's own threads take every core. Decoding a photo costs a fraction of what the backbone
    does (about a third for EfficientNet-Lite0 at 500x375), so one thread per four cores (at least one) keeps
    the next batch ready; on 2 busy cores one and two threads measured within noise of each other (bench/train.py
    prints the rates). On a GPU the cores are free for decoding.
    """
    if on_gpu:
        return max(1, min(8, cores - 1))
    return max(1, cores // 4)


def overlapped(
    paths: Sequence[Path],
    *,
    decode: DecodeOne,
    batch_size: int,
    threads: int,
    compute: Callable[[npt.NDArray[np.uint8]], Result],
) -> Iterator[Result]:
    """`compute(batch)` for each batch of decoded images [n, 3, H, W], in order, decoding ahead in `threads`.

    At most `threads + 1` decoded batches wait at any time, so memory stays flat with the number of images.
    """
    batch_count = math.ceil(len(paths) / batch_size)

    def decode_batch(index: int) -> npt.NDArray[np.uint8]:
        chunk = paths[index * batch_size : (index + 1) * batch_size]
        return np.stack([decode(path) for path in chunk])

    with ThreadPoolExecutor(max_workers=max(1, threads), thread_name_prefix="decode") as pool:
        pending: deque[Future[npt.NDArray[np.uint8]]] = deque()
        submitted = 0
        try:
            while submitted < min(batch_count, threads + 1):
                pending.append(pool.submit(decode_batch, submitted))
                submitted += 1
            while pending:
                images = pending.popleft().result()
                if submitted < batch_count:
                    pending.append(pool.submit(decode_batch, submitted))
                    submitted += 1
                yield compute(images)
        finally:
            for future in pending:  # stopped early (cancelled, failed): do not decode the rest
                future.cancel()
