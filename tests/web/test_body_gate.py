"""Bodies are refused before they are read: a real uvicorn on loopback gets 1 GiB and 300 MB bodies (generated,
streamed through a raw socket) from clients without valid credentials, with the wrong content type, or over a
route's limit, and its peak memory (VmHWM) grows by less than 50 MB while it writes (almost) nothing: no temporary
file."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.live_server import LiveServer, live_server

GiB, MB = 2**30, 10**6
PIECE = b"\0" * 2**20


class Server(LiveServer):
    def peak_rss(self) -> int:
        status = Path(f"/proc/{self.pid}/status").read_text()
        line = next(line for line in status.splitlines() if line.startswith("VmHWM:"))
        return int(line.split()[1]) * 1024

    def written(self) -> int:
        """Bytes the server process has passed to write() (files, temp files and sockets alike)."""
        io_counts = dict(line.split(": ") for line in Path(f"/proc/{self.pid}/io").read_text().splitlines())
        return int(io_counts["wchar"])

    def temp_files(self) -> list[Path]:
        return [path for folder in self.tmp_dirs if folder.exists() for path in folder.rglob("*") if path.is_file()]


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    with live_server(tmp_path) as live:
        yield Server(live.port, live.pid, live.token, live.tmp_dirs)


def send(server: Server, method: str, path: str, headers: dict[str, str], size: int, *, chunked: bool) -> int:
    """Send a `size`-byte body (declared, or in chunked encoding) until the server answers; its status."""
    head = [f"{method} {path} HTTP/1.1", "host: 127.0.0.1", "connection: close"]
    head += [f"{name}: {value}" for name, value in headers.items()]
    head.append("transfer-encoding: chunked" if chunked else f"content-length: {size}")
    with socket.create_connection(("127.0.0.1", server.port), timeout=60) as sock:
        sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode())
        sock.setblocking(False)
        sent, reply = 0, b""
        # A multipart body opens like a real file part (a form field for pages), then goes on and on.
        field = 'name="files"; filename="a.jpg"' if path.startswith("/api/") else 'name="name"'
        preamble = f"--xyz\r\ncontent-disposition: form-data; {field}\r\n\r\n".encode()
        try:
            while sent < size and not reply:
                frame = PIECE[: min(len(PIECE), size - sent)]
                if sent == 0 and "multipart" in headers.get("content-type", ""):
                    frame = preamble + frame[len(preamble) :]
                data = b"%x\r\n%s\r\n" % (len(frame), frame) if chunked else frame
                view = memoryview(data)
                while view and not reply:
                    try:
                        view = view[sock.send(view) :]
                    except BlockingIOError:
                        reply = _try_read(sock)
                        time.sleep(0.001)
                sent += len(frame)
                reply = reply or _try_read(sock)
            if chunked and not reply:
                sock.sendall(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered and closed while we were still sending
        sock.setblocking(True)
        while b"\r\n" not in reply:
            more = sock.recv(65536)
            if not more:
                break
            reply += more
    return int(reply.split(b" ", 2)[1])


def _try_read(sock: socket.socket) -> bytes:
    try:
        return sock.recv(65536)
    except (BlockingIOError, ConnectionResetError):
        return b""


MULTIPART = {"content-type": "multipart/form-data; boundary=xyz"}
OCTETS = {"content-type": "application/octet-stream"}


def test_huge_bodies_are_refused_before_they_are_read(server: Server) -> None:
    bogus = {"authorization": "Bearer bogus"}
    valid = {"authorization": f"Bearer {server.token}"}
    cases = [
        # (method, path, headers, size, expected status): no or bogus credentials -> 401 before the body
        ("POST", "/api/datasets", OCTETS, GiB, 401),
        ("POST", "/api/datasets", {**OCTETS, **bogus}, GiB, 401),
        ("POST", "/api/datasets/1/uploads", {**MULTIPART, **bogus}, 300 * MB, 401),
        ("POST", "/api/uploads/1/chunks?name=a.zip&sha256=0&size=1&offset=0", {**OCTETS, **bogus}, 300 * MB, 401),
        # page forms: a login form is public but small; other pages need a session first (-> the login page)
        ("POST", "/login", MULTIPART, 300 * MB, 413),
        ("POST", "/datasets", MULTIPART, 300 * MB, 303),
        ("POST", "/users", MULTIPART, 300 * MB, 303),
        # valid credentials: a JSON route refuses other types (415) and more than its small limit (413)
        ("POST", "/api/datasets", {**OCTETS, **valid}, GiB, 415),
        ("POST", "/api/datasets", {"content-type": "application/json", **valid}, GiB, 413),
    ]
    before, written_before = server.peak_rss(), server.written()
    for chunked in (False, True):
        for method, path, headers, size, expected in cases:
            status = send(server, method, path, headers, size, chunked=chunked)
            assert status == expected, (path, headers, chunked, status)
    grown = server.peak_rss() - before
    assert grown < 50 * MB, f"peak RSS grew by {grown / MB:.0f} MB"
    assert server.written() - written_before < MB  # nothing spooled to disk, not even for a while
    assert server.temp_files() == []
