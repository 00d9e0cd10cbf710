"""One dataset's vectors from one backbone, on disk: append-only float16 rows, and an ANN index for big sets.

`ids.i64` and `vectors.f16` grow together (vectors first, so a crash leaves at most a tail of vectors without
ids, which the next open ignores and the next append overwrites): a job killed mid-way resumes from what is
stored. Rows are unit length (cosine similarity is a dot product). Up to `exact_limit` rows, search is exact (a
brute-force pass over the float16 rows); beyond, a usearch HNSW index over PCA-reduced (128-d, int8) vectors
finds candidates that are re-ranked exactly with the stored rows. The index is built by the embeddings job and
saved as one file beside the rows; a web process opens it once, as a memory-mapped view, with the rows mapped
too, so a query costs the graph search and reading its few hundred candidate rows.
usearch: maintained, quantises to float16 or int8 natively (hnswlib keeps float32), adds vectors incrementally,
serves a saved index memory-mapped and saves to one file; faiss-cpu would need IVF training and a bigger wheel
for the same job.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from app.core.artefacts import ArtefactStore
from app.core.storage import atomic_write_bytes
from app.ml.ann import usearch_index
from app.ml.similarity import Neighbours, Projection, dot_scores, exact_top_k, fit_projection, ordered

DEFAULT_EXACT_LIMIT = 50_000
INDEX_DIMS = 128
_PCA_SAMPLE = 10_000
# Candidates the index hands to the exact re-ranking: (k + 1) x the factor, at least the floor. On the bench's
# 1M generated vectors (2,000 clusters of ~500) PCA-128 ranks neighbours inside a cluster loosely: the exact
# top 10 were among the 210 nearest in PCA space 70% of the time, among the 500 nearest 99.7% (30 queries, brute
# force in PCA space). Re-scoring 512 float16 rows (dot_scores) took ~4 ms on the loaded 2-core machine.
_RERANK_FACTOR = 10
_MIN_CANDIDATES = 512
# The index's own copy of the reduced vectors, its links per node and its breadth while adding and searching (a
# search is at least as broad as the candidates it returns). Adding 40k PCA-128 rows on one core: float16 with
# breadth 64 4,200 rows/s, int8 with breadth 32 15,400 rows/s. But breadth 32 made a poor graph inside big
# clusters: recall@10 0.83 on the bench's 1M vectors (0.968 on 100k in clusters of the same ~500 rows), where int8
# with breadth 64 reached 0.997 on those 100k (float16 64: 1.000 for 1.4x its build time) and 0.968 at 1M
# (bench/embeddings.py, which reports recall@10 at these settings).
_INDEX_DTYPE = "i8"
_CONNECTIVITY = 16
_EXPANSION_ADD = 64
_EXPANSION_SEARCH = 128
_BUILD_CHUNK = 16_384
_LOADED_SIZE = 4


@dataclass(frozen=True, eq=False)
class _Loaded:
    """What a query needs, opened once per process: the ids (and their sort order), the float16 rows mapped from
    disk (pages are read on demand and shared through the page cache), the index as a view of its file, the PCA."""

    stamp: tuple[int, int, int]
    ids: npt.NDArray[np.int64]
    order: npt.NDArray[np.int64]
    vectors: npt.NDArray[np.float16]
    index: Any
    projection: Projection | None


_LOADED: dict[Path, _Loaded] = {}


def _safe(name: str) -> str:
    return "".join(char if char.isalnum() or char in "-_" else "_" for char in name)


# Where embedding sets are read from: a folder (tests, benches) or the blob store's artefacts, which keep them under
# embeddings/dataset-<id>/<backbone>/ (the data dir's embeddings/ folder locally, a per-host mirror of the object
# store's copy otherwise).
EmbeddingsRoot = Path | ArtefactStore
# Upload order of a set's files: the rows first (readers take the shorter of ids and vectors), the index after.
PUBLISH_ORDER = ("meta.json", "vectors.f16", "ids.i64", "projection.npz", "index.usearch", "neighbours.npz", "map.npz")


def set_prefix(dataset_id: int, backbone: str) -> str:
    return f"embeddings/dataset-{dataset_id}/{_safe(backbone)}"


def open_store(root: EmbeddingsRoot, *, dataset_id: int, backbone: str) -> EmbeddingStore:
    """The set's store to read: in the folder, or in the artefacts' current copy."""
    if isinstance(root, Path):
        return EmbeddingStore(root, dataset_id=dataset_id, backbone=backbone)
    return EmbeddingStore.in_folder(root.mirror(set_prefix(dataset_id, backbone)))


class EmbeddingStore:
    def __init__(self, root: Path, *, dataset_id: int, backbone: str, exact_limit: int = DEFAULT_EXACT_LIMIT) -> None:
        self._at(root / f"dataset-{dataset_id}" / _safe(backbone), exact_limit)

    @classmethod
    def in_folder(cls, folder: Path, *, exact_limit: int = DEFAULT_EXACT_LIMIT) -> EmbeddingStore:
        store = cls.__new__(cls)
        store._at(folder, exact_limit)
        return store

    def _at(self, folder: Path, exact_limit: int) -> None:
        self.root = folder
        self.exact_limit = exact_limit
        self._ids_path = self.root / "ids.i64"
        self._vectors_path = self.root / "vectors.f16"
        self._meta_path = self.root / "meta.json"

    # ---- rows -------------------------------------------------------------------------------------------
    def dims(self) -> int:
        try:
            return int(json.loads(self._meta_path.read_text())["dims"])
        except (OSError, ValueError, KeyError):
            return 0

    def count(self) -> int:
        dims = self.dims()
        if not dims or not self._ids_path.exists() or not self._vectors_path.exists():
            return 0
        return min(self._ids_path.stat().st_size // 8, self._vectors_path.stat().st_size // (2 * dims))

    def ids(self) -> npt.NDArray[np.int64]:
        count = self.count()
        return np.fromfile(self._ids_path, dtype=np.int64, count=count) if count else np.zeros(0, np.int64)

    def vectors(self) -> npt.NDArray[np.float16]:
        count, dims = self.count(), self.dims()
        if not count:
            return np.zeros((0, dims), dtype=np.float16)
        return np.memmap(self._vectors_path, dtype=np.float16, mode="r", shape=(count, dims))

    def rows(self, low: int, high: int) -> npt.NDArray[np.float16]:
        """Rows low..high read from the file (not mapped): a pass over every row, such as the index build, then
        leaves them in the page cache rather than in the process's resident memory (1M rows are 2.4 GiB)."""
        dims = self.dims()
        high = min(high, self.count())
        if high <= low:
            return np.zeros((0, dims), dtype=np.float16)
        with self._vectors_path.open("rb") as file:
            file.seek(low * dims * 2)
            return np.fromfile(file, dtype=np.float16, count=(high - low) * dims).reshape(high - low, dims)

    def take(self, positions: npt.ArrayLike) -> npt.NDArray[np.float16]:
        """The rows at `positions`, each read from the file on its own: gathering 10,000 scattered rows through
        the memory map pulled the whole file into the process's resident memory (fault-around and readahead)."""
        dims = self.dims()
        wanted = np.asarray(positions, dtype=np.int64).reshape(-1)
        out = np.empty((wanted.size, dims), dtype=np.float16)
        width = dims * 2
        with self._vectors_path.open("rb", buffering=0) as file:
            descriptor = file.fileno()
            for place, position in enumerate(wanted.tolist()):
                out[place] = np.frombuffer(os.pread(descriptor, width, position * width), dtype=np.float16)
        return out

    def append(self, image_ids: npt.ArrayLike, unit_vectors: npt.ArrayLike) -> None:
        ids = np.asarray(image_ids, dtype=np.int64)
        rows = np.asarray(unit_vectors, dtype=np.float16)
        if rows.ndim != 2 or rows.shape[0] != ids.size:
            raise ValueError("one vector row per image id is needed")
        self.root.mkdir(parents=True, exist_ok=True)
        if not self.dims():
            atomic_write_bytes(self._meta_path, json.dumps({"dims": rows.shape[1]}).encode())
        elif rows.shape[1] != self.dims():
            raise ValueError(f"vectors have {rows.shape[1]} dimensions; this store holds {self.dims()}")
        count = self.count()
        for path, data, width in ((self._vectors_path, rows, rows.shape[1] * 2), (self._ids_path, ids, 8)):
            with path.open("ab") as file:
                file.truncate(count * width)  # drop a tail an interrupted append left
                file.write(np.ascontiguousarray(data).tobytes())
                file.flush()
                os.fsync(file.fileno())

    def vector_of(self, image_id: int) -> npt.NDArray[np.float32] | None:
        loaded = self._loaded()
        position = self._position(loaded, image_id)
        return None if position is None else np.asarray(loaded.vectors[position], dtype=np.float32)

    @staticmethod
    def _position(loaded: _Loaded, image_id: int) -> int | None:
        place = int(np.searchsorted(loaded.ids, image_id, sorter=loaded.order))
        if place < loaded.order.size and loaded.ids[loaded.order[place]] == image_id:
            return int(loaded.order[place])
        return None

    def _stamp(self) -> tuple[int, int, int]:
        """Changes whenever the rows or the index file do (two stat calls; a query pays only these)."""
        index_path = self.root / "index.usearch"
        try:
            ids_size = self._ids_path.stat().st_size
        except OSError:
            ids_size = 0
        try:
            index_stat = index_path.stat()
        except OSError:
            return ids_size, 0, 0
        return ids_size, index_stat.st_mtime_ns, index_stat.st_size

    def _loaded(self) -> _Loaded:
        """Ids, their sort order, the rows and the index, opened once per process while the files stay the same."""
        stamp = self._stamp()
        cached = _LOADED.get(self.root)
        if cached is not None and cached.stamp == stamp:
            return cached
        ids, vectors = self.ids(), self.vectors()
        index = None
        if stamp[1] and self.index_kind == "usearch":
            index = usearch_index().Index.restore(str(self.root / "index.usearch"), view=True)
            if index is not None:
                index.expansion_search = _EXPANSION_SEARCH  # settable at run time
        loaded = _Loaded(stamp, ids, np.argsort(ids, kind="stable"), vectors, index, self._projection())
        if len(_LOADED) >= _LOADED_SIZE:
            _LOADED.pop(next(iter(_LOADED)))
        _LOADED[self.root] = loaded
        return loaded

    # ---- search -----------------------------------------------------------------------------------------
    @property
    def index_kind(self) -> str:
        return "usearch" if self.count() > self.exact_limit else "exact"

    def search(self, query: npt.ArrayLike, k: int, *, exclude_id: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(image ids, similarities) of the `k` rows most similar to the unit vector `query`."""
        loaded = self._loaded()
        vectors = loaded.vectors
        ids = loaded.ids[: vectors.shape[0]]
        exclude = self._position(loaded, exclude_id) if exclude_id is not None else None
        if loaded.index is None or loaded.projection is None:
            found = exact_top_k(vectors, query, k, exclude=exclude)
        else:
            found = self._approximate(loaded, vectors, np.asarray(query, dtype=np.float32), k, exclude)
        return ids[found.positions], found.similarities

    def _approximate(
        self, loaded: _Loaded, vectors: np.ndarray, query: np.ndarray, k: int, exclude: int | None
    ) -> Neighbours:
        index, projection = loaded.index, loaded.projection
        assert index is not None and projection is not None
        wanted = min(len(index), max(_MIN_CANDIDATES, (k + 1) * _RERANK_FACTOR))
        found = index.search(projection.project(query[None])[0], wanted, threads=1)
        candidates = np.asarray(found.keys, dtype=np.int64)
        candidates = candidates[(candidates != exclude) & (candidates < vectors.shape[0])]
        candidates = np.sort(candidates)
        best = ordered(candidates, dot_scores(vectors[candidates], query))
        return Neighbours(best.positions[:k], best.similarities[:k])

    def _projection(self) -> Projection | None:
        try:
            with np.load(self.root / "projection.npz", allow_pickle=False) as stored:
                return Projection(stored["mean"], stored["components"])
        except (OSError, ValueError, KeyError):
            return None

    def refresh_index(self) -> int:
        """Add the rows the index lacks (building it, and its PCA, the first time); returns rows added."""
        count = self.count()
        if count <= self.exact_limit:
            return 0
        Index = usearch_index().Index  # noqa: N806  (the library's name)

        projection = self._projection()
        if projection is None:
            sample = np.random.default_rng(0).choice(count, size=min(count, _PCA_SAMPLE), replace=False)
            projection = fit_projection(np.asarray(self.take(np.sort(sample)), dtype=np.float32), INDEX_DIMS)
            buffer_path = self.root / "projection.npz"
            with buffer_path.open("wb") as file:
                np.savez(file, mean=projection.mean, components=projection.components)
        index_path = self.root / "index.usearch"
        index = Index.restore(str(index_path)) if index_path.exists() else None
        if index is None:
            index = Index(
                ndim=projection.components.shape[0],
                metric="cos",
                dtype=_INDEX_DTYPE,
                connectivity=_CONNECTIVITY,
                expansion_add=_EXPANSION_ADD,
            )
        start = len(index)
        for low in range(start, count, _BUILD_CHUNK):
            high = min(count, low + _BUILD_CHUNK)
            index.add(np.arange(low, high, dtype=np.uint64), projection.project(self.rows(low, high)))
        temporary = index_path.with_suffix(".tmp")
        index.save(str(temporary))
        os.replace(temporary, index_path)
        return count - start


_POINTS_JSON: dict[Path, tuple[tuple[int, int], int, bytes]] = {}


class MapStore:
    """The 2-D map of an embedding store's rows, beside its vectors: `map.npz` holds ids and (x, y) in [0, 1].

    Written whole and swapped in atomically, so a reader sees the old map or the new one, never half of one.
    """

    def __init__(self, store: EmbeddingStore) -> None:
        self._path = store.root / "map.npz"

    def read(self) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]] | None:
        try:
            with np.load(self._path, allow_pickle=False) as stored:
                return np.asarray(stored["ids"], dtype=np.int64), np.asarray(stored["xy"], dtype=np.float32)
        except (OSError, ValueError, KeyError):
            return None

    def count(self) -> int:
        found = self.read()
        return 0 if found is None else int(found[0].size)

    def points_json(self) -> tuple[int, bytes] | None:
        """(count, the JSON array of {"image_id", "x", "y"}), formatted once per map file and kept: at 100k
        points formatting is most of the answer's time, and the map changes only when the job writes it."""
        try:
            stat = self._path.stat()
        except OSError:
            return None
        stamp = (stat.st_mtime_ns, stat.st_size)
        cached = _POINTS_JSON.get(self._path)
        if cached is not None and cached[0] == stamp:
            return cached[1], cached[2]
        found = self.read()
        if found is None:
            return None
        ids, xy = found
        body = ",".join(
            f'{{"image_id":{i},"x":{x:.5f},"y":{y:.5f}}}' for i, (x, y) in zip(ids.tolist(), xy.tolist(), strict=True)
        )
        if len(_POINTS_JSON) >= _LOADED_SIZE:
            _POINTS_JSON.pop(next(iter(_POINTS_JSON)))
        _POINTS_JSON[self._path] = (stamp, int(ids.size), f"[{body}]".encode())
        return int(ids.size), _POINTS_JSON[self._path][2]

    def write(self, image_ids: npt.ArrayLike, xy: npt.ArrayLike) -> None:
        ids = np.asarray(image_ids, dtype=np.int64)
        points = np.asarray(xy, dtype=np.float32)
        if points.shape != (ids.size, 2):
            raise ValueError("one (x, y) per image id is needed")
        self._path.parent.mkdir(parents=True, exist_ok=True)
        temporary = self._path.with_suffix(".tmp")
        with temporary.open("wb") as file:
            np.savez(file, ids=ids, xy=points)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, self._path)


NEIGHBOURS = 10
_NEIGHBOUR_DIMS = 64


class NeighbourStore:
    """Each stored image's `NEIGHBOURS` nearest other images (ids and cosine similarities), beside the vectors in
    `neighbours.npz`: the neighbours' label vote reads them with today's labels, so a relabel counts at once.

    Neighbours come from PCA-reduced vectors (`_NEIGHBOUR_DIMS`, exact search in blocks) up to the store's exact
    limit, and from its usearch index beyond (the same candidates the similar-images search uses).
    """

    def __init__(self, store: EmbeddingStore) -> None:
        self._store = store
        self._path = store.root / "neighbours.npz"

    def read(self) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64], npt.NDArray[np.float32]] | None:
        """(image ids, neighbour image ids per row with -1 for none, similarities) or None before the first build."""
        try:
            with np.load(self._path, allow_pickle=False) as stored:
                return (
                    np.asarray(stored["ids"], dtype=np.int64),
                    np.asarray(stored["neighbours"], dtype=np.int64),
                    np.asarray(stored["similarities"], dtype=np.float32),
                )
        except (OSError, ValueError, KeyError):
            return None

    def count(self) -> int:
        found = self.read()
        return 0 if found is None else int(found[0].size)

    def refresh(self) -> int:
        """Find every row's neighbours again when rows were added; returns the rows done (0: already current)."""
        store = self._store
        count = store.count()
        if count == 0 or self.count() == count:
            return 0
        from app.ml.knn import nearest_neighbours

        ids = store.ids()[:count]
        vectors = store.vectors()
        loaded = store._loaded()
        if loaded.index is not None and loaded.projection is not None and len(loaded.index) >= count:
            # In chunks read from the file: 1M rows projected at once would be 5 GB of float32.
            keys, distances = [], []
            for low in range(0, count, _BUILD_CHUNK):
                found = loaded.index.search(
                    loaded.projection.project(store.rows(low, low + _BUILD_CHUNK)), NEIGHBOURS + 1, threads=0
                )
                keys.append(np.asarray(found.keys, dtype=np.int64).reshape(-1, NEIGHBOURS + 1))
                distances.append(np.asarray(found.distances, dtype=np.float32).reshape(-1, NEIGHBOURS + 1))
            positions = np.concatenate(keys)
            similarities = 1.0 - np.concatenate(distances)  # cos distance
            keep = positions != np.arange(count)[:, None]
            positions = np.array([row[mask][:NEIGHBOURS] for row, mask in zip(positions, keep, strict=True)])
            similarities = np.array([row[mask][:NEIGHBOURS] for row, mask in zip(similarities, keep, strict=True)])
        else:
            sample = np.random.default_rng(0).permutation(count)[:_PCA_SAMPLE]
            fitted = np.asarray(vectors[np.sort(sample)], dtype=np.float32)
            projection = fit_projection(fitted, min(_NEIGHBOUR_DIMS, fitted.shape[1], max(1, fitted.shape[0] - 1)))
            reduced = np.concatenate(
                [projection.project(vectors[low : low + 65_536]) for low in range(0, count, 65_536)]
            )
            positions, similarities = nearest_neighbours(reduced, NEIGHBOURS)
        neighbour_ids = np.where(positions >= 0, ids[np.clip(positions, 0, count - 1)], -1)
        self._path.parent.mkdir(parents=True, exist_ok=True)
        temporary = self._path.with_suffix(".tmp")
        with temporary.open("wb") as file:
            np.savez(file, ids=ids, neighbours=neighbour_ids, similarities=similarities.astype(np.float32))
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, self._path)
        return count
