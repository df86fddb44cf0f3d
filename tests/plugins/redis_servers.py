"""Fixtures that start private Redis servers: a single server on a free port or a unix
socket in a temporary directory, and a real 3-master Redis Cluster on loopback.

Readiness is checked by connecting (and, for the cluster, by polling ``CLUSTER INFO`` until
every node reports ``cluster_state:ok`` and knows every slot), never by sleeping. A server
is confirmed to be ours by comparing the ``process_id`` it reports with the pid we started.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from _support import eventually, need_module, unavailable

if TYPE_CHECKING:
    import redis

REDIS_SERVER = shutil.which("redis-server")
REDIS_CLI = shutil.which("redis-cli")


def _free_port(also_free: int | None = None) -> int:
    """A loopback TCP port that is free now (and whose ``+also_free`` twin is free too)."""
    for _ in range(200):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if also_free is None:
            return port
        if port + also_free > 65535:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port + also_free))
            except OSError:
                continue
        return port
    raise RuntimeError("no free port pair found")


def _redis() -> Any:
    """The ``redis`` client module, or :func:`unavailable` if it is not installed."""
    need_module("redis", "redis")
    import redis

    return redis


def _wait(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    """Wait for a server to come up: connection errors mean "not yet"."""
    eventually(predicate, timeout, what, ignoring=(_redis().RedisError, OSError), interval=0.01)


class RedisServer:
    """A private ``redis-server`` process (no persistence unless asked) that can be stopped,
    killed and started again on the same port or socket."""

    def __init__(self, directory: Path, *, unix: bool = False, password: str | None = None,
                 args: tuple[str, ...] = ()) -> None:
        if REDIS_SERVER is None:
            unavailable("redis-server is not installed (scripts/ci-system-deps.sh installs it)")
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.socket = directory / "redis.sock" if unix else None
        self.port = 0 if unix else _free_port()
        self.password = password
        self.args = args
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        if self.socket is not None:
            return f"unix://{auth}{self.socket}?db=0"
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        redis = _redis()
        if self.socket is not None:
            return redis.Redis(unix_socket_path=str(self.socket), password=self.password, socket_timeout=5)
        return redis.Redis(host="127.0.0.1", port=self.port, password=self.password, socket_timeout=5)

    def start(self) -> None:
        cmd = [
            str(REDIS_SERVER), "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.directory),
            "--save", "", "--appendonly", "no", "--daemonize", "no", "--loglevel", "warning",
            "--logfile", str(self.directory / "redis.log"),
        ]
        if self.socket is not None:
            cmd += ["--unixsocket", str(self.socket), "--unixsocketperm", "700"]
        if self.password:
            cmd += ["--requirepass", self.password]
        cmd += list(self.args)
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        proc = self.proc

        def ours() -> bool:
            if proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with {proc.returncode}; see {self.directory}/redis.log")
            with self.client() as c:
                return int(c.info("server")["process_id"]) == proc.pid

        _wait(ours, 20, f"redis-server {self.url} to accept connections")

    def stop(self, sig: int = signal.SIGKILL) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(20)
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()


@pytest.fixture
def redis_server_factory(tmp_path: Path) -> Iterator[Callable[..., RedisServer]]:
    """Start private servers for one test: ``factory(unix=False, password=None, args=())``."""
    servers: list[RedisServer] = []

    def start(**kwargs: object) -> RedisServer:
        server = RedisServer(tmp_path / f"redis-{len(servers)}", **kwargs)  # type: ignore[arg-type]
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def private_redis(redis_server_factory: Callable[..., RedisServer]) -> RedisServer:
    """One private server on a free loopback port, stopped at the end of the test."""
    return redis_server_factory()


@pytest.fixture(scope="session")
def redis_cluster_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real 3-master Redis Cluster on loopback for the whole session, as a
    ``redis+cluster://127.0.0.1:<port>`` URL."""
    if REDIS_SERVER is None or REDIS_CLI is None:
        unavailable("redis-server / redis-cli are not installed (scripts/ci-system-deps.sh installs them)")
    redis = _redis()
    root = tmp_path_factory.mktemp("redis-cluster")
    procs: list[subprocess.Popen[bytes]] = []
    ports: list[int] = []
    try:
        for i in range(3):
            port = _free_port(also_free=10000)  # the cluster bus listens on port + 10000
            directory = root / f"node-{i}"
            directory.mkdir()
            procs.append(subprocess.Popen(
                [str(REDIS_SERVER), "--port", str(port), "--bind", "127.0.0.1", "--dir", str(directory),
                 "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf", "--cluster-node-timeout", "5000",
                 "--save", "", "--appendonly", "no", "--loglevel", "warning",
                 "--logfile", str(directory / "redis.log")],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            ))
            ports.append(port)
        for port, proc in zip(ports, procs, strict=True):
            def ours(port: int = port, proc: subprocess.Popen[bytes] = proc) -> bool:
                if proc.poll() is not None:
                    raise RuntimeError(f"cluster node on port {port} exited with {proc.returncode}")
                with redis.Redis(port=port, socket_timeout=5) as c:
                    return int(c.info("server")["process_id"]) == proc.pid

            _wait(ours, 20, f"cluster node {port}")
        subprocess.run(
            [str(REDIS_CLI), "--cluster", "create", *[f"127.0.0.1:{p}" for p in ports],
             "--cluster-replicas", "0", "--cluster-yes"],
            check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=60,
        )

        def healthy() -> bool:
            for port in ports:
                with redis.Redis(port=port, socket_timeout=5) as c:
                    info = {str(k): str(v) for k, v in c.execute_command("CLUSTER INFO").items()}
                    if info.get("cluster_state") != "ok" or info.get("cluster_slots_ok") != "16384":
                        return False
                    if info.get("cluster_known_nodes") != "3":
                        return False
            return True

        _wait(healthy, 60, "the cluster to report cluster_state:ok on every node")
        yield f"redis+cluster://127.0.0.1:{ports[0]}"
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                proc.wait(20)
