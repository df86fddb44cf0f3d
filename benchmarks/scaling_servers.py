"""Private Redis and PostgreSQL servers for the scaling suite (``benchmarks/scaling.py``).

The scaling curves count server commands while waiters wait, fill stores with a million keys
and kill clients, so they never touch the machine's shared servers: each run starts its own
``redis-server`` and its own PostgreSQL cluster (``initdb`` + ``pg_ctl``, run as the
unprivileged ``postgres`` account when we are root) on a free loopback port, in a temporary
directory removed afterwards. A server is only ever stopped after checking that the running
process is the one started here.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

RUN_AS = "postgres"


def free_port() -> int:
    """A loopback TCP port that is free now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _until(predicate: object, seconds: float, what: str) -> None:
    """Call ``predicate`` until it returns True (errors mean "not yet"), at most ``seconds``."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if predicate():  # type: ignore[operator]
                return
        except Exception:
            pass
        time.sleep(0.02)
    raise RuntimeError(f"timed out waiting for {what}")


class PrivateRedis:
    """A ``redis-server`` of our own: no persistence, room for many clients."""

    def __init__(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed")
        self.dir = Path(tempfile.mkdtemp(prefix="txlock-scaling-redis-"))
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.dir), "--save", "",
             "--appendonly", "no", "--maxclients", "15000", "--loglevel", "warning",
             "--logfile", str(self.dir / "redis.log")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        _until(self._ours, 20, f"redis-server on port {self.port}")

    def _ours(self) -> bool:
        import redis

        if self.proc.poll() is not None:
            raise RuntimeError(f"redis-server exited with {self.proc.returncode}")
        with redis.Redis(port=self.port, socket_timeout=5) as c:
            return int(c.info("server")["process_id"]) == self.proc.pid

    def destroy(self) -> None:
        """Stop the server (it is our child process) and remove its directory."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(20)
        shutil.rmtree(self.dir, ignore_errors=True)


def _pg_bin(name: str) -> str:
    found = shutil.which(name)
    if found:
        return found
    for root in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (root / name).exists():
            return str(root / name)
    raise RuntimeError(f"{name} is not installed")


def _as_user(cmd: list[str]) -> list[str]:
    return ["runuser", "-u", RUN_AS, "--", *cmd] if os.geteuid() == 0 else cmd


class PrivatePostgres:
    """A PostgreSQL cluster of our own, with ``pg_stat_statements`` loaded when it exists so
    that the statements a run sends can be counted exactly."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="txlock-scaling-pg-"))
        if os.geteuid() == 0:
            import pwd

            entry = pwd.getpwnam(RUN_AS)
            os.chown(self.dir, entry.pw_uid, entry.pw_gid)
        self.data = self.dir / "data"
        self.port = free_port()
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        subprocess.run(_as_user([_pg_bin("initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres",
                                 "--no-sync"]), check=True, capture_output=True)
        options = (f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off"
                   " -c full_page_writes=off -c max_connections=300")
        libdir = subprocess.run([_pg_bin("pg_config"), "--pkglibdir"], capture_output=True, text=True,
                                check=False).stdout.strip()
        self.statements = bool(libdir) and (Path(libdir) / "pg_stat_statements.so").exists()
        if self.statements:
            options += " -c shared_preload_libraries=pg_stat_statements -c pg_stat_statements.track=all"
        subprocess.run(_as_user([_pg_bin("pg_ctl"), "-D", str(self.data), "-l", str(self.dir / "server.log"),
                                 "-o", options, "-w", "start"]), check=True, capture_output=True)
        import psycopg

        def answers() -> bool:
            with psycopg.connect(self.url, connect_timeout=2, autocommit=True) as conn:
                if self.statements:
                    conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
            return True

        _until(answers, 30, f"PostgreSQL on port {self.port}")

    def _ours(self) -> bool:
        """Whether the postmaster running from our data directory is alive."""
        try:
            lines = (self.data / "postmaster.pid").read_text().splitlines()
            return lines[1] == str(self.data) and Path(f"/proc/{int(lines[0])}").exists()
        except (OSError, ValueError, IndexError):
            return False

    def destroy(self) -> None:
        """Stop the cluster (after checking it is ours) and remove its directory."""
        if self._ours():
            subprocess.run(_as_user([_pg_bin("pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop"]),
                           check=False, capture_output=True)
        shutil.rmtree(self.dir, ignore_errors=True)
