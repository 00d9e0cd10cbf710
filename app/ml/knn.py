"""Each row's nearest other rows by cosine similarity, exactly, in blocks (for the neighbours' label vote)."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

_BLOCK = 1024


def nearest_neighbours(
    unit_rows: npt.ArrayLike, k: int, *, block: int = _BLOCK
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]:
    """(positions, similarities), rows x min(k, rows - 1), most similar first, each row's own position left out.

    `unit_rows` must be unit length (a dot product is then the cosine). Blocks of `block` query rows bound the
    memory to block x rows similarities.
    """
    rows = np.asarray(unit_rows, dtype=np.float32)
    if rows.ndim != 2:
        raise ValueError("unit_rows must be a 2-d array (rows x dimensions)")
    if k < 1:
        raise ValueError("k must be at least 1")
    count = rows.shape[0]
    wanted = min(k, count - 1)
    positions = np.zeros((count, max(wanted, 0)), dtype=np.int64)
    similarities = np.zeros((count, max(wanted, 0)), dtype=np.float32)
    if wanted <= 0:
        return positions, similarities
    for low in range(0, count, block):
        high = min(count, low + block)
        scores = rows[low:high] @ rows.T
        scores[np.arange(high - low), np.arange(low, high)] = -np.inf  # not one's own neighbour
        top = np.argpartition(-scores, wanted - 1, axis=1)[:, :wanted]
        top_scores = np.take_along_axis(scores, top, axis=1)
        order = np.lexsort((top, -top_scores), axis=1)
        positions[low:high] = np.take_along_axis(top, order, axis=1)
        similarities[low:high] = np.take_along_axis(top_scores, order, axis=1)
    return positions, similarities
