"""An S3-protocol test server (moto's standalone mode) on loopback, for the object-store backend's tests.

It is a protocol test server, not a store to deploy: the compose file uses a real S3-compatible store.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class S3Server:
    endpoint_url: str
    access_key: str = "testing-key"
    secret_key: str = "testing-secret"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def s3_server(*, checks_credentials: bool = False) -> Iterator[S3Server]:
    """With ``checks_credentials`` the server refuses every key it was not given (moto's IAM checks), so a wrong
    key meets the refusal a real store gives."""
    port = _free_port()
    command = shutil.which("moto_server") or f"{sys.prefix}/bin/moto_server"
    env = {**os.environ, **({"INITIAL_NO_AUTH_ACTION_COUNT": "0"} if checks_credentials else {})}
    process = subprocess.Popen(
        [command, "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env
    )
    endpoint = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(endpoint, timeout=1).close()
                break
            except urllib.error.HTTPError:  # it answers (refusing an unsigned request)
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("the S3 protocol test server did not start") from None
                time.sleep(0.2)
        yield S3Server(endpoint)
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()


def credentials_env(server: S3Server) -> dict[str, str]:
    return {
        "AWS_ACCESS_KEY_ID": server.access_key,
        "AWS_SECRET_ACCESS_KEY": server.secret_key,
        "AWS_DEFAULT_REGION": "us-east-1",
    }


def set_credentials(server: S3Server, monkeypatch: Any) -> None:
    """The server's credentials in the environment, as the SDK reads them (undone by pytest's monkeypatch)."""
    for name, value in credentials_env(server).items():
        monkeypatch.setenv(name, value)
