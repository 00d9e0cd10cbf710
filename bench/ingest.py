"""Ingest figures: a zip of varied JPEGs through the real upload path, against the raw Pillow rate.

    python bench/ingest.py                      # 1,000 then 5,000 images (640x480, every 10th 1600x1200)
    python bench/ingest.py --sizes 5000

For each size: build the zip (cached under the temp dir), start a real ``errorbook serve`` (embedded worker)
on SQLite in a fresh data dir, POST the zip to ``/api/datasets/{id}/uploads`` streamed from disk, wait for the
ingest job, and sample the RSS of every process it started (server, job runner, decoder processes) every
0.2 s. In the same run it measures the raw rate of Pillow decode + thumbnail on the same images, in one process
and in one process per core, so the ingest rate can be compared on the same machine under the same load; and,
for honesty about where the speed comes from, the same per-core rate with JPEG draft (DCT-scaled) decoding, which
ingest itself uses.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import psutil
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parents[1]
CACHE = Path(tempfile.gettempdir()) / "errorbook-bench-ingest"
CLASSES = 10
RAW_SAMPLE = 600


def varied_jpeg(rng: np.random.Generator, index: int) -> bytes:
    """A photo-like JPEG: a smooth colour field, a few shapes, mild sensor noise; every 10th is 1600x1200."""
    width, height = (1600, 1200) if index % 10 == 0 else (640, 480)
    field_ = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)).resize(
        (width, height), Image.Resampling.BICUBIC
    )
    draw = ImageDraw.Draw(field_)
    for _ in range(int(rng.integers(2, 7))):
        x0, y0 = int(rng.integers(0, width - 40)), int(rng.integers(0, height - 40))
        box = [x0, y0, x0 + int(rng.integers(20, width // 3)), y0 + int(rng.integers(20, height // 3))]
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(box, fill=colour)
    pixels = np.asarray(field_, dtype=np.int16) + rng.normal(0, 5, (height, width, 3)).astype(np.int16)
    buffer = io.BytesIO()
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(buffer, "JPEG", quality=int(rng.integers(75, 93)))
    return buffer.getvalue()


def build_zip(count: int) -> Path:
    path = CACHE / f"varied-{count}.zip"
    if path.exists():
        return path
    CACHE.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(count)
    partial = path.with_suffix(".partial")
    with zipfile.ZipFile(partial, "w", compression=zipfile.ZIP_STORED) as archive:
        for index in range(count):
            subset = "val" if index % 5 == 0 else "train"
            archive.writestr(f"photos/{subset}/class_{index % CLASSES}/img_{index:06d}.jpg", varied_jpeg(rng, index))
    partial.rename(path)
    return path


def _decode_and_thumbnail(data: bytes, draft: bool = False) -> int:
    decoded = Image.open(io.BytesIO(data))
    if draft:  # what ingest does: the JPEG decoded at the smallest DCT scale that still covers the thumbnail
        scale = 256 / max(decoded.size)
        decoded.draft(decoded.mode, (int(decoded.width * scale + 0.999), int(decoded.height * scale + 0.999)))
    decoded.load()
    image = decoded.convert("RGB")
    image.thumbnail((256, 256), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=85)
    return len(buffer.getvalue())


def raw_rates(archive: Path) -> dict[str, float]:
    """Images/s of Pillow decode + thumbnail + JPEG encode, in-memory, one process and one per core."""
    with zipfile.ZipFile(archive) as zipped:
        names = zipped.namelist()[:RAW_SAMPLE]
        sample = [zipped.read(name) for name in names]
    started = time.perf_counter()
    for data in sample:
        _decode_and_thumbnail(data)
    one = len(sample) / (time.perf_counter() - started)
    cores = os.cpu_count() or 1
    with ProcessPoolExecutor(cores) as pool:
        list(pool.map(_decode_and_thumbnail, sample[:cores]))  # start the workers before timing
        started = time.perf_counter()
        list(pool.map(_decode_and_thumbnail, sample, chunksize=8))
        every = len(sample) / (time.perf_counter() - started)
        started = time.perf_counter()
        list(pool.map(_decode_draft_and_thumbnail, sample, chunksize=8))
        drafted = len(sample) / (time.perf_counter() - started)
    return {"raw_one_process": one, f"raw_{cores}_processes": every, f"raw_draft_{cores}_processes": drafted}


def _decode_draft_and_thumbnail(data: bytes) -> int:
    return _decode_and_thumbnail(data, draft=True)


@dataclass
class MemorySampler:
    """Peak RSS of a process tree (total and per kind of process), sampled on a thread."""

    root_pid: int
    interval: float = 0.2
    peak_total: int = 0
    peak_by_kind: dict[str, int] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)

    @staticmethod
    def kind(process: psutil.Process, root_pid: int) -> str:
        if process.pid == root_pid:
            return "server (+embedded worker)"
        command = " ".join(process.cmdline())
        if "serve_decodes" in command:
            return "decoders"
        if "multiprocessing" in command:
            return "job runner"
        return "other"

    def snapshot(self) -> dict[str, int]:
        """RSS now, summed per kind of process."""
        root = psutil.Process(self.root_pid)
        by_kind: dict[str, int] = {}
        for process in [root, *root.children(recursive=True)]:
            try:
                kind = self.kind(process, self.root_pid)
                by_kind[kind] = by_kind.get(kind, 0) + process.memory_info().rss
            except psutil.NoSuchProcess:
                continue
        return by_kind

    def run(self) -> None:
        while not self._stop.is_set():
            try:
                by_kind = self.snapshot()
            except psutil.NoSuchProcess:
                return
            self.peak_total = max(self.peak_total, sum(by_kind.values()))
            for kind, rss in by_kind.items():
                self.peak_by_kind[kind] = max(self.peak_by_kind.get(kind, 0), rss)
            time.sleep(self.interval)

    def start(self) -> threading.Thread:
        thread = threading.Thread(target=self.run, daemon=True)
        thread.start()
        return thread

    def stop(self) -> None:
        self._stop.set()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def ingest_through_the_server(archive: Path, count: int) -> dict[str, object]:
    data_dir = Path(tempfile.mkdtemp(prefix="errorbook-bench-"))
    env = {key: value for key, value in os.environ.items() if not key.startswith("ERRORBOOK_")}
    env["ERRORBOOK_DATA_DIR"] = str(data_dir)
    added = subprocess.run(
        [sys.executable, "-m", "app.cli", "users", "add", "bench", "--role", "reviewer"],
        cwd=ROOT, env=env, check=True, capture_output=True, text=True,
    )  # fmt: skip
    token = added.stdout.strip().splitlines()[-1]
    port = _free_port()
    log = (data_dir / "serve.log").open("wb")
    server = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "serve", "--host", "127.0.0.1", "--port", str(port)],
        cwd=ROOT, env=env, stdout=log, stderr=log,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    client = httpx.Client(base_url=base, headers={"authorization": f"Bearer {token}"}, timeout=600)
    try:
        for _ in range(600):
            try:
                if client.get("/healthz").status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        time.sleep(3)  # the embedded worker starts its job runner: let it settle before measuring
        sampler = MemorySampler(server.pid)
        idle = sampler.snapshot()
        sampler.start()
        dataset = client.post("/api/datasets", json={"name": f"bench-{count}"}).json()["id"]
        started = time.perf_counter()
        with archive.open("rb") as handle:
            response = client.post(f"/api/datasets/{dataset}/uploads", files={"files": (archive.name, handle)})
        response.raise_for_status()
        uploaded = time.perf_counter()
        upload_id = response.json()["upload_id"]
        while True:  # done, and the job has recorded its result (a moment after the upload is marked done)
            report = client.get(f"/api/uploads/{upload_id}", params={"limit": 1}).json()
            if report["status"] in ("failed", "cancelled") or (report["status"] == "done" and report["ingest_seconds"]):
                break
            time.sleep(0.25)
        finished = time.perf_counter()
        sampler.stop()
    finally:
        server.terminate()
        server.wait(60)
        log.close()
    if report["status"] != "done":
        raise SystemExit(f"the ingest ended {report['status']}: {report['job_error']}; see {data_dir / 'serve.log'}")
    seconds = report["ingest_seconds"]
    job_seconds = sum(seconds.values())
    return {
        "images": count,
        "zip_mb": round(archive.stat().st_size / 2**20, 1),
        "status": report["status"],
        "accepted": report["accepted"],
        "upload_request_s": round(uploaded - started, 2),
        "job_phases_s": seconds,
        "job_s": round(job_seconds, 2),
        "end_to_end_s": round(finished - started, 2),
        "ingest_images_per_s": round(count / job_seconds, 1),
        "end_to_end_images_per_s": round(count / (finished - started), 1),
        "idle_rss_mb_by_process": {kind: round(rss / 2**20, 1) for kind, rss in sorted(idle.items())},
        "peak_rss_mb_total": round(sampler.peak_total / 2**20, 1),
        "peak_rss_mb_by_process": {kind: round(rss / 2**20, 1) for kind, rss in sorted(sampler.peak_by_kind.items())},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1000,5000", help="comma-separated image counts")
    args = parser.parse_args()
    print(f"cpus: {os.cpu_count()}, load average at start: {os.getloadavg()}")
    for count in (int(size) for size in args.sizes.split(",")):
        archive = build_zip(count)
        before = raw_rates(archive)
        figures = ingest_through_the_server(archive, count)
        after = raw_rates(archive)  # the machine's load drifts: measure the raw rate on both sides of the ingest
        raw = {key: (before[key] + after[key]) / 2 for key in before}
        figures.update({key: round(value, 1) for key, value in raw.items()})
        figures["raw_one_process_before_after"] = [
            round(before["raw_one_process"], 1),
            round(after["raw_one_process"], 1),
        ]
        rate = float(figures["ingest_images_per_s"])  # type: ignore[arg-type]
        figures["ingest_vs_raw"] = {key: round(rate / value, 2) for key, value in raw.items()}
        figures["load_average_after"] = [round(value, 1) for value in os.getloadavg()]
        print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
