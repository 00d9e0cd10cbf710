"""`errorbook storage verify` names every image whose blob or thumbnail is missing or holds other bytes."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from sqlalchemy.orm import Session, sessionmaker
from typer.testing import CliRunner

from app.cli import cli
from app.core.settings import get_settings
from app.core.storage import LocalBlobStore
from app.models import Dataset, Image, Label
from app.storage.verify import BlobProblem, VerifyResult, verify_blobs


def _images(session: Session, blobs: LocalBlobStore, count: int) -> list[Image]:
    dataset = Dataset(name=f"verify-{count}")
    session.add(dataset)
    session.flush()
    label = Label(dataset_id=dataset.id, name="cat")
    session.add(label)
    session.flush()
    images = []
    for index in range(count):
        sha = blobs.put_bytes(f"image {index}".encode())
        thumb = blobs.put_bytes(f"thumb {index}".encode())
        images.append(
            Image(dataset_id=dataset.id, sha256=sha, thumb_sha256=thumb, filename=f"{index}.jpg", label_id=label.id)
        )
    session.add_all(images)
    session.commit()
    return images


def _damage(blobs: LocalBlobStore, images: list[Image]) -> None:
    blobs.path(images[1].sha256).unlink()  # lost
    blobs.path(images[2].thumb_sha256 or "").write_bytes(b"other bytes")  # rotted


def test_verify_names_missing_and_rotted_objects(session_maker: sessionmaker[Session], tmp_path: Path) -> None:
    blobs = LocalBlobStore(tmp_path / "blobs")
    with session_maker() as session:
        images = _images(session, blobs, 4)
    _damage(blobs, images)
    quick = list(verify_blobs(sessions=session_maker, blobs=blobs))
    assert [(p.image_id, p.kind, p.problem) for p in quick if isinstance(p, BlobProblem)] == [
        (images[1].id, "image", "missing")
    ]
    full = list(verify_blobs(sessions=session_maker, blobs=blobs, check_digests=True))
    problems = [(p.image_id, p.kind, p.problem) for p in full if isinstance(p, BlobProblem)]
    assert problems == [(images[1].id, "image", "missing"), (images[2].id, "thumbnail", "digest mismatch")]
    totals = full[-1]
    assert isinstance(totals, VerifyResult) and totals.images >= 4 and totals.objects >= 8


def test_verify_command_exits_1_and_prints_names(
    fresh_database,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,  # type: ignore[no-untyped-def]
) -> None:
    monkeypatch.setenv("ERRORBOOK_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("ERRORBOOK_DATABASE_URL", fresh_database.url)
    get_settings.cache_clear()
    blobs = LocalBlobStore(get_settings().blob_dir)
    with Session(fresh_database.engine, expire_on_commit=False) as session:
        images = _images(session, blobs, 3)
    runner = CliRunner()
    healthy = runner.invoke(cli, ["storage", "verify", "--digests"])
    assert healthy.exit_code == 0, healthy.output
    assert "3 images, 6 objects checked; 0 problems" in healthy.output
    _damage(blobs, images)
    broken = runner.invoke(cli, ["storage", "verify", "--digests"])
    assert broken.exit_code == 1
    assert f"image {images[1].id} ('1.jpg'" in broken.output and "missing" in broken.output
    assert f"image {images[2].id} ('2.jpg'" in broken.output and "digest mismatch" in broken.output
    assert hashlib.sha256(b"image 0").hexdigest()[:12] not in broken.output  # healthy ones are not listed
    get_settings.cache_clear()
