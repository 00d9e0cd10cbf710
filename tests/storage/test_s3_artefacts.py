"""Artefacts by key on both backends (the S3 one against the S3-protocol test server): the same behaviour, and
on the object store the files live beside the blobs, where the garbage collector never takes them."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest

from app.core.artefacts import ArtefactStore
from app.core.storage import BlobStore, LocalBlobStore
from app.storage.s3 import S3BlobStore, S3Location
from tests.s3_server import S3Server, set_credentials


@pytest.fixture(params=["local", "s3"])
def blobs(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[BlobStore]:
    if request.param == "local":
        yield LocalBlobStore(tmp_path / "data" / "blobs")
        return
    server: S3Server = request.getfixturevalue("server")
    set_credentials(server, monkeypatch)
    bucket = f"art-{hashlib.sha1(str(tmp_path).encode()).hexdigest()[:12]}"
    boto3.client("s3", endpoint_url=server.endpoint_url).create_bucket(Bucket=bucket)
    location = S3Location(bucket=bucket, prefix="eb", endpoint_url=server.endpoint_url)
    yield S3BlobStore(location, cache_dir=tmp_path / "host-a" / "s3-blobs")


def _other_host(blobs: BlobStore, tmp_path: Path) -> ArtefactStore:
    """The same store seen from a second host: its own (empty) caches."""
    if isinstance(blobs, S3BlobStore):
        return S3BlobStore(blobs.location, cache_dir=tmp_path / "host-b" / "s3-blobs").artefacts
    return blobs.artefacts


def _file(folder: Path, name: str, data: bytes) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_bytes(data)
    return folder / name


def test_put_get_open_delete_by_key(blobs: BlobStore, tmp_path: Path) -> None:
    artefacts = blobs.artefacts
    artefacts.put_file("runs/1/model.onnx", _file(tmp_path / "scratch", "model.onnx", b"onnx bytes"))
    artefacts.put_bytes("runs/1/labels.json", b'["a", "b"]')
    other = _other_host(blobs, tmp_path)
    assert other.exists("runs/1/model.onnx") and not other.exists("runs/2/model.onnx")
    assert other.local_path("runs/1/model.onnx").read_bytes() == b"onnx bytes"
    assert other.get_bytes("runs/1/labels.json") == b'["a", "b"]'
    with other.open("runs/1/labels.json") as fh:
        assert fh.read() == b'["a", "b"]'
    assert sorted(item.key for item in other.iter("runs")) == ["runs/1/labels.json", "runs/1/model.onnx"]
    other.delete("runs/1/labels.json")
    assert not artefacts.exists("runs/1/labels.json")
    with pytest.raises(FileNotFoundError):
        artefacts.get_bytes("runs/1/labels.json")
    assert artefacts.delete_prefix("runs/1") == 1
    assert list(artefacts.iter("")) == []


def test_a_changing_folder_is_mirrored_and_published(blobs: BlobStore, tmp_path: Path) -> None:
    prefix = "embeddings/dataset-1/backbone"
    writer = blobs.artefacts.mirror(prefix, tmp_path / "worker-scratch")
    (writer / "ids.i64").write_bytes(b"1" * 8)
    (writer / "vectors.f16").write_bytes(b"v" * 16)
    blobs.artefacts.publish(prefix, writer, order=("vectors.f16", "ids.i64"))
    reader = _other_host(blobs, tmp_path)
    folder = reader.mirror(prefix)
    assert (folder / "ids.i64").read_bytes() == b"1" * 8
    with (writer / "ids.i64").open("ab") as fh:  # the next build appends a row
        fh.write(b"2" * 8)
    blobs.artefacts.publish(prefix, writer)
    assert (reader.mirror(prefix) / "ids.i64").read_bytes() == b"1" * 8 + b"2" * 8
    assert (reader.mirror(prefix) / "vectors.f16").read_bytes() == b"v" * 16


def test_gc_keeps_recorded_run_files_and_takes_what_ended_jobs_left(  # type: ignore[no-untyped-def]
    blobs: BlobStore, session_maker
) -> None:
    from app.storage.service import collect_garbage
    from tests.factories import make_run

    with session_maker() as session:
        fixture = make_run(session, sizes={"train": 2, "dev": 2}, seed=3)
        run_id = fixture.run.id
        fixture.run.model_path = f"runs/{run_id}"
        session.commit()
    sha = "ab" * 32  # an artefact named like a digest is still not a blob
    blobs.artefacts.put_bytes(f"runs/{run_id}/{sha}", b"x")
    blobs.artefacts.put_bytes(f"runs/{run_id}/model.pt", b"weights")
    blobs.artefacts.put_bytes("runs/999999/model.pt", b"a run that was never recorded")
    blobs.artefacts.put_bytes("jobs/999998/training_state.pt", b"the checkpoint of a job that is gone")
    unused = blobs.put_bytes(b"a blob nobody names")
    young = collect_garbage(sessions=session_maker, blobs=blobs, grace_seconds=3600)
    assert (young.deleted, young.artefacts_deleted) == (0, 0)  # all just written: spared
    result = collect_garbage(sessions=session_maker, blobs=blobs, grace_seconds=-5)
    assert (result.blobs, result.deleted, result.artefacts_deleted) == (1, 1, 2) and not blobs.exists(unused)
    assert blobs.artefacts.get_bytes(f"runs/{run_id}/model.pt") == b"weights"
    assert blobs.artefacts.exists(f"runs/{run_id}/{sha}")
    assert not blobs.artefacts.exists("runs/999999/model.pt")
    assert not blobs.artefacts.exists("jobs/999998/training_state.pt")
