"""Decoder processes for ingest: fresh interpreters that import only the pure decode code, one file at a time."""

from __future__ import annotations

import contextlib
import logging
import pickle
import queue
import subprocess
import sys
import threading
from concurrent.futures import Future
from pathlib import Path
from types import TracebackType

from app.core.settings import PROJECT_ROOT
from app.ml.images import ImageLimits, Rejection
from app.uploads.logic import DecodedImage

log = logging.getLogger("errorbook.ingest")

DECODER_CRASHED = Rejection("decoder_crashed", "the image decoder crashed on this file")


class DecodePool:
    """Decoder processes, each fed one file at a time by a thread of its own.

    Plain subprocesses rather than multiprocessing: the job runner is a daemonic process, which multiprocessing
    forbids to have children, and a bare interpreter importing only the pure decode code stays small. A file
    that kills its decoder is rejected as such and a new decoder starts; the other files are not affected.
    """

    COMMAND = (
        "import sys; from app.uploads.logic import serve_decodes; serve_decodes(sys.stdin.buffer, sys.stdout.buffer)"
    )

    def __init__(self, *, processes: int, limits: ImageLimits, thumbnail_side: int) -> None:
        self.limits = limits
        self.thumbnail_side = thumbnail_side
        self._requests: queue.SimpleQueue[tuple[Path, str, Future[DecodedImage | Rejection]] | None] = (
            queue.SimpleQueue()
        )
        self._feeders = [
            threading.Thread(target=self._feed, name=f"decoder-{index}", daemon=True) for index in range(processes)
        ]
        for feeder in self._feeders:
            feeder.start()

    def __enter__(self) -> DecodePool:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        while True:  # a cancelled job leaves queued files behind: drop them
            try:
                request = self._requests.get_nowait()
            except queue.Empty:
                break
            if request is not None:
                request[2].cancel()
        for _ in self._feeders:
            self._requests.put(None)
        for feeder in self._feeders:
            feeder.join()

    def submit(self, path: Path, filename: str) -> Future[DecodedImage | Rejection]:
        future: Future[DecodedImage | Rejection] = Future()
        self._requests.put((path, filename, future))
        return future

    def _start(self) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [sys.executable, "-c", self.COMMAND], stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=PROJECT_ROOT
        )

    def _feed(self) -> None:
        process: subprocess.Popen[bytes] | None = None
        try:
            while (request := self._requests.get()) is not None:
                path, filename, future = request
                if not future.set_running_or_notify_cancel():
                    continue
                if process is None:
                    process = self._start()
                future.set_result(self._decode(process, path, filename))
                if process.poll() is not None:
                    process = None
        finally:
            if process is not None:
                _stop(process)

    def _decode(self, process: subprocess.Popen[bytes], path: Path, filename: str) -> DecodedImage | Rejection:
        assert process.stdin is not None and process.stdout is not None
        try:
            pickle.dump((str(path), filename, self.limits, self.thumbnail_side), process.stdin)
            process.stdin.flush()
            result: DecodedImage | Rejection = pickle.load(process.stdout)
            return result
        except (EOFError, OSError, pickle.UnpicklingError):
            log.warning("the image decoder died on %s (exit code %s)", filename, _stop(process))
            return DECODER_CRASHED


def _stop(process: subprocess.Popen[bytes]) -> int | None:
    """End a decoder: closing its input ends its loop; one that does not stop in time is killed."""
    with contextlib.suppress(OSError):
        if process.stdin is not None:
            process.stdin.close()
    try:
        return process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        return process.wait()


class Decoders:
    """An ingest job's decoders: the pool, started on first use with as many processes as the work needs, and
    the decodes begun early (while zips are still being expanded, so the cores are not idle meanwhile), each
    held until its file's batch asks for it.

    One decoder per core: bench/ingest.py measured one more than the cores at the same ingest rate (195.0 vs
    195.8 images/s at 5,000 images) for about 46 MB more memory.
    """

    FILES_PER_DECODER = 16  # a decoder process takes ~0.5 s to start: small uploads get fewer

    def __init__(self, *, limits: ImageLimits, thumbnail_side: int, cores: int, early_limit: int) -> None:
        self.limits = limits
        self.thumbnail_side = thumbnail_side
        self.cores = cores
        self.early_limit = early_limit  # results held in memory (thumbnails): bounded, whatever the upload's size
        self._pool: DecodePool | None = None
        self._early: dict[tuple[str, str], Future[DecodedImage | Rejection]] = {}

    def __enter__(self) -> Decoders:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self._early.clear()
        if self._pool is not None:
            self._pool.__exit__(kind, error, trace)

    def start(self, files: int) -> DecodePool:
        """The pool, started for about `files` files if it is not running yet."""
        if self._pool is None:
            processes = max(1, min(self.cores, files // self.FILES_PER_DECODER))
            self._pool = DecodePool(processes=processes, limits=self.limits, thumbnail_side=self.thumbnail_side)
        return self._pool

    def decode_early(self, path: Path, sha256: str, name: str) -> None:
        """Begin decoding a file ingest will ask for later (up to `early_limit` of them)."""
        if self._pool is not None and len(self._early) < self.early_limit:
            self._early.setdefault(_key(sha256, name), self._pool.submit(path, name))

    @property
    def held(self) -> int:
        """Early decodes not asked for yet."""
        return len(self._early)

    def decode(self, path: Path, sha256: str, name: str) -> Future[DecodedImage | Rejection]:
        early = self._early.pop(_key(sha256, name), None)
        return early if early is not None else self.start(1).submit(path, name)


def _key(sha256: str, name: str) -> tuple[str, str]:
    # The decode depends on the content and, for its notes, on the name's extension only.
    return sha256, Path(name).suffix.lower()
