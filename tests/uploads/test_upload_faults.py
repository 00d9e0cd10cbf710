"""Uploads under faults: the web server SIGKILLed in the middle of request bodies, and the disk filling up
while blobs are written."""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import signal
import socket
import struct
import subprocess
import sys
import termios
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.auth import service as auth
from app.core.settings import get_settings
from app.datasets import service as datasets
from app.models import Image, Job, Upload, UploadEntry
from tests.datasets.conftest import Ingest, noisy_jpeg, orphan_blobs, stored_blobs, zip_of
from tests.jobs.conftest import ROOT, wait_until
from tests.jobs.inline import drain_jobs

pytestmark = pytest.mark.slow


# ---- the web server killed mid-upload -------------------------------------------------------------------


class Server:
    """A real `errorbook serve --no-worker` process."""

    def __init__(self, url: str, data_dir: Path) -> None:
        self.url, self.data_dir = url, data_dir
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.base = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> None:
        environment = {**os.environ, "ERRORBOOK_DATABASE_URL": self.url, "ERRORBOOK_DATA_DIR": str(self.data_dir)}
        log = open(self.data_dir / f"server-{self.starts}.log", "wb")  # noqa: SIM115
        self.starts += 1
        command = ["serve", "--no-worker", "--host", "127.0.0.1", "--port", str(self.port)]
        self.process = subprocess.Popen(
            [sys.executable, "-m", "app.cli", *command], cwd=ROOT, env=environment, stdout=log, stderr=log
        )
        wait_until(self._healthy, timeout=120, interval=0.2)

    def _healthy(self) -> bool:
        assert self.process is not None and self.process.poll() is None, self.logs()
        try:
            return httpx.get(f"{self.base}/healthz", timeout=5).status_code == 200
        except httpx.TransportError:
            return False

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def logs(self) -> str:
        return "\n".join(p.read_text(errors="replace") for p in sorted(self.data_dir.glob("server-*.log")))[-3000:]


def _send_partially(port: int, path: str, headers: dict[str, str], body: bytes, sent: int) -> socket.socket:
    """Start a request over a raw socket, announcing the whole body but sending only its first `sent` bytes."""
    connection = socket.create_connection(("127.0.0.1", port))
    head = f"POST {path} HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\ncontent-length: {len(body)}\r\n"
    head += "".join(f"{name}: {value}\r\n" for name, value in headers.items()) + "\r\n"
    connection.sendall(head.encode() + body[:sent])
    return connection


def _server_read_everything(connection: socket.socket, server_port: int) -> bool:
    """Whether the server process has read every byte sent so far: none waits in our send queue nor in the
    server socket's receive queue (/proc/net/tcp), so it is in the middle of the body, waiting for more."""
    unsent = struct.unpack("i", fcntl.ioctl(connection, termios.TIOCOUTQ, b"\0\0\0\0"))[0]
    if unsent:
        return False
    client_port = connection.getsockname()[1]
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local_port, remote_port = int(fields[1].split(":")[1], 16), int(fields[2].split(":")[1], 16)
        if (local_port, remote_port) == (server_port, client_port):
            return int(fields[4].split(":")[1], 16) == 0
    return False


def _count(engine, model: Any, *where: Any) -> int:  # type: ignore[no-untyped-def]
    with Session(engine) as session:
        return session.scalar(select(func.count()).select_from(model).where(*where)) or 0


def _claim(name: str, data: bytes) -> dict[str, Any]:
    return {"files": [{"name": name, "sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}]}


CHUNK = 64 * 1024


def test_a_server_killed_mid_upload_leaves_no_partial_dataset_and_the_upload_resumes(  # type: ignore[no-untyped-def]
    fresh_database, tmp_path, monkeypatch
) -> None:
    """What correct means, from how uploads work:

    * A one-request multipart upload is parsed whole before the request touches the database, and its rows are
      committed with the response: killed mid-body, it leaves no upload row, no entry, no image and no blob.
      Starlette spools the parts to unlinked temporary files, which vanish with the process.
    * A resumable upload (the browser's protocol) is an ``open`` upload row that files join as they complete;
      a big file arrives in chunks appended to a ``.part`` file under the staging folder. Killed mid-chunk, the
      upload stays ``open`` and resumable (the user's next "open" gets it back, ``have`` reports the bytes
      kept), with no entry for the unfinished file and no image. The half-received ``.chunk`` file is left
      behind but ignored safely: a resent chunk overwrites it, and finishing the upload removes the staging
      folder. Nothing is ingested before the user finishes the upload.
    """
    engine = fresh_database.engine
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    with Session(engine) as session:
        user = auth.create_user(session, name=f"uploader-{uuid.uuid4().hex[:6]}", role="reviewer")
        _, token = auth.create_token(session, user=user, name="faults")
        chunked = datasets.create_dataset(session, name="chunked", user_id=user.id)
        whole = datasets.create_dataset(session, name="one request", user_id=user.id)
        session.commit()
        chunked_id, whole_id = chunked.id, whole.id
    bearer = {"authorization": f"Bearer {token}"}
    server = Server(fresh_database.url, data_dir)
    staging = data_dir / "staging"
    blob_dir = data_dir / "blobs"

    archive = zip_of([(f"{'cat' if i % 2 else 'dog'}/{i}.jpg", noisy_jpeg(i, (160, 120))) for i in range(16)])
    assert len(archive) > 3 * CHUNK
    archive_sha = hashlib.sha256(archive).hexdigest()
    photos = [(f"{'cat' if i % 2 else 'dog'}/p{i}.jpg", noisy_jpeg(1000 + i, (160, 120))) for i in range(12)]
    multipart = httpx.Request(
        "POST", "http://x/", files=[("files", (name, data, "image/jpeg")) for name, data in photos]
    )
    multipart_body = multipart.read()

    try:
        server.start()
        with httpx.Client(base_url=server.base, headers=bearer, timeout=60) as client:
            opened = client.post(f"/api/datasets/{chunked_id}/uploads/open", json={}).json()
            upload_id = opened["upload_id"]
            assert client.post(f"/api/uploads/{upload_id}/have", json=_claim("pets.zip", archive)).json()[
                "missing"
            ] == ["pets.zip"]
            params = {"name": "pets.zip", "sha256": archive_sha, "size": len(archive)}
            first = client.post(
                f"/api/uploads/{upload_id}/chunks", params={**params, "offset": 0}, content=archive[:CHUNK]
            )
            assert first.json() == {"received": CHUNK, "complete": False}, first.text

        # Two bodies in flight: the one-request upload and the next chunk, each half sent and fully read.
        headers = {**bearer, "content-type": multipart.headers["content-type"]}
        whole_request = _send_partially(
            server.port, f"/api/datasets/{whole_id}/uploads", headers, multipart_body, len(multipart_body) // 2
        )
        chunk_path = f"/api/uploads/{upload_id}/chunks?" + str(httpx.QueryParams({**params, "offset": CHUNK}))
        chunk_body = archive[CHUNK : 2 * CHUNK]
        chunk_request = _send_partially(
            server.port, chunk_path, {**bearer, "content-type": "application/octet-stream"}, chunk_body, CHUNK // 2
        )
        half_chunk = staging / str(upload_id) / f"{archive_sha}.{CHUNK}.chunk"
        wait_until(lambda: half_chunk.exists() and half_chunk.stat().st_size > 0, timeout=60)
        wait_until(lambda: _server_read_everything(whole_request, server.port), timeout=60)
        wait_until(lambda: _server_read_everything(chunk_request, server.port), timeout=60)
        server.kill()
        whole_request.close()
        chunk_request.close()

        # Nothing partial in the database; the resumable upload is still open with its first chunk kept.
        assert _count(engine, Upload, Upload.dataset_id == whole_id) == 0
        assert _count(engine, Image) == 0 and _count(engine, UploadEntry) == 0 and _count(engine, Job) == 0
        with Session(engine) as session:
            upload = session.get(Upload, upload_id)
            assert upload is not None and upload.status == "open"
        assert (staging / str(upload_id) / f"{archive_sha}.part").stat().st_size == CHUNK
        assert stored_blobs(blob_dir) == set()  # no file of either request reached the blob store
        left_behind = sorted(p.name for p in (staging / str(upload_id)).iterdir())
        assert left_behind == [f"{archive_sha}.{CHUNK}.chunk", f"{archive_sha}.part"]

        server.start()
        with httpx.Client(base_url=server.base, headers=bearer, timeout=60) as client:
            # The user reloads the page: the same upload comes back, and the server says where to go on from.
            again = client.post(f"/api/datasets/{chunked_id}/uploads/open", json={}).json()
            assert (again["upload_id"], again["resumed"]) == (upload_id, True)
            answer = client.post(f"/api/uploads/{upload_id}/have", json=_claim("pets.zip", archive)).json()
            assert answer["partial"] == {"pets.zip": CHUNK}
            offset = CHUNK
            while offset < len(archive):
                sent = client.post(
                    f"/api/uploads/{upload_id}/chunks",
                    params={**params, "offset": offset},
                    content=archive[offset : offset + CHUNK],
                )
                assert sent.status_code == 200, sent.text
                offset = sent.json()["received"]
            assert sent.json()["complete"] is True
            assert client.post(f"/api/uploads/{upload_id}/finish").status_code == 202
            assert not (staging / str(upload_id)).exists()  # the stale chunk went with the staging folder
            # The one-request upload, sent again whole.
            resent = client.post(
                f"/api/datasets/{whole_id}/uploads",
                files=[("files", (name, data, "image/jpeg")) for name, data in photos],
            )
            assert resent.status_code == 202, resent.text
    finally:
        if server.process is not None and server.process.poll() is None:
            server.kill()

    monkeypatch.setenv("ERRORBOOK_DATA_DIR", str(data_dir))
    monkeypatch.setenv("ERRORBOOK_DATABASE_URL", fresh_database.url)
    get_settings.cache_clear()  # the inline job runner reads its settings from the environment
    try:
        jobs = drain_jobs(engine)
    finally:
        get_settings.cache_clear()
    assert [job.status for job in jobs] == ["succeeded", "succeeded"], [job.error for job in jobs]
    assert _count(engine, Image, Image.dataset_id == chunked_id) == 16
    assert _count(engine, Image, Image.dataset_id == whole_id) == len(photos)
    assert _count(engine, Upload) == 2
    assert orphan_blobs(engine, blob_dir) == set()  # the expanded zip's blob was removed once ingested


# ---- the disk fills up during blob writes ---------------------------------------------------------------


class FullDisk:
    """Makes the blob store's disk full on demand: a tiny tmpfs filled with ballast where mounting is allowed
    (root), else a failing writer (fsync of a file under the blob store raises ENOSPC, as a full disk does)."""

    def __init__(self, blob_dir: Path, how: str, monkeypatch: pytest.MonkeyPatch) -> None:
        self.blob_dir, self.how = blob_dir, how
        self.full = False
        self.ballast = blob_dir / "ballast"  # not a sha256 name: never mistaken for a blob
        if how == "failing-writer":
            real_fsync = os.fsync

            def fsync(fd: int) -> None:
                if self.full and os.readlink(f"/proc/self/fd/{fd}").startswith(str(blob_dir)):
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                real_fsync(fd)

            monkeypatch.setattr(os, "fsync", fsync)

    def fill(self) -> None:
        self.full = True
        if self.how == "tmpfs":
            with self.ballast.open("wb", buffering=0) as ballast:
                try:
                    while True:
                        ballast.write(b"\0" * 4096)
                except OSError as error:  # full to the last page
                    assert error.errno == errno.ENOSPC

    def free(self) -> None:
        self.full = False
        self.ballast.unlink(missing_ok=True)


@pytest.fixture(params=["tmpfs", "failing-writer"])
def full_disk(request: pytest.FixtureRequest, ingest: Ingest, monkeypatch: pytest.MonkeyPatch) -> Iterator[FullDisk]:
    blob_dir = ingest.settings.blob_dir
    if request.param == "failing-writer":
        yield FullDisk(blob_dir, "failing-writer", monkeypatch)
        return
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(blob_dir)], capture_output=True, check=False
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {mounted.stderr.decode(errors='replace').strip()}")
    try:
        (blob_dir / "tmp").mkdir()  # the store's temporary folder, hidden by the mount
        yield FullDisk(blob_dir, "tmpfs", monkeypatch)
    finally:
        subprocess.run(["umount", "-l", str(blob_dir)], check=False)


def _every_blob_whole(blob_dir: Path) -> bool:
    return all(hashlib.sha256(path.read_bytes()).hexdigest() == path.name for path in blob_dir.glob("??/??/*"))


def test_a_full_disk_fails_uploads_and_ingests_clearly_and_leaves_nothing_half_written(
    ingest: Ingest, full_disk: FullDisk
) -> None:
    engine, blob_dir = ingest.engine, ingest.settings.blob_dir
    dataset = ingest.create_dataset()
    files = [(f"{'cat' if i % 2 else 'dog'}/{i}.jpg", noisy_jpeg(i, (96, 72))) for i in range(40)]
    parts = [("files", (name, data, "image/jpeg")) for name, data in files]
    started = ingest.reviewer.post(f"/api/datasets/{dataset}/uploads", files=parts)
    assert started.status_code == 202, started.text
    upload_id = started.json()["upload_id"]

    # The disk fills up before the ingest writes the thumbnails.
    full_disk.fill()
    (job,) = ingest.run_jobs()
    assert job.status == "failed"
    assert "no space left on device" in (job.error or ""), job.error
    report = ingest.reviewer.get(f"/api/uploads/{upload_id}").json()
    assert report["status"] == "failed"
    with Session(engine) as session:
        images = session.execute(select(Image.sha256, Image.thumb_sha256)).all()
    on_disk = stored_blobs(blob_dir)
    assert all(sha in on_disk and thumb in on_disk for sha, thumb in images)  # no row without its files
    assert list((blob_dir / "tmp").iterdir()) == [] and _every_blob_whole(blob_dir)

    # A new upload while the disk is full: refused with the reason, nothing recorded, nothing half-written.
    refused = ingest.reviewer.post(
        f"/api/datasets/{dataset}/uploads", files=[("files", ("cat/new.jpg", noisy_jpeg(99, (96, 72)), "image/jpeg"))]
    )
    assert refused.status_code == 507, refused.text
    assert "no space left on device" in refused.json()["detail"]
    assert _count(engine, Upload) == 1
    assert list((blob_dir / "tmp").iterdir()) == [] and _every_blob_whole(blob_dir)

    # Room again: the failed upload is retried and finishes where it stopped.
    full_disk.free()
    assert ingest.reviewer.post(f"/api/uploads/{upload_id}/retry").status_code == 202
    (retried,) = ingest.run_jobs()
    assert retried.status == "succeeded", retried.error
    with Session(engine) as session:
        images = session.execute(select(Image.sha256, Image.thumb_sha256)).all()
    assert len(images) == len(files) and all(thumb for _, thumb in images)
    assert orphan_blobs(engine, blob_dir) == set()
    assert {sha for sha, _ in images} | {thumb for _, thumb in images} <= stored_blobs(blob_dir)
    assert list((blob_dir / "tmp").iterdir()) == [] and _every_blob_whole(blob_dir)
