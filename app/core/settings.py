"""All configuration in one place, read from ``ERRORBOOK_*`` environment variables."""

from __future__ import annotations

import contextlib
import os
import secrets
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

PROJECT_ROOT = Path(__file__).resolve().parents[2]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="ERRORBOOK_", extra="ignore")

    data_dir: Path = Path("errorbook-data")
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
    training_queue: str = "gpu"
    # Split assignments written per transaction (a crash mid-write is undone by the retry).
    split_write_rows: int = 100_000

    # Auth.
    session_days: int = 14
    secure_cookies: bool = False
    login_attempts_per_minute: int = 10

    # Request limits (bytes / counts), refused early. File bodies (multipart uploads, raw chunks) may be as
    # large as max_request_bytes; every other body (JSON, urlencoded forms) only max_json_bytes, since it is
    # parsed in memory.
    max_request_bytes: int = 4 * 1024**3
    max_json_bytes: int = 16 * 1024**2
    max_upload_files: int = 2_000
    max_form_fields: int = 100
    max_part_bytes: int = 1024 * 1024

    # Image validation.
    max_image_pixels: int = 64_000_000
    min_image_side: int = 16
    thumbnail_side: int = 256

    torch_threads: int = Field(default_factory=lambda: os.cpu_count() or 1)
    # Arithmetic of frozen-backbone feature extraction (linear runs): bfloat16 is faster only on CPUs with native
    # bf16 (AVX512-BF16, AMX) or GPUs, and moves features slightly; see app/ml/features.py.
    feature_precision: Literal["float32", "bfloat16"] = "float32"

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
