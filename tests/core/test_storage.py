from __future__ import annotations

import hashlib
import io
import os
import stat

import pytest

from app.core.settings import Settings
from app.core.storage import LocalBlobStore, atomic_write_bytes


def test_blobs_are_content_addressed_and_sharded(tmp_path) -> None:
    store = LocalBlobStore(tmp_path / "blobs")
    digest = store.put_bytes(b"hello")
    assert digest == hashlib.sha256(b"hello").hexdigest()
    assert store.path(digest).relative_to(tmp_path / "blobs").parts[:2] == (digest[:2], digest[2:4])
    assert store.put_file(io.BytesIO(b"hello")) == digest  # same content, same blob
    with store.open(digest) as fh:
        assert fh.read() == b"hello"


def test_a_failed_write_leaves_no_blob_and_no_temp_file(tmp_path) -> None:
    store = LocalBlobStore(tmp_path / "blobs")

    class Exploding(io.RawIOBase):
        def __init__(self) -> None:
            self.calls = 0

        def read(self, size: int = -1) -> bytes:
            self.calls += 1
            if self.calls > 2:
                raise OSError(28, "No space left on device")
            return b"x" * 1024

    with pytest.raises(OSError, match="No space"):
        store.put_file(Exploding())  # type: ignore[arg-type]
    files = [p for p in (tmp_path / "blobs").rglob("*") if p.is_file()]
    assert files == []


def test_blob_digest_must_be_hex(tmp_path) -> None:
    store = LocalBlobStore(tmp_path / "blobs")
    with pytest.raises(ValueError):
        store.path("../../etc/passwd")


def test_atomic_write_replaces_whole_file(tmp_path) -> None:
    target = tmp_path / "out" / "model.pt"
    atomic_write_bytes(target, b"one")
    atomic_write_bytes(target, b"two")
    assert target.read_bytes() == b"two"
    assert [p.name for p in target.parent.iterdir()] == ["model.pt"]


def test_secret_key_is_generated_once_and_private(tmp_path) -> None:
    settings = Settings(data_dir=tmp_path)
    first = settings.secret_key()
    assert first == Settings(data_dir=tmp_path).secret_key()
    mode = stat.S_IMODE(os.stat(tmp_path / "secret_key").st_mode)
    assert mode == 0o600


def test_sweeping_removes_only_old_temp_files(tmp_path) -> None:
    store = LocalBlobStore(tmp_path / "blobs")
    kept_blob = store.put_bytes(b"published")
    abandoned, in_progress = tmp_path / "blobs" / "tmp" / "old", tmp_path / "blobs" / "tmp" / "young"
    abandoned.write_bytes(b"half a file")
    in_progress.write_bytes(b"still streaming")
    two_days_ago = abandoned.stat().st_mtime - 2 * 86400
    os.utime(abandoned, (two_days_ago, two_days_ago))
    assert store.sweep_abandoned(older_than_seconds=86400) == 1
    assert not abandoned.exists() and in_progress.exists() and store.exists(kept_blob)
