"""Fixtures of the dataset tests: an app on a database of its own whose ingest jobs run inline, image builders."""

from __future__ import annotations

import io
import uuid
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from PIL import Image
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from app.core.db import session_factory
from app.core.settings import Settings, get_settings
from app.models import Image as ImageRow
from app.models import Job, Upload, UploadEntry
from tests.conftest import api_client
from tests.jobs.conftest import workers  # noqa: F401  (re-exported for this folder)
from tests.jobs.inline import drain_jobs


def jpeg(color: tuple[int, int, int] | str = "red", size: tuple[int, int] = (64, 48), **params: Any) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="JPEG", **params)
    return buffer.getvalue()


def noisy_jpeg(seed: int, size: tuple[int, int] = (64, 48)) -> bytes:
    """A JPEG whose content differs with the seed (distinct sha256 and dHash)."""
    import numpy as np

    pixels = np.random.default_rng(seed).integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def zip_of(entries: Sequence[tuple[str | zipfile.ZipInfo, bytes]], *, compression: int = zipfile.ZIP_STORED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=compression) as archive:
        for name, data in entries:
            archive.writestr(name, data)
    return buffer.getvalue()


@dataclass
class Ingest:
    """An app on a fresh database (sqlite or postgres) with a reviewer and a viewer; jobs run on demand."""

    app: FastAPI
    engine: Engine
    settings: Settings
    reviewer: TestClient
    viewer: TestClient
    backend: str

    def run_jobs(self) -> list[Job]:
        return drain_jobs(self.engine)

    def create_dataset(self, name: str | None = None) -> int:
        response = self.reviewer.post("/api/datasets", json={"name": name or f"ds-{uuid.uuid4().hex[:8]}"})
        assert response.status_code == 201, response.text
        return int(response.json()["id"])

    def upload(
        self,
        dataset_id: int,
        files: Sequence[tuple[str, bytes]],
        *,
        labels_csv: bytes | None = None,
        **fields: str,
    ) -> dict[str, Any]:
        """Upload through the one-request API, run the ingest job, return the upload report."""
        parts: list[tuple[str, tuple[str, bytes, str]]] = [
            ("files", (name, data, "application/octet-stream")) for name, data in files
        ]
        if labels_csv is not None:
            parts.append(("labels_csv", ("labels.csv", labels_csv, "text/csv")))
        response = self.reviewer.post(f"/api/datasets/{dataset_id}/uploads", files=parts, data=fields)
        assert response.status_code == 202, response.text
        self.run_jobs()
        report = self.reviewer.get(f"/api/uploads/{response.json()['upload_id']}")
        assert report.status_code == 200
        return dict(report.json())


def stored_blobs(blob_dir: Path) -> set[str]:
    """The sha256 names of the files in a blob store (sharded as ab/cd/abcd…), its temporary folder aside."""
    return {path.name for path in blob_dir.glob("??/??/*") if path.is_file()}


def orphan_blobs(engine: Engine, blob_dir: Path) -> set[str]:
    """Blob files nothing refers to: not an image or its thumbnail, not an upload's labels CSV, not a file of an
    upload still open or ingesting (those are referred to by their upload entries)."""
    with Session(engine) as session:
        referenced = set(session.scalars(select(ImageRow.sha256)))
        referenced |= {sha for sha in session.scalars(select(ImageRow.thumb_sha256)) if sha}
        referenced |= {sha for sha in session.scalars(select(Upload.labels_csv_sha256)) if sha}
        unfinished = select(UploadEntry.sha256).join(Upload, Upload.id == UploadEntry.upload_id)
        unfinished = unfinished.where(Upload.status.in_(["open", "queued", "ingesting"]))
        referenced |= {sha for sha in session.scalars(unfinished) if sha}
    return stored_blobs(blob_dir) - referenced


def reasons(report: dict[str, Any]) -> dict[str, str]:
    """Rejected file name -> reason, as the upload report shows them."""
    return {item["name"]: item["reason"] for item in report["rejected"]}


@pytest.fixture
def ingest(fresh_database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Ingest]:  # type: ignore[no-untyped-def]
    from app.auth import service as auth
    from app.web.app import create_app

    monkeypatch.setenv("ERRORBOOK_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("ERRORBOOK_DATABASE_URL", fresh_database.url)
    get_settings.cache_clear()  # the inline job runner reads the settings from the environment
    settings = get_settings()
    app = create_app(settings, session_maker=session_factory(fresh_database.engine))
    with Session(fresh_database.engine) as session:
        tokens = {}
        for role in ("reviewer", "viewer"):
            user = auth.create_user(
                session, name=f"{role}-{uuid.uuid4().hex[:6]}", role=role, password=f"{role}-pw-1234"
            )
            tokens[role] = auth.create_token(session, user=user, name="test")[1]
        session.commit()
    try:
        with api_client(app, tokens["reviewer"]) as reviewer, api_client(app, tokens["viewer"]) as viewer:
            yield Ingest(app, fresh_database.engine, settings, reviewer, viewer, fresh_database.backend)
    finally:
        get_settings.cache_clear()
