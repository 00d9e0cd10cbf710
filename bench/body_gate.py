"""Refused bodies cost the server nothing: a real ``errorbook serve`` on loopback gets 1 GiB and 300 MB bodies
(generated, streamed through a raw socket, declared and chunked) that it must refuse before reading, and for
each the bench prints the answer, how much the server's peak RSS (VmHWM) grew and how many bytes it wrote.

    python bench/body_gate.py

The same cases are asserted (growth < 50 MB, nothing written, no temp file) by tests/web/test_body_gate.py.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.live_server import live_server  # noqa: E402
from tests.web.test_body_gate import MB, MULTIPART, OCTETS, GiB, Server, send  # noqa: E402


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp, live_server(Path(tmp)) as live:
        server = Server(live.port, live.pid, live.token, live.tmp_dirs)
        cases = [
            ("no credentials, octet-stream -> JSON route", "/api/datasets", OCTETS, GiB),
            ("Bearer bogus, octet-stream -> JSON route", "/api/datasets", {**OCTETS, "authorization": "Bearer x"}, GiB),
            (
                "Bearer bogus, multipart -> upload route",
                "/api/datasets/1/uploads",
                {**MULTIPART, "authorization": "Bearer x"},
                300 * MB,
            ),
            ("no credentials, multipart -> /login", "/login", MULTIPART, 300 * MB),
            ("no credentials, multipart -> /datasets", "/datasets", MULTIPART, 300 * MB),
            (
                "valid token, octet-stream -> JSON route",
                "/api/datasets",
                {**OCTETS, "authorization": f"Bearer {live.token}"},
                GiB,
            ),
        ]
        print(f"{'case':48} {'body':>8} {'mode':>8} {'status':>6} {'RSS +MB':>8} {'written':>9}")
        for label, path, headers, size in cases:
            for chunked in (False, True):
                rss, written = server.peak_rss(), server.written()
                status = send(server, "POST", path, headers, size, chunked=chunked)
                grown, wrote = (server.peak_rss() - rss) / MB, server.written() - written
                mode = "chunked" if chunked else "declared"
                print(f"{label:48} {size / MB:>6.0f}MB {mode:>8} {status:>6} {grown:>8.1f} {wrote:>8,}B")
        print(f"temp files left: {len(server.temp_files())}")


if __name__ == "__main__":
    main()
