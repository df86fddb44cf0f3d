"""Fixtures that start private PostgreSQL servers (and a pgbouncer in front of one).

The machine's shared server is used by the conformance suite; tests that stop, restart or
kill a server, or need a transaction-pooling proxy, get a private instance instead:
``initdb`` + ``pg_ctl`` in a fresh temporary directory, on a free loopback port with its unix
socket in the same directory, run as an unprivileged user (PostgreSQL refuses root). Every
command that stops a server first checks that the running postmaster is the one started
here (its pid file lives in our data directory and names our process).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from _support import eventually, need_module, unavailable

RUN_AS = "postgres"  # an unprivileged account; created if missing when running as root


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _pg_bin(name: str) -> str:
    found = shutil.which(name)
    if found:
        return found
    for root in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (root / name).exists():
            return str(root / name)
    unavailable(f"{name} is not installed")


def _as_user(cmd: list[str]) -> list[str]:
    if os.geteuid() != 0:
        return cmd
    try:
        import pwd

        pwd.getpwnam(RUN_AS)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", RUN_AS], check=True)
    return ["runuser", "-u", RUN_AS, "--", *cmd]


def _chown(path: Path) -> None:
    if os.geteuid() == 0:
        import pwd

        entry = pwd.getpwnam(RUN_AS)
        os.chown(path, entry.pw_uid, entry.pw_gid)


def _wait_connectable(url: str, timeout: float = 30) -> None:
    """Wait until the server at ``url`` answers a query: connection errors mean "not yet"."""
    need_module("psycopg", "postgres")
    import psycopg

    def answers() -> bool:
        with psycopg.connect(url, connect_timeout=2) as conn:
            conn.execute("SELECT 1")
        return True

    eventually(answers, timeout, f"the server at {url} to accept connections", ignoring=psycopg.Error, interval=0.05)


class PrivatePostgres:
    """A PostgreSQL instance owned by the test session."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="txlock-pg-"))
        _chown(self.dir)
        self.data = self.dir / "data"
        self.sock = self.dir
        self.port = _free_port()
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        self.log = self.dir / "server.log"
        subprocess.run(
            _as_user([_pg_bin("initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync"]),
            check=True,
            capture_output=True,
        )
        self.start()

    def _ours(self) -> int | None:
        """The postmaster pid if it is running from our data directory, else None."""
        pidfile = self.data / "postmaster.pid"
        try:
            lines = pidfile.read_text().splitlines()
            pid = int(lines[0])
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (OSError, ValueError, IndexError):
            return None
        return pid if str(self.data) in cmdline or lines[1] == str(self.data) else None

    def start(self) -> None:
        options = (
            f"-p {self.port} -k {self.sock} -c listen_addresses=127.0.0.1 -c fsync=off"
            " -c full_page_writes=off -c max_connections=200"
        )
        subprocess.run(
            _as_user([_pg_bin("pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-o", options, "-w", "start"]),
            check=True,
            capture_output=True,
        )
        _wait_connectable(self.url)

    def stop(self, mode: str = "fast") -> None:
        if self._ours() is None:
            return
        subprocess.run(
            _as_user([_pg_bin("pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop"]),
            check=True,
            capture_output=True,
        )

    def running(self) -> bool:
        return self._ours() is not None

    def ensure_running(self) -> None:
        if not self.running():
            self.start()

    def destroy(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.dir, ignore_errors=True)


class PgBouncer:
    """pgbouncer in transaction-pooling mode in front of a private server."""

    def __init__(self, server: PrivatePostgres) -> None:
        binary = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"
        if not Path(binary).exists():
            unavailable("pgbouncer is not installed (scripts/ci-system-deps.sh installs it)")
        self.dir = Path(tempfile.mkdtemp(prefix="txlock-pgb-"))
        _chown(self.dir)
        self.port = _free_port()
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        (self.dir / "users.txt").write_text('"postgres" ""\n')
        (self.dir / "pgbouncer.ini").write_text(
            "[databases]\n"
            f"* = host=127.0.0.1 port={server.port}\n"
            "[pgbouncer]\n"
            "listen_addr = 127.0.0.1\n"
            f"listen_port = {self.port}\n"
            "unix_socket_dir =\n"
            "auth_type = trust\n"
            f"auth_file = {self.dir}/users.txt\n"
            "pool_mode = transaction\n"
            "default_pool_size = 4\n"
            "max_client_conn = 500\n"
            "ignore_startup_parameters = extra_float_digits,options\n"
            f"logfile = {self.dir}/pgbouncer.log\n"
        )
        for name in ("users.txt", "pgbouncer.ini"):
            _chown(self.dir / name)
        self.proc = subprocess.Popen(
            _as_user([binary, str(self.dir / "pgbouncer.ini")]),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        _wait_connectable(self.url)

    def destroy(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(scope="session")
def private_postgres() -> Iterator[PrivatePostgres]:
    """A private PostgreSQL server for this test session (tests may stop and restart it,
    and must leave it running)."""
    if shutil.which("pg_ctl") is None and not list(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl")):
        unavailable("pg_ctl is not installed")
    server = PrivatePostgres()
    try:
        yield server
    finally:
        server.destroy()


@pytest.fixture
def postgres_server(private_postgres: PrivatePostgres) -> Iterator[PrivatePostgres]:
    """The private server, guaranteed running before and after the test."""
    private_postgres.ensure_running()
    yield private_postgres
    private_postgres.ensure_running()


@pytest.fixture(scope="session")
def pgbouncer(private_postgres: PrivatePostgres) -> Iterator[PgBouncer]:
    """A pgbouncer (pool_mode=transaction) in front of the private server."""
    bouncer = PgBouncer(private_postgres)
    try:
        yield bouncer
    finally:
        bouncer.destroy()
