"""Separate hosts on one machine: Linux network namespaces joined by a bridge, made and removed by the test.

Each host is a namespace of its own with one veth into a switch namespace that holds the bridge, so every address
(10.213.0.0/24) exists only inside these namespaces: the machine's own interfaces are never touched, and two test
runs (xdist workers) use the same addresses on switches of their own without meeting. A host shares nothing with
the others but the network: its own data dir, scratch (TMPDIR) and processes. Processes are started with
`ip netns exec`, and a host is killed by killing every process in its namespace (`ip netns pids`), as if the
machine lost power.

The test process itself talks to the hosts from a client namespace it enters (`Network.inside`): setns on the
calling thread, undone on exit, so sockets opened meanwhile (HTTP, Postgres) live in the namespaces' network.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from app.core.settings import PROJECT_ROOT

if TYPE_CHECKING:
    import httpx

SUBNET = "10.213.0"
PREFIX = "ebmh"  # every namespace of these tests starts with it: ebmh-<pid>-<random>-<host>
CLONE_NEWNET = 0x40000000
PG_BIN = Path("/usr/lib/postgresql/15/bin")
PG_PORT = 5432
S3_PORT = 5000
WEB_PORT = 8000


def unavailable_reason() -> str | None:
    """Why these tests cannot run here (None when they can): they need root, `ip` and network namespaces."""
    if not sys.platform.startswith("linux"):
        return "network namespaces are Linux only"
    if os.geteuid() != 0:
        return "needs root to create network namespaces (ip netns)"
    if shutil.which("ip") is None:
        return "needs the `ip` command (iproute2)"
    if not (PG_BIN / "initdb").exists():
        return f"needs the Postgres server binaries in {PG_BIN}"
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        return "needs a `postgres` OS user to run the Postgres host (initdb refuses root)"
    if not (shutil.which("moto_server") or Path(f"{sys.prefix}/bin/moto_server").exists()):
        return "needs moto's standalone server (pip install 'moto[server]') for the S3 host"
    probe = f"{PREFIX}-probe-{os.getpid()}-{uuid.uuid4().hex[:4]}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if made.returncode != 0:
        return f"`ip netns add` fails here: {made.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


def _ip(*args: str) -> None:
    done = subprocess.run(["ip", *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.strip()}")


def _namespaces() -> list[str]:
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return [line.split()[0] for line in listed.splitlines() if line.strip()]


def namespace_pids(ns: str) -> list[int]:
    listed = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True).stdout
    return [int(pid) for pid in listed.split()]


def kill_namespace(ns: str, *, rounds: int = 50) -> list[int]:
    """SIGKILL every process in the namespace until none is left (a dying parent may still fork); the pids killed."""
    killed: list[int] = []
    for _ in range(rounds):
        pids = namespace_pids(ns)
        if not pids:
            break
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        killed += pids
        time.sleep(0.1)
    return killed


def _sweep_stale() -> None:
    """Remove namespaces left by a test process that died before its teardown (named after its pid)."""
    for ns in _namespaces():
        parts = ns.split("-")
        if len(parts) < 3 or parts[0] != PREFIX or not parts[1].isdigit():
            continue
        if Path(f"/proc/{parts[1]}").exists():
            continue  # its test process is alive (maybe another xdist worker): not ours to remove
        kill_namespace(ns)
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)
    for folder in Path(tempfile.gettempdir()).glob(f"{PREFIX}-*-pg-*"):
        pid = folder.name.split("-")[1]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            shutil.rmtree(folder, ignore_errors=True)


@dataclass
class Host:
    name: str
    ns: str
    address: str
    root: Path  # this host's own disk: data dir, scratch, logs
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)
    extra_logs: list[Path] = field(default_factory=list)  # logs kept outside the host's folder (Postgres's)

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def log_dir(self) -> Path:
        return self.root / "logs"

    def env(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        """A clean environment: none of this machine's ERRORBOOK_*/AWS_*/proxy settings, this host's own dirs."""
        scratch = self.root / "tmp"
        scratch.mkdir(parents=True, exist_ok=True)
        dropped = ("ERRORBOOK_", "AWS_", "PYTEST_")
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(dropped) and "proxy" not in k.lower() and k != "PYTHONPATH"
        }
        env.update(
            {
                "ERRORBOOK_DATA_DIR": str(self.data_dir),
                "ERRORBOOK_STATE_DIR": str(self.root / "state"),
                "TMPDIR": str(scratch),
                "PYTHONPATH": str(PROJECT_ROOT),
                "PYTHONUNBUFFERED": "1",
            }
        )
        env.update(extra or {})
        return env

    def run(
        self, command: Sequence[str], *, env: Mapping[str, str] | None = None, timeout: float = 120, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """Run a command on this host to its end."""
        done = subprocess.run(
            ["ip", "netns", "exec", self.ns, *command],
            env=self.env(env),
            cwd=PROJECT_ROOT,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check and done.returncode != 0:
            raise RuntimeError(
                f"{self.name}: {' '.join(command)} exited {done.returncode}:\n{done.stdout}{done.stderr}"
            )
        return done

    def errorbook(self, *args: str, env: Mapping[str, str] | None = None, check: bool = True) -> str:
        """The `errorbook` CLI on this host; its output."""
        done = self.run([sys.executable, "-m", "app.cli", *args], env=env, check=check)
        return done.stdout + done.stderr

    def start(self, label: str, command: Sequence[str], *, env: Mapping[str, str] | None = None) -> None:
        """Start a long-running process on this host, its output in logs/<label>.log."""
        self.log_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log_dir / f"{label}.log", "ab") as log:
            process = subprocess.Popen(
                ["ip", "netns", "exec", self.ns, *command],
                env=self.env(env),
                cwd=PROJECT_ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.processes.append(process)

    def pids(self) -> list[int]:
        return namespace_pids(self.ns)

    def kill(self) -> list[int]:
        """Every process of this host, at once (SIGKILL): the machine is gone."""
        killed = kill_namespace(self.ns)
        for process in self.processes:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=5)
        return killed

    def logs(self, limit: int = 3000) -> str:
        parts = []
        for path in [*sorted(self.log_dir.glob("*.log")), *self.extra_logs]:
            if not path.exists():
                continue
            parts.append(f"--- {self.name}/{path.name}\n{path.read_text(errors='replace')[-limit:]}")
        return "\n".join(parts)


class Network:
    """A switch namespace with a bridge, and hosts plugged into it (10.213.0.<n>/24)."""

    def __init__(self, root: Path) -> None:
        self.tag = f"{PREFIX}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.root = root
        self.switch = f"{self.tag}-sw"
        self.hosts: dict[str, Host] = {}
        self._namespaces: list[str] = []
        self._cleanups: list[Callable[[], None]] = []
        self._add_namespace(self.switch)
        _ip("-n", self.switch, "link", "add", "br0", "type", "bridge")
        _ip("-n", self.switch, "link", "set", "br0", "up")

    def _add_namespace(self, ns: str) -> None:
        _ip("netns", "add", ns)
        self._namespaces.append(ns)
        _ip("-n", ns, "link", "set", "lo", "up")

    def add_host(self, name: str) -> Host:
        """A new host: its namespace, a veth pair from it to the bridge, the next address, a folder of its own."""
        number = len(self.hosts) + 2
        ns = f"{self.tag}-{name}"
        self._add_namespace(ns)
        port = f"p{number}"  # interface names are local to the switch namespace
        _ip("-n", self.switch, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", ns)
        _ip("-n", self.switch, "link", "set", port, "master", "br0", "up")
        address = f"{SUBNET}.{number}"
        _ip("-n", ns, "addr", "add", f"{address}/24", "dev", "eth0")
        _ip("-n", ns, "link", "set", "eth0", "up")
        root = self.root / name
        root.mkdir(parents=True, exist_ok=True)
        host = Host(name, ns, address, root)
        self.hosts[name] = host
        return host

    def on_teardown(self, cleanup: Callable[[], None]) -> None:
        self._cleanups.append(cleanup)

    @contextlib.contextmanager
    def inside(self, host: Host) -> Iterator[None]:
        """Run the calling thread in `host`'s network (sockets opened meanwhile stay there), then return."""
        libc = ctypes.CDLL(None, use_errno=True)
        with open("/proc/thread-self/ns/net") as own, open(f"/run/netns/{host.ns}") as target:
            if libc.setns(target.fileno(), CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns into the client namespace failed")
            try:
                yield
            finally:
                if libc.setns(own.fileno(), CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), "setns back to the test's own namespace failed")

    def logs(self) -> str:
        return "\n".join(host.logs() for host in self.hosts.values())

    def close(self) -> None:
        """Kill every process of every host and delete every namespace, whatever state the test left."""
        for host in self.hosts.values():
            kill_namespace(host.ns)
            for process in host.processes:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    process.wait(timeout=5)
        for cleanup in reversed(self._cleanups):
            with contextlib.suppress(Exception):
                cleanup()
        for ns in reversed(self._namespaces):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


@contextlib.contextmanager
def network(root: Path) -> Iterator[Network]:
    _sweep_stale()
    net = Network(root)
    try:
        yield net
    finally:
        net.close()


# -- the hosts of an Errorbook deployment ---------------------------------------------------------------------------


def wait_for(check: Callable[[], bool], *, timeout: float, what: str, logs: Callable[[], str] = str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} did not happen within {timeout:g} s\n{logs()}")
        time.sleep(0.25)


def start_postgres(net: Network, host: Host) -> str:
    """A Postgres cluster of this host's own (initdb in a temp dir, run as the `postgres` user, which initdb
    requires), listening on the host's address only; its URL (database `errorbook`, trust auth on the subnet)."""
    account = pwd.getpwnam("postgres")
    # Outside the test's tmp dir: pytest's is private to root and the server runs as `postgres`.
    pg_root = Path(tempfile.mkdtemp(prefix=f"{net.tag}-pg-"))
    net.on_teardown(lambda: shutil.rmtree(pg_root, ignore_errors=True))
    os.chown(pg_root, account.pw_uid, account.pw_gid)
    data = pg_root / "data"
    as_postgres = ["runuser", "-u", "postgres", "--"]
    host.run([*as_postgres, str(PG_BIN / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "--no-sync"])
    with open(data / "pg_hba.conf", "a") as hba:
        hba.write(f"host all all {SUBNET}.0/24 trust\n")
    options = (
        f"-c listen_addresses={host.address} -c port={PG_PORT} -c unix_socket_directories={pg_root} "
        "-c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200"
    )
    log = pg_root / "server.log"
    host.run([*as_postgres, str(PG_BIN / "pg_ctl"), "-D", str(data), "-l", str(log), "-w", "-o", options, "start"])
    host.extra_logs.append(log)
    host.run([*as_postgres, str(PG_BIN / "createdb"), "-h", host.address, "-U", "postgres", "errorbook"])
    return f"postgresql://postgres@{host.address}:{PG_PORT}/errorbook"


def start_s3(host: Host) -> str:
    """moto's standalone server (an S3-protocol test server) on this host; its endpoint URL."""
    command = shutil.which("moto_server") or f"{sys.prefix}/bin/moto_server"
    host.start("moto", [command, "-H", host.address, "-p", str(S3_PORT)])
    return f"http://{host.address}:{S3_PORT}"


ADMIN, ADMIN_PASSWORD = "ada", "a-long-password"
ACCESS_KEY, SECRET_KEY = "testing-key", "testing-secret"


@dataclass
class Deployment:
    """Postgres, S3, web and worker hosts of one Errorbook deployment, and a client host the test acts from."""

    net: Network
    client: Host
    postgres: Host
    s3: Host
    web: Host
    workers: list[Host]
    database_url: str
    s3_endpoint: str
    bucket: str
    token: str
    env: dict[str, str]  # the settings every Errorbook host gets (each adds its own data dir and scratch)

    @property
    def web_url(self) -> str:
        return f"http://{self.web.address}:{WEB_PORT}"

    def start_worker(self, host: Host) -> None:
        host.start("worker", [sys.executable, "-m", "app.cli", "worker"], env=self.env)

    def api(self) -> httpx.Client:
        """An API client of the web host (use it inside `net.inside(client)`)."""
        import httpx

        return httpx.Client(
            base_url=self.web_url, headers={"authorization": f"Bearer {self.token}"}, timeout=60, trust_env=False
        )

    def errorbook(self, host: Host, *args: str, check: bool = True) -> str:
        return host.errorbook(*args, env=self.env, check=check)

    def logs(self) -> str:
        return self.net.logs()


def _reachable(url: str) -> bool:
    import httpx

    try:
        httpx.get(url, timeout=2, trust_env=False)
    except httpx.HTTPError:
        return False
    return True


@contextlib.contextmanager
def deployment(root: Path, *, workers: int = 2, settings: Mapping[str, str] | None = None) -> Iterator[Deployment]:
    """Start the hosts (Postgres, S3, web, `workers` worker hosts, a client); `settings`: extra ERRORBOOK_* for
    every Errorbook host. Everything is killed and removed on exit, whatever happened."""
    with network(root) as net:
        postgres, s3, web = net.add_host("pg"), net.add_host("s3"), net.add_host("web")
        worker_hosts = [net.add_host(f"w{i + 1}") for i in range(workers)]
        client = net.add_host("cli")
        database_url = start_postgres(net, postgres)
        endpoint = start_s3(s3)
        bucket = f"errorbook-{uuid.uuid4().hex[:8]}"
        env = {
            "ERRORBOOK_DATABASE_URL": database_url,
            "ERRORBOOK_STORAGE": "s3",
            "ERRORBOOK_S3_ENDPOINT_URL": endpoint,
            "ERRORBOOK_S3_BUCKET": bucket,
            "ERRORBOOK_S3_PREFIX": "eb",
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "AWS_DEFAULT_REGION": "us-east-1",
            # A lost host is noticed within seconds, not the production half-minute.
            "ERRORBOOK_JOB_LEASE_SECONDS": "10",
            "ERRORBOOK_JOB_HEARTBEAT_SECONDS": "1",
            "ERRORBOOK_JOB_REAPER_SECONDS": "1",
            "ERRORBOOK_JOB_POLL_SECONDS": "0.2",
            # One thread per process: the same arithmetic on every host (and the machine's cores are shared).
            "ERRORBOOK_TORCH_THREADS": "1",
            **(settings or {}),
        }
        with net.inside(client):
            wait_for(lambda: _reachable(endpoint), timeout=60, what="the S3 host answering", logs=net.logs)
        web.errorbook("storage", "init", env=env)
        web.errorbook("db", "upgrade", env=env)
        added = web.errorbook("users", "add", ADMIN, "--role", "admin", "--password", ADMIN_PASSWORD, env=env)
        token = added.strip().splitlines()[-1]
        web.start(
            "web",
            [sys.executable, "-m", "app.cli", "serve", "--no-worker", "--host", web.address, "--port", str(WEB_PORT)],
            env=env,
        )
        deployed = Deployment(net, client, postgres, s3, web, worker_hosts, database_url, endpoint, bucket, token, env)
        for host in worker_hosts:
            deployed.start_worker(host)
        with net.inside(client):
            wait_for(
                lambda: _reachable(f"{deployed.web_url}/healthz"),
                timeout=90,
                what="the web host answering",
                logs=net.logs,
            )
        yield deployed
