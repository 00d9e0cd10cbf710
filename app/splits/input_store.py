"""The parts of a split's input that change only when images are added, kept on disk between processes.

Images are never deleted and their source, imported subset and dHash never change, so for one dataset the image
ids, source codes, imported subsets and near-duplicate groups are fixed by (image count, last image id) and the
near-duplicate threshold. Reading them for a million images and grouping their hashes is most of a split
preview's cost; labels, which do change, are read fresh every time.
"""

from __future__ import annotations

import contextlib
import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from app.core.storage import atomic_write_bytes

# 2: near-duplicate groups are verified on pixel signatures and never chain (issue 16); version 1 groups chained.
# 3: candidates also by the inner-view hash and within the verified reach; four signature views.
FORMAT_VERSION = 3


@dataclass(frozen=True, eq=False)
class StableColumns:
    image_ids: npt.NDArray[np.int64]
    source_codes: npt.NDArray[np.int64]
    source_names: tuple[str, ...]
    group_ids: npt.NDArray[np.int64]
    imported_subsets: npt.NDArray[np.int8] | None


@dataclass(frozen=True)
class ImagesKey:
    """What fixes a dataset's stable columns."""

    dataset_id: int
    threshold: int
    image_count: int
    last_image_id: int


class SplitInputStore:
    """One file per (dataset, threshold), replaced atomically; a missing, stale or unreadable file is a miss."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def _path(self, key: ImagesKey) -> Path:
        return self.root / f"dataset-{key.dataset_id}-t{key.threshold}.npz"

    def load(self, key: ImagesKey) -> StableColumns | None:
        try:
            with np.load(self._path(key), allow_pickle=False) as stored:
                meta = json.loads(str(stored["meta"]))
                if meta != _meta(key):
                    return None
                return StableColumns(
                    image_ids=stored["image_ids"],
                    source_codes=stored["source_codes"],
                    source_names=tuple(json.loads(str(stored["source_names"]))),
                    group_ids=stored["group_ids"],
                    imported_subsets=stored.get("imported_subsets"),
                )
        except (OSError, ValueError, KeyError):
            return None

    def save(self, key: ImagesKey, columns: StableColumns) -> None:
        """Best effort: a cache that cannot be written (read-only or full disk) only costs speed."""
        arrays = {
            "meta": np.array(json.dumps(_meta(key))),
            "image_ids": columns.image_ids,
            "source_codes": columns.source_codes,
            "source_names": np.array(json.dumps(list(columns.source_names))),
            "group_ids": columns.group_ids,
        }
        if columns.imported_subsets is not None:
            arrays["imported_subsets"] = columns.imported_subsets
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)  # type: ignore[arg-type]
        with contextlib.suppress(OSError):
            atomic_write_bytes(self._path(key), buffer.getvalue())


def _meta(key: ImagesKey) -> dict[str, int]:
    return {
        "format": FORMAT_VERSION,
        "dataset_id": key.dataset_id,
        "threshold": key.threshold,
        "image_count": key.image_count,
        "last_image_id": key.last_image_id,
    }
