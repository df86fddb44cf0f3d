"""``txlock doctor``: the checks against real stores, through the command and the library.

Every backend (the ``url`` fixture) gets the whole run, ``--quick --json``: every check of
its backend is there, the exit code is the worst status, and the scratch key is gone
afterwards. Then the deployments doctor must flag: a private Redis that evicts any key and
keeps nothing on disk, a private PostgreSQL behind pgbouncer in transaction mode (LISTEN
impossible: a warning), a schema that does not exist yet (doctor must not create it), a
lock directory that does not exist yet or that its group may write.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

import txlock
from txlock import _doctor

pytestmark = [pytest.mark.cli, pytest.mark.processes]

COMMON = {"reachability", "round-trip", "live-contention"}
LOCAL = {"filesystem", "permissions", "free-space", "inotify"}
EXPECTED = {
    "memory": COMMON,
    "file": COMMON | LOCAL,
    "sqlite": COMMON | LOCAL | {"store"},
    "redis": COMMON | {"clock-skew", "deployment-mode", "replication", "persistence", "eviction", "acl"},
    "postgres": COMMON | {"server-version", "clock-skew", "schema", "listen", "privileges", "timeouts"},
}
EXPECTED["redis_cluster"] = EXPECTED["redis"]
RANK = {"pass": 0, "warn": 1, "fail": 2}


def doctor(*args: str, timeout: float = 90) -> tuple[int, list[dict[str, str]]]:
    """``python -m txlock doctor --quick --json ARGS``: the exit code and the checks."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("TXLOCK_")}
    done = subprocess.run(
        [sys.executable, "-m", "txlock", "doctor", "--quick", "--json", *args], env=env, capture_output=True,
        text=True, stdin=subprocess.DEVNULL, timeout=timeout, check=False,
    )
    assert done.stdout, done.stderr
    return done.returncode, json.loads(done.stdout)


def by_name(checks: list[dict[str, str]]) -> dict[str, dict[str, str]]:
    return {check["check"]: check for check in checks}


def assert_well_formed(code: int, checks: list[dict[str, str]]) -> None:
    for check in checks:
        assert set(check) == {"check", "status", "detail", "advice"}, check
        assert check["status"] in RANK, check
        assert check["detail"], check
        if check["status"] != "pass":
            assert check["advice"], check  # every warning and failure says what to do
    assert code == max(RANK[check["status"]] for check in checks), checks


def test_every_backend(backend: str, url: str, manager: txlock.BaseLockManager) -> None:
    manager.is_locked("doctor-test:create")  # the store exists, as in a deployment in use
    code, checks = doctor(url)
    assert_well_formed(code, checks)
    found = by_name(checks)
    assert EXPECTED[backend] <= set(found), sorted(found)
    live = found["live-contention"]
    assert live["status"] == "pass", live
    assert "never two holders" in live["detail"] and "p99" in live["detail"]
    assert found["reachability"]["status"] == "pass"
    assert "cleanup" not in found, found.get("cleanup")
    assert manager.list_locks(_doctor.SCRATCH_PREFIX) == []  # the scratch key is gone
    if backend in ("file", "sqlite"):
        assert found["filesystem"]["status"] == "pass", found["filesystem"]


@pytest.mark.redis
def test_redis_that_evicts_locks_and_keeps_nothing(redis_server_factory: Any) -> None:
    server = redis_server_factory(args=("--maxmemory-policy", "allkeys-lru", "--appendonly", "no"))
    code, checks = doctor(server.url + "?prefix=doctor-test:")
    assert_well_formed(code, checks)
    found = by_name(checks)
    assert found["eviction"]["status"] == "fail", found["eviction"]
    assert "allkeys-lru" in found["eviction"]["detail"] and "noeviction" in found["eviction"]["advice"]
    assert found["persistence"]["status"] == "warn", found["persistence"]
    assert "appendonly no" in found["persistence"]["detail"]
    assert found["replication"]["status"] == "pass"
    assert found["deployment-mode"]["status"] == "pass"
    assert found["acl"]["status"] == "pass"
    assert found["live-contention"]["status"] == "pass"
    assert code == 2
    with server.client() as client:  # nothing but the scratch key's leftover token record was written
        assert all(name.startswith(b"doctor-test:") for name in client.keys("*"))


@pytest.mark.redis
def test_redis_that_persists_and_never_evicts(redis_server_factory: Any) -> None:
    server = redis_server_factory(args=(
        "--maxmemory-policy", "noeviction", "--appendonly", "yes", "--appendfsync", "always",
    ))
    code, checks = doctor(server.url)
    assert_well_formed(code, checks)
    found = by_name(checks)
    assert found["eviction"]["status"] == "pass"
    assert found["persistence"]["status"] == "pass", found["persistence"]
    assert code == 0, checks


@pytest.mark.redis
def test_redis_acl_without_the_scripts(redis_server_factory: Any) -> None:
    server = redis_server_factory(password="secret")
    with server.client() as client:
        client.execute_command("ACL", "SETUSER", "nolua", "on", ">pw", "~*", "&*", "+@all", "-eval", "-evalsha")
    url = f"redis://nolua:pw@127.0.0.1:{server.port}/0"
    code, checks = doctor(url)
    found = by_name(checks)
    assert found["acl"]["status"] == "fail", found["acl"]
    assert "EVALSHA" in found["acl"]["detail"] and "+evalsha" in found["acl"]["advice"]
    assert found["live-contention"]["status"] == "fail"
    assert ":pw@" not in json.dumps(checks)  # no password in the report
    assert code == 2


@pytest.mark.redis
def test_managed_redis_that_refuses_config(redis_server_factory: Any) -> None:
    server = redis_server_factory(password="secret")
    with server.client() as client:  # no CONFIG, INFO or ACL DRYRUN, as on many managed services
        client.execute_command("ACL", "SETUSER", "app", "on", ">pw", "~*", "&*", "+@all", "-@admin", "-@dangerous")
    code, checks = doctor(f"redis://app:pw@127.0.0.1:{server.port}/0")
    assert_well_formed(code, checks)
    found = by_name(checks)
    for name in ("persistence", "eviction"):
        assert found[name]["status"] == "warn", found[name]
        assert "cannot read the configuration" in found[name]["detail"]
    assert found["acl"]["status"] == "pass" and "tried instead" in found["acl"]["detail"], found["acl"]
    assert found["live-contention"]["status"] == "pass"
    assert code == 1


@pytest.mark.postgres
def test_postgres_behind_pgbouncer(private_postgres: Any, pgbouncer: Any) -> None:
    with txlock.from_url(private_postgres.url) as direct:
        direct.is_locked("doctor-test:create")  # the tables exist (made on the server directly)
    code, checks = doctor(pgbouncer.url + f"?prefix=d{uuid.uuid4().hex[:8]}:")
    assert_well_formed(code, checks)
    found = by_name(checks)
    # Decided: a warning, not a failure. Locks stay correct behind the pooler; waiters poll.
    assert found["listen"]["status"] == "warn", found["listen"]
    assert "LISTEN is not possible" in found["listen"]["detail"]
    assert found["schema"]["status"] == "pass"
    assert found["live-contention"]["status"] == "pass", found["live-contention"]
    assert code == 1, checks
    code, checks = doctor(private_postgres.url)
    assert by_name(checks)["listen"]["status"] == "pass"


@pytest.mark.postgres
def test_postgres_schema_not_created_yet(private_postgres: Any) -> None:
    schema = f"doctor_{uuid.uuid4().hex[:8]}"
    code, checks = doctor(private_postgres.url + f"?schema={schema}")
    assert_well_formed(code, checks)
    found = by_name(checks)
    assert found["schema"]["status"] == "pass" and "do not exist yet" in found["schema"]["detail"]
    assert found["live-contention"]["status"] == "warn" and "not run" in found["live-contention"]["detail"]
    assert found["round-trip"]["status"] == "pass"
    import psycopg

    with psycopg.connect(private_postgres.url) as conn:  # doctor created nothing
        assert conn.execute("SELECT to_regnamespace(%s)", [schema]).fetchone() == (None,)


@pytest.mark.file
def test_file_store_on_a_normal_directory_passes(tmp_path: Path) -> None:
    url = f"file://{tmp_path}/locks"
    txlock.from_url(url).close()
    code, checks = doctor(url)
    assert_well_formed(code, checks)
    assert code == 0, checks
    assert {check["status"] for check in checks} == {"pass"}


@pytest.mark.file
def test_file_directory_its_group_may_write(tmp_path: Path) -> None:
    txlock.from_url(f"file://{tmp_path}/locks").close()
    os.chmod(tmp_path / "locks", 0o770)
    code, checks = doctor(f"file://{tmp_path}/locks")
    assert by_name(checks)["permissions"]["status"] == "warn"
    assert code == 1


@pytest.mark.file
def test_missing_lock_directory_is_not_created(tmp_path: Path) -> None:
    checks = _doctor.run_checks(f"file://{tmp_path}/missing", live_seconds=_doctor.QUICK_SECONDS)
    found = {check.check: check for check in checks}
    assert found["store"].status == "pass" and "does not exist yet" in found["store"].detail
    assert found["live-contention"].status == "warn"
    assert not (tmp_path / "missing").exists()


@pytest.mark.sqlite
def test_missing_sqlite_database_is_not_created(tmp_path: Path) -> None:
    checks = _doctor.run_checks(f"sqlite:///{tmp_path}/locks.db", live_seconds=_doctor.QUICK_SECONDS)
    assert {check.check for check in checks} >= LOCAL | {"store", "live-contention"}
    assert list(tmp_path.iterdir()) == []


def test_bad_url_is_a_failure() -> None:
    code, checks = doctor("nope://x")
    assert code == 2 and checks[0]["check"] == "configuration" and checks[0]["status"] == "fail"


def test_network_filesystems_are_refused() -> None:
    from txlock._doctor_filesystem import _network_reason

    for kind in ("nfs4", "cifs", "fuse.sshfs", "9p"):
        assert _network_reason(kind, sqlite=False)
    assert "WAL" in str(_network_reason("nfs", sqlite=True))
    assert _network_reason("ext4", sqlite=True) is None


@pytest.mark.redis
def test_every_script_command_has_dry_run_arguments() -> None:
    from txlock.backends.redis import doctor as redis_doctor

    assert {"HSET", "PEXPIRE", "PUBLISH", "TIME"} <= set(redis_doctor.SCRIPT_COMMANDS)  # read from the scripts
    for command in (*redis_doctor.SCRIPT_COMMANDS, *redis_doctor.CLIENT_COMMANDS):
        redis_doctor.sample_arguments(command, [b"h", b"q", b"w", b"v"], "c")  # KeyError: the table is missing one
