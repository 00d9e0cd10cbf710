"""The S3 blob store against a real S3-protocol server (moto's standalone server on loopback)."""

from __future__ import annotations

import hashlib
import io
import logging
from pathlib import Path

import boto3
import pytest

from app.storage.s3 import ObjectStoreUnavailable, S3BlobStore, S3Location, make_client
from tests.s3_server import S3Server, set_credentials


@pytest.fixture
def store(server: S3Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> S3BlobStore:
    set_credentials(server, monkeypatch)
    bucket = f"eb-{tmp_path.name.lower().replace('_', '-')[-40:]}"
    boto3.client("s3", endpoint_url=server.endpoint_url).create_bucket(Bucket=bucket)
    location = S3Location(bucket=bucket, prefix="blobs", endpoint_url=server.endpoint_url)
    return S3BlobStore(location, cache_dir=tmp_path / "cache")


def test_put_then_read_back_by_digest(store: S3BlobStore) -> None:
    data = b"\xff\xd8 not really a jpeg" * 1000
    digest = store.put_file(io.BytesIO(data))
    assert digest == hashlib.sha256(data).hexdigest()
    assert store.exists(digest)
    # The object lives under prefix/ab/cd/<digest>, as the local store's folders.
    head = store.client.head_object(Bucket=store.location.bucket, Key=f"blobs/{digest[:2]}/{digest[2:4]}/{digest}")
    assert head["ContentLength"] == len(data)
    with store.open(digest) as fh:
        assert fh.read() == data
    assert store.put_bytes(data) == digest  # storing again is a no-op under the same key
    assert [blob.sha256 for blob in store.iter_blobs()] == [digest]


def test_delete_removes_object_and_cached_copy(store: S3BlobStore) -> None:
    digest = store.put_bytes(b"to be deleted")
    cached = store.path(digest)
    assert cached.read_bytes() == b"to be deleted"
    store.delete(digest)
    assert not store.exists(digest)
    assert not cached.exists()


def test_a_missing_object_is_not_reported_present(store: S3BlobStore) -> None:
    assert not store.exists("0" * 64)
    with pytest.raises(ValueError):
        store.exists("not-a-digest")


def test_presigned_url_serves_the_object(store: S3BlobStore) -> None:
    import urllib.request

    digest = store.put_bytes(b"presigned bytes")
    with urllib.request.urlopen(store.presigned_url(digest, seconds=60), timeout=10) as response:
        assert response.read() == b"presigned bytes"


def test_unreachable_store_refuses_with_a_clear_reason(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "k")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s")
    with socket_closed_port() as port:
        location = S3Location(bucket="b", endpoint_url=f"http://127.0.0.1:{port}")
        store = S3BlobStore(location, cache_dir=tmp_path)
        with pytest.raises(ObjectStoreUnavailable, match=r"not usable: cannot connect to http://127\.0\.0\.1"):
            store.check_reachable()


def test_wrong_bucket_and_no_secret_in_the_message(
    server: S3Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    set_credentials(server, monkeypatch)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "super-secret-value")
    location = S3Location(bucket="no-such-bucket-here", endpoint_url=server.endpoint_url)
    store = S3BlobStore(location, cache_dir=tmp_path, client=make_client(location))
    caplog.set_level(logging.DEBUG)
    with pytest.raises(ObjectStoreUnavailable) as raised:
        store.check_reachable()
    assert "does not exist" in str(raised.value)
    assert "super-secret-value" not in str(raised.value)
    assert "super-secret-value" not in caplog.text


class socket_closed_port:
    """A loopback port nothing listens on."""

    def __enter__(self) -> int:
        import socket

        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            return int(sock.getsockname()[1])

    def __exit__(self, *args: object) -> None:
        return None


def test_settings_choose_the_backend(server: S3Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from app.core.errors import Invalid
    from app.core.settings import Settings
    from app.core.storage import LocalBlobStore
    from app.storage.backends import blob_store

    assert isinstance(blob_store(Settings(data_dir=tmp_path)), LocalBlobStore)
    with pytest.raises(Invalid, match="ERRORBOOK_S3_BUCKET"):
        blob_store(Settings(data_dir=tmp_path, storage="s3"))
    set_credentials(server, monkeypatch)
    chosen = blob_store(Settings(data_dir=tmp_path, storage="s3", s3_bucket="any", s3_endpoint_url=server.endpoint_url))
    assert isinstance(chosen, S3BlobStore)
    assert chosen.key("a" * 64) == f"errorbook/aa/aa/{'a' * 64}"


def test_migrate_copies_verifies_and_resumes(store: S3BlobStore, tmp_path: Path) -> None:
    from app.core.storage import LocalBlobStore
    from app.storage.migrate import migrate_blobs

    local = LocalBlobStore(tmp_path / "local")
    digests = [local.put_bytes(f"blob {i}".encode()) for i in range(5)]
    store.put_bytes(b"blob 0")  # copied by an earlier, interrupted run
    rotten = local.put_bytes(b"will rot")
    local.path(rotten).write_bytes(b"rotted")
    *_, (seen, result) = migrate_blobs(source=local, target=store)
    assert seen == 6 and result.already_there == 1 and result.copied == 4 and result.corrupt == [rotten]
    assert all(store.exists(sha) for sha in digests) and not store.exists(rotten)
    # Nothing but the five good blobs is in the bucket (the rotten bytes were not left under another name).
    assert sorted(blob.sha256 for blob in store.iter_blobs()) == sorted(digests)
    *_, (_, again) = migrate_blobs(source=local, target=store)
    assert again.copied == 0 and again.already_there == 5


def test_migrate_command_then_the_s3_backend_serves_the_blobs(
    server: S3Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from app.cli import cli
    from app.core.settings import get_settings
    from app.core.storage import LocalBlobStore
    from app.storage.backends import blob_store

    set_credentials(server, monkeypatch)
    boto3.client("s3", endpoint_url=server.endpoint_url).create_bucket(Bucket="migrate-target")
    for name, value in {
        "ERRORBOOK_DATA_DIR": str(tmp_path / "data"),
        "ERRORBOOK_S3_BUCKET": "migrate-target",
        "ERRORBOOK_S3_ENDPOINT_URL": server.endpoint_url,
    }.items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    local = LocalBlobStore(get_settings().blob_dir)
    digest = local.put_bytes(b"moved to the object store")
    try:
        moved = CliRunner().invoke(cli, ["storage", "migrate", "--to", "s3"])
        assert moved.exit_code == 0, moved.output
        assert "copied 1 blobs" in moved.output
        monkeypatch.setenv("ERRORBOOK_STORAGE", "s3")
        get_settings.cache_clear()
        with blob_store(get_settings()).open(digest) as fh:
            assert fh.read() == b"moved to the object store"
        refused = CliRunner().invoke(cli, ["storage", "migrate", "--to", "gcs"])
        assert refused.exit_code == 2 and "only --to s3" in refused.output
    finally:
        get_settings.cache_clear()


def test_gc_on_the_object_store_deletes_only_unreferenced_objects(
    store: S3BlobStore,
    session_maker,
    tmp_path: Path,  # type: ignore[no-untyped-def]
) -> None:
    from app.models import Dataset, Image, Label
    from app.storage.service import collect_garbage

    used, unused = store.put_bytes(b"an image a row names"), store.put_bytes(b"nobody names this")
    with session_maker() as session:
        dataset = Dataset(name="s3-gc")
        session.add(dataset)
        session.flush()
        label = Label(dataset_id=dataset.id, name="cat")
        session.add(label)
        session.flush()
        session.add(Image(dataset_id=dataset.id, sha256=used, filename="a.jpg", label_id=label.id))
        session.commit()
    young = collect_garbage(sessions=session_maker, blobs=store, grace_seconds=3600)
    assert young.deleted == 0 and young.kept_young == 1  # just stored: spared
    result = collect_garbage(sessions=session_maker, blobs=store, grace_seconds=-5)
    assert (result.blobs, result.deleted) == (2, 1)
    assert store.exists(used) and not store.exists(unused)


@pytest.mark.parametrize("command", [["worker"], ["serve", "--no-worker"]])
def test_a_process_refuses_to_start_without_its_object_store(
    command: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from app.cli import cli
    from app.core.settings import get_settings

    with socket_closed_port() as port:
        for name, value in {
            "ERRORBOOK_DATA_DIR": str(tmp_path / "data"),
            "ERRORBOOK_STORAGE": "s3",
            "ERRORBOOK_S3_BUCKET": "errorbook",
            "ERRORBOOK_S3_ENDPOINT_URL": f"http://127.0.0.1:{port}",
            "AWS_ACCESS_KEY_ID": "k",
            "AWS_SECRET_ACCESS_KEY": "a-secret-never-printed",
        }.items():
            monkeypatch.setenv(name, value)
        get_settings.cache_clear()
        try:
            refused = CliRunner().invoke(cli, command)
        finally:
            get_settings.cache_clear()
    assert refused.exit_code == 2, refused.output
    assert f"object store s3://errorbook/errorbook at http://127.0.0.1:{port} is not usable" in refused.output
    assert "cannot connect" in refused.output and "a-secret-never-printed" not in refused.output
    assert not (tmp_path / "data" / "errorbook.db").exists()  # refused before anything was written


def test_storage_init_creates_the_bucket_once(
    server: S3Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from app.cli import cli
    from app.core.settings import get_settings

    set_credentials(server, monkeypatch)
    for name, value in {
        "ERRORBOOK_DATA_DIR": str(tmp_path / "data"),
        "ERRORBOOK_STORAGE": "s3",
        "ERRORBOOK_S3_BUCKET": "made-by-init",
        "ERRORBOOK_S3_ENDPOINT_URL": server.endpoint_url,
    }.items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    try:
        first = CliRunner().invoke(cli, ["storage", "init"])
        again = CliRunner().invoke(cli, ["storage", "init"])
    finally:
        get_settings.cache_clear()
    assert first.exit_code == 0 and "created s3://made-by-init/" in first.output, first.output
    assert again.exit_code == 0 and "found s3://made-by-init/" in again.output
    assert "made-by-init" in {
        b["Name"] for b in boto3.client("s3", endpoint_url=server.endpoint_url).list_buckets()["Buckets"]
    }
