"""All configuration in one place, read from ``ERRORBOOK_*`` environment variables."""

from __future__ import annotations

import contextlib
import os
import secrets
from functools import lru_cache
from pathlib import Path
from typing import Literal

import platformdirs
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def default_data_dir() -> Path:
    """The user's data directory (~/.local/share/errorbook on Linux, as Jupyter and Label Studio do), so every
    command finds the same data whichever folder it is started from."""
    return Path(platformdirs.user_data_dir("errorbook", appauthor=False))


def default_state_dir() -> Path:
    return Path(platformdirs.user_state_dir("errorbook", appauthor=False))


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="ERRORBOOK_", extra="ignore")

    data_dir: Path = Field(default_factory=default_data_dir)
    # Where a running server leaves its address for `errorbook demo` (see app/core/running_server.py).
    state_dir: Path = Field(default_factory=default_state_dir)
    database_url: str | None = None
    host: str = "127.0.0.1"
    port: int = 8000
    base_url: str | None = None

    # Jobs: lease length, heartbeat and reaper cadence, retry budget.
    job_lease_seconds: float = 30.0
    job_heartbeat_seconds: float = 5.0
    job_poll_seconds: float = 0.5
    job_reaper_seconds: float = 5.0
    job_max_attempts: int = 3
    job_cancel_grace_seconds: float = 10.0
    job_shutdown_grace_seconds: float = 60.0
    job_memory_limit_mb: int = 12_000
    # Temp files of blob writes older than this are a killed writer's; each worker sweeps them when it starts.
    blob_temp_max_age_hours: float = 24.0
    # Blobs no row refers to are deleted by `errorbook storage gc` and by a worker every blob_gc_every_hours
    # (0: never), once older than blob_gc_grace_hours (a younger one may belong to an upload in flight).
    blob_gc_every_hours: float = 6.0
    blob_gc_grace_hours: float = 1.0
    # A failed or cancelled upload keeps its files this long for a retry; then the sweep discards it.
    upload_retry_days: float = 7.0
    training_queue: str = "gpu"
    # A run or embeddings job over more images than this extracts its features in shard jobs of this many images,
    # which any worker takes (0: never shard).
    extract_shard_size: int = Field(default=5000, ge=0)
    # Split assignments written per transaction (a crash mid-write is undone by the retry).
    split_write_rows: int = 100_000

    # Auth.
    session_days: int = 14
    secure_cookies: bool = False
    login_attempts_per_minute: int = 10
    # Failed logins of one user name from anywhere, per LOGIN_NAME_WINDOW, before each further try waits (a
    # doubling delay, up to login_max_delay_seconds); a browser that logged in as that user before skips it.
    login_failures_per_name: int = 20
    login_max_delay_seconds: int = 300
    # Addresses (comma-separated IPs, or "*") of reverse proxies whose X-Forwarded-For/-Proto are believed; by
    # default none, so a client cannot choose the address the login limits count it under.
    trusted_proxies: str = ""

    # Request limits (bytes / counts), refused early. Bodies of the upload routes (multipart uploads, raw
    # chunks) may be as large as max_request_bytes; any other API body only max_json_bytes and a page form
    # max_form_bytes, whatever its content type, since those are parsed in memory.
    max_request_bytes: int = 4 * 1024**3
    max_json_bytes: int = 16 * 1024**2
    max_form_bytes: int = 1024**2
    # What the zips of one upload may expand to, all together (members are also checked one by one).
    max_upload_expanded_bytes: int = 4 * 1024**3
    max_upload_files: int = 2_000
    max_form_fields: int = 100
    max_part_bytes: int = 1024 * 1024

    # Where image blobs live: "local" (under data_dir, the default) or "s3" (an S3-compatible object store shared
    # by every web and worker host; credentials come the SDK's usual way: AWS_* variables, profiles, roles).
    storage: Literal["local", "s3"] = "local"
    s3_endpoint_url: str | None = None
    s3_bucket: str = ""
    s3_prefix: str = "errorbook"
    s3_region: str | None = None
    # How the S3 backend serves images: "stream" through the app (from the host's read-through cache) or
    # "presigned": a short-lived URL of the object, issued after the user is checked (the browser then reads
    # the store directly; the store must be reachable from browsers).
    s3_serve: Literal["stream", "presigned"] = "stream"

    # Image validation.
    max_image_pixels: int = 64_000_000
    min_image_side: int = 16
    thumbnail_side: int = 256

    torch_threads: int = Field(default_factory=lambda: os.cpu_count() or 1)
    # Arithmetic of frozen-backbone feature extraction (linear runs): bfloat16 is faster only on CPUs with native
    # bf16 (AVX512-BF16, AMX) or GPUs, and moves features slightly; see app/ml/features.py.
    feature_precision: Literal["float32", "bfloat16"] = "float32"
    # Where frozen backbones run (linear runs' features, their predictions, the predict endpoint): auto is ONNX
    # Runtime on a CPU (exported once, verified against PyTorch) and PyTorch on CUDA unless onnxruntime's CUDA
    # provider is installed; see app/ml/runtime.py.
    inference_runtime: Literal["auto", "onnxruntime", "torch"] = "auto"
    # Images one POST /api/runs/{id}/predict may carry; more are refused with 413.
    predict_max_files: int = Field(default=64, ge=1)

    def proxy_options(self) -> tuple[bool, str]:
        """(proxy_headers, forwarded_allow_ips) for uvicorn: X-Forwarded-For/-Proto are believed only from the
        configured proxies. (Uvicorn's own default believes them from 127.0.0.1, so any local client, or a
        proxy passing the header through, could choose the address the login limits count it under.)"""
        proxies = [address.strip() for address in self.trusted_proxies.split(",") if address.strip()]
        return bool(proxies), ",".join(proxies)

    @property
    def resolved_data_dir(self) -> Path:
        return self.data_dir.expanduser().resolve()

    @property
    def sqlalchemy_url(self) -> str:
        if self.database_url:
            return normalise_database_url(self.database_url)
        return f"sqlite:///{self.resolved_data_dir / 'errorbook.db'}"

    @property
    def blob_dir(self) -> Path:
        return self.resolved_data_dir / "blobs"

    @property
    def staging_dir(self) -> Path:
        return self.resolved_data_dir / "staging"

    @property
    def cache_dir(self) -> Path:
        return self.resolved_data_dir / "cache"

    @property
    def onnx_cache_dir(self) -> Path:
        return self.cache_dir / "onnx"

    @property
    def embeddings_dir(self) -> Path:
        return self.resolved_data_dir / "embeddings"

    @property
    def split_input_dir(self) -> Path:
        return self.cache_dir / "split-inputs"

    def secret_key(self) -> str:
        """The signing key, generated on first use and kept (0600) in the data dir, never logged."""
        path = self.resolved_data_dir / "secret_key"
        if path.exists():
            return path.read_text().strip()
        path.parent.mkdir(parents=True, exist_ok=True)
        key = secrets.token_urlsafe(48)
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(key)
        with contextlib.suppress(FileExistsError):  # another process won the race: use theirs
            os.link(tmp, path)
        tmp.unlink(missing_ok=True)
        return path.read_text().strip()


def normalise_database_url(url: str) -> str:
    """Accept plain ``postgresql://`` URLs and route them to psycopg 3."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


@lru_cache
def get_settings() -> Settings:
    return Settings()
