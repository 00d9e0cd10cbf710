"""The namespace machinery itself: hosts reach each other only inside their network, and nothing outlives a test."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.multihost.hosts import PREFIX, SUBNET, namespace_pids, network, wait_for

pytestmark = pytest.mark.multihost


def _namespaces() -> set[str]:
    return {
        line.split()[0]
        for line in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.splitlines()
        if line
    }


def test_hosts_reach_each_other_and_the_machine_gets_no_address(tmp_path: Path) -> None:
    with network(tmp_path) as net:
        a, b = net.add_host("a"), net.add_host("b")
        serve = f"import socket; c, _ = socket.create_server(('{b.address}', 7000)).accept(); c.sendall(b'hello')"
        b.start("server", [sys.executable, "-c", serve])
        fetch = (
            "import socket, time\n"
            "for _ in range(100):\n"
            f"    try: print(socket.create_connection(('{b.address}', 7000), timeout=5).recv(5).decode()); break\n"
            "    except ConnectionRefusedError: time.sleep(0.1)\n"
        )
        assert a.run([sys.executable, "-c", fetch]).stdout.strip() == "hello"
        own = subprocess.run(["ip", "-o", "addr"], capture_output=True, text=True).stdout
        assert f"{SUBNET}." not in own  # the addresses exist only inside the namespaces


def test_teardown_kills_every_process_and_removes_the_namespaces_after_a_failure(tmp_path: Path) -> None:
    names: set[str] = set()
    with pytest.raises(RuntimeError, match="the test failed"), network(tmp_path) as net:
        host = net.add_host("a")
        host.start("sleeper", ["sh", "-c", "sleep 300 & sleep 300"])  # a child of its own too
        names = {host.ns, net.switch}
        wait_for(lambda: len(host.pids()) >= 2, timeout=30, what="both sleepers running")
        pids = host.pids()
        raise RuntimeError("the test failed")
    assert not names & _namespaces()
    for pid in pids:
        assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text().lower()


def test_namespaces_of_a_dead_test_process_are_swept(tmp_path: Path) -> None:
    finished = subprocess.Popen(["true"])
    finished.wait()
    stale = f"{PREFIX}-{finished.pid}-dead00-x"
    subprocess.run(["ip", "netns", "add", stale], check=True)
    try:
        with network(tmp_path):
            assert stale not in _namespaces()
            assert namespace_pids(stale) == []
    finally:
        subprocess.run(["ip", "netns", "del", stale], capture_output=True)
