"""A private Redis primary, one replica and one Sentinel on loopback, for the failover scenario.

Everything runs on 127.0.0.1 ports that were free, in the test's temporary directory, and
is started by the test itself: :class:`SentinelSet` kills only servers it started, after
checking that the port still answers with the pid it started (``INFO server``'s
``process_id``). Readiness (replication up, Sentinel's view of the primary and replica,
a promotion) is polled with :func:`eventually`, never slept for.

``SentinelSet.url(...)`` is the ``redis+sentinel://`` URL of the service; ``failover()``
kills the primary, waits until Sentinel has promoted the replica, then brings the old
primary back as a replica of the new one and waits until the set can fail over again.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest

from _support import eventually, need_module, unavailable
from plugins.redis_servers import RedisServer, _free_port

__all__ = ["SERVICE", "SentinelSet", "sentinel_set"]

#: The name Sentinel monitors the primary by.
SERVICE = "txlab"
#: Sentinel's failure detection: a primary silent this long is down (Sentinel's default is 30 s).
DOWN_AFTER_MS = 1500
#: Sentinel's failover timeout (default 3 min); also the pause between two failover attempts.
FAILOVER_TIMEOUT_MS = 2000
#: A full resync starts at once (Redis waits 5 s by default for more replicas to share it).
FAST_SYNC = ("--repl-diskless-sync-delay", "0")
#: The longest a promotion or a resync may take before the test fails.
READY_TIMEOUT = 30.0


def _redis() -> Any:
    """The ``redis`` module (or skip/fail through :func:`need_module`)."""
    need_module("redis", "redis")
    import redis

    return redis


class SentinelSet:
    """Two ``redis-server`` processes (a primary and its replica) and one Sentinel watching them."""

    def __init__(self, directory: Path, *, down_after_ms: int = DOWN_AFTER_MS,
                 failover_timeout_ms: int = FAILOVER_TIMEOUT_MS) -> None:
        if shutil.which("redis-server") is None:
            unavailable("redis-server is not installed (scripts/ci-system-deps.sh installs it)")
        self.directory = directory
        self.redis = _redis()
        first = RedisServer(directory / "node-a", args=FAST_SYNC)
        second = RedisServer(directory / "node-b", args=(*FAST_SYNC, "--replicaof", "127.0.0.1", str(first.port)))
        self.nodes = [first, second]
        self.failovers = 0
        self.sentinel_proc: subprocess.Popen[bytes] | None = None
        try:
            self._start_sentinel(first, down_after_ms, failover_timeout_ms)
        except BaseException:
            self.stop()
            raise

    def _start_sentinel(self, first: RedisServer, down_after_ms: int, failover_timeout_ms: int) -> None:
        """Start the Sentinel once the replica is in sync; wait until it sees the set."""
        self._wait_synced(first, self.nodes[1])
        self.sentinel_port = _free_port()
        self._sentinel_dir = self.directory / "sentinel"
        self._sentinel_dir.mkdir(parents=True, exist_ok=True)
        config = self._sentinel_dir / "sentinel.conf"
        config.write_text(
            f"port {self.sentinel_port}\n"
            "bind 127.0.0.1\n"
            f"dir {self._sentinel_dir}\n"
            f"logfile {self._sentinel_dir / 'sentinel.log'}\n"
            "loglevel notice\n"
            f"sentinel monitor {SERVICE} 127.0.0.1 {first.port} 1\n"
            f"sentinel down-after-milliseconds {SERVICE} {down_after_ms}\n"
            f"sentinel failover-timeout {SERVICE} {failover_timeout_ms}\n"
            f"sentinel parallel-syncs {SERVICE} 1\n",
            encoding="utf-8",
        )
        self.sentinel_proc = subprocess.Popen(
            [str(shutil.which("redis-server")), str(config), "--sentinel"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        proc = self.sentinel_proc

        def sentinel_is_ours() -> bool:
            if proc.poll() is not None:
                raise RuntimeError(f"redis-sentinel exited with {proc.returncode}; see {self._sentinel_dir}")
            with self._sentinel_client() as client:
                return int(client.info("server")["process_id"]) == proc.pid

        eventually(sentinel_is_ours, READY_TIMEOUT, "the private Sentinel to accept connections",
                   ignoring=(self.redis.RedisError, OSError), interval=0.01)
        self.wait_ready()

    # ---------------------------------------------------------------- naming

    def url(self, **options: object) -> str:
        """The ``redis+sentinel://`` URL of the service, with ``options`` as its query."""
        query = urlencode({name: str(value) for name, value in options.items()})
        return f"redis+sentinel://127.0.0.1:{self.sentinel_port}/{SERVICE}/0" + (f"?{query}" if query else "")

    def _sentinel_client(self) -> Any:
        return self.redis.Redis(host="127.0.0.1", port=self.sentinel_port, socket_timeout=5, decode_responses=True)

    def _named_port(self) -> int:
        """The primary's port as Sentinel names it now."""
        with self._sentinel_client() as client:
            _, port = client.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", SERVICE)
        return int(port)

    def _node(self, port: int) -> RedisServer:
        for node in self.nodes:
            if node.port == port:
                return node
        raise AssertionError(f"Sentinel names port {port}, which is none of this set's servers")

    @property
    def primary(self) -> RedisServer:
        """The server Sentinel names as the primary."""
        return self._node(self._named_port())

    @property
    def replica(self) -> RedisServer:
        """The other server."""
        primary = self.primary
        return next(node for node in self.nodes if node is not primary)

    # ---------------------------------------------------------------- state

    def _role(self, node: RedisServer) -> dict[str, Any]:
        with node.client() as client:
            return {str(k): v for k, v in client.info("replication").items()}

    def _wait_synced(self, primary: RedisServer, replica: RedisServer) -> None:
        """Until ``replica`` replicates ``primary`` with its link up and the primary sees it online."""

        def synced() -> bool:
            info = self._role(replica)
            if info.get("role") != "slave" or int(info.get("master_port", 0)) != primary.port:
                return False
            if info.get("master_link_status") != "up":
                return False
            seen = self._role(primary)
            return seen.get("role") == "master" and any(
                isinstance(value, dict) and int(value.get("port", 0)) == replica.port and value.get("state") == "online"
                for value in seen.values()
            )

        eventually(synced, READY_TIMEOUT, f"replica {replica.port} to sync with primary {primary.port}",
                   ignoring=(self.redis.RedisError, OSError), interval=0.01)

    def wait_ready(self) -> None:
        """Until Sentinel names a live primary and knows a healthy replica it could promote."""

        def ready() -> bool:
            primary = self.primary
            if self._role(primary).get("role") != "master":
                return False
            with self._sentinel_client() as client:
                replicas = client.execute_command("SENTINEL", "REPLICAS", SERVICE)
            for entry in replicas:
                fields = dict(zip(entry[::2], entry[1::2], strict=True)) if isinstance(entry, list) else entry
                flags = str(fields.get("flags", ""))
                if ("s_down" in flags or "disconnected" in flags or fields.get("master-link-status") != "ok"
                        or int(fields.get("master-port", 0)) != primary.port):
                    continue
                return True
            return False

        eventually(ready, READY_TIMEOUT, "Sentinel to see a primary and a healthy replica",
                   ignoring=(self.redis.RedisError, OSError), interval=0.01)

    # ---------------------------------------------------------------- faults

    def cut_replication(self) -> None:
        """Close the primary's replication links (``CLIENT KILL TYPE replica``): the replica
        reconnects on its own within about a second, and writes made meanwhile reach it only
        then. The state of a lagging or reconnecting replica, on demand."""
        with self.primary.client() as client:
            client.execute_command("CLIENT", "KILL", "TYPE", "replica")

    def kill_primary(self) -> RedisServer:
        """SIGKILL the primary (after checking the port still answers with the pid we started)."""
        victim = self.primary
        proc = victim.proc
        assert proc is not None and proc.poll() is None, "the primary is not a process this set started"
        with victim.client() as client:
            answered = int(client.info("server")["process_id"])
        assert answered == proc.pid, f"port {victim.port} answers with pid {answered}, not ours ({proc.pid})"
        victim.stop(signal.SIGKILL)
        return victim

    def wait_promoted(self, old: RedisServer) -> RedisServer:
        """Until Sentinel names the other server and that server is a primary; that server."""

        def promoted() -> RedisServer | None:
            port = self._named_port()
            if port == old.port:
                return None
            node = self._node(port)
            return node if self._role(node).get("role") == "master" else None

        new = eventually(promoted, READY_TIMEOUT, f"Sentinel to promote a replica after killing {old.port}",
                         ignoring=(self.redis.RedisError, OSError), interval=0.01)
        self.failovers += 1
        return new

    def rejoin(self, old: RedisServer, new: RedisServer) -> None:
        """Start the killed server again as a replica of the new primary; wait until the set
        can fail over again."""
        old.args = (*FAST_SYNC, "--replicaof", "127.0.0.1", str(new.port))
        old.start()
        self._wait_synced(new, old)
        self.wait_ready()
        self.wait_acknowledging()

    def wait_acknowledging(self) -> None:
        """Until the primary's writes are acknowledged by the replica (``WAIT 1`` answers):
        a link reported up can still be finishing its sync."""

        def acknowledged() -> bool:
            with self.primary.client() as client:
                client.set("txlab:probe", "1")
                return int(client.execute_command("WAIT", 1, 200)) >= 1

        eventually(acknowledged, READY_TIMEOUT, "the replica to acknowledge a write (WAIT 1)",
                   ignoring=(self.redis.RedisError, OSError), interval=0.05)

    def failover(self, between: Callable[[RedisServer], None] | None = None) -> RedisServer:
        """Kill the primary, wait for the promotion, call ``between(new primary)``, bring the
        old primary back as a replica. Returns the new primary."""
        old = self.kill_primary()
        new = self.wait_promoted(old)
        if between is not None:
            between(new)
        self.rejoin(old, new)
        return new

    def stop(self) -> None:
        """Stop every process of the set (the servers through their own ``stop``)."""
        proc, self.sentinel_proc = self.sentinel_proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait(20)
        for node in self.nodes:
            node.stop()


@pytest.fixture
def sentinel_set(tmp_path: Path) -> Iterator[SentinelSet]:
    """A private primary + replica + Sentinel for one test, stopped at its end."""
    trio = SentinelSet(tmp_path / "sentinel-set")
    try:
        # A test may ask for wait_replicas at once: the replica must be in sync and
        # acknowledging writes (WAIT answered) first.
        trio._wait_synced(trio.primary, trio.replica)
        trio.wait_ready()
        trio.wait_acknowledging()
        yield trio
    finally:
        trio.stop()
