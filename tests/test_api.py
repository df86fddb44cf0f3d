"""Library-wide behaviour: URLs, errors, lazy imports, public surface."""

from __future__ import annotations

import math
import pickle
import subprocess
import sys

import pytest

import txlock
from conftest import need_module


def test_unknown_scheme_names_the_accepted_ones() -> None:
    with pytest.raises(txlock.ConfigurationError, match=r"unknown URL scheme 'mysql'.*memory://"):
        txlock.from_url("mysql://localhost/x")
    with pytest.raises(txlock.ConfigurationError, match="is not a URL"):
        txlock.from_url("just-a-name")
    with pytest.raises(TypeError):
        txlock.from_url(42)  # type: ignore[arg-type]


def test_unknown_options_name_the_accepted_ones() -> None:
    with pytest.raises(txlock.ConfigurationError, match=r"unknown option\(s\) colour; .*acquire_timeout"):
        txlock.from_url("memory://x?colour=red")
    with pytest.raises(txlock.ConfigurationError, match="not a number of seconds"):
        txlock.from_url("memory://x?acquire_timeout=soon")
    with pytest.raises(txlock.ConfigurationError, match="must be >= 0"):
        txlock.from_url("memory://x?acquire_timeout=-1")
    with pytest.raises(txlock.ConfigurationError, match="not a boolean"):
        txlock.from_url("memory://x?raise_on_timeout=maybe")
    with pytest.raises(txlock.ConfigurationError, match="has a path"):
        txlock.from_url("memory://x/y")


def test_options_in_url_and_keywords() -> None:
    m = txlock.from_url("memory://opts?acquire_timeout=2.5&raise_on_timeout=yes")
    assert m.url == "memory://opts?acquire_timeout=2.5&raise_on_timeout=true"
    assert txlock.from_url("memory://opts", acquire_timeout=2.5, raise_on_timeout=True) == m
    with pytest.raises(ValueError, match="acquire_timeout"):
        txlock.MemoryLockManager("x", acquire_timeout=-1)
    with pytest.raises(TypeError, match="raise_on_timeout"):
        txlock.MemoryLockManager("x", raise_on_timeout="yes")  # type: ignore[arg-type]


def test_txlock_url_environment_variable_is_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TXLOCK_URL", "memory://from-env")
    assert txlock.default_url() == "memory://from-env"
    assert txlock.from_url() == txlock.MemoryLockManager("from-env")


def test_errors_form_one_tree_and_pickle() -> None:
    errors = [
        txlock.LockTimeout("k", 1.5, "h"),
        txlock.NotLockHolder("k", "b", "a"),
        txlock.LockLost("k", "h", "gone"),
        txlock.ConfigurationError("bad"),
        txlock.MissingDependency("install txlock[redis]"),
        txlock.BackendUnavailable("down"),
        txlock.CorruptRecord("torn"),
    ]
    for error in errors:
        assert isinstance(error, txlock.LockError)
        clone = pickle.loads(pickle.dumps(error))
        assert type(clone) is type(error) and str(clone) == str(error)
    assert isinstance(errors[0], TimeoutError)
    assert str(errors[0]) == "could not acquire lock 'k' within 1.5s (held by 'h')"
    assert str(txlock.LockTimeout("k", 0)) == "could not acquire lock 'k' at once"
    assert isinstance(errors[1], ValueError)
    assert isinstance(errors[3], ValueError)
    assert isinstance(errors[4], ImportError)
    assert isinstance(errors[5], ConnectionError) and isinstance(errors[5], txlock.BackendError)


def test_import_is_light() -> None:
    code = (
        "import sys, txlock\n"
        "m = txlock.from_url('memory://x'); m.acquire_lock('k', 'h')\n"
        "heavy = [n for n in ('redis', 'psycopg', 'click', 'prefect', 'sqlite3') if n in sys.modules]\n"
        "print(','.join(heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_public_names_are_documented() -> None:
    assert txlock.__all__ == sorted(txlock.__all__)
    for name in txlock.__all__:
        obj = getattr(txlock, name)
        if callable(obj):
            assert obj.__doc__, name


def test_dir_shows_the_public_names() -> None:
    assert dir(txlock) == sorted(txlock.__all__)
    assert "RedisLockManager" in dir(txlock) and "TYPE_CHECKING" not in dir(txlock)


def test_one_rule_and_one_message_for_every_bad_hold_timeout() -> None:
    m = txlock.MemoryLockManager()
    messages = set()
    for bad in (-1, 0, 0.0, math.inf, math.nan):
        with pytest.raises(ValueError, match="finite number of seconds > 0") as caught:
            m.acquire_lock("k", "h", hold_timeout=bad)
        messages.add(str(caught.value).rsplit("got", 1)[0])
    assert len(messages) == 1
    assert not m.is_locked("k")


def test_renew_without_a_lease_says_what_to_pass() -> None:
    m = txlock.MemoryLockManager()
    assert m.acquire_lease("k", "a") is not None
    missed = m.acquire_lease("k", "b", timeout=0)  # timed out: None
    with pytest.raises(TypeError, match="acquire_lease returns None when it times out"):
        m.renew(missed)  # type: ignore[arg-type]


def test_schemes_cover_every_backend() -> None:
    assert {"memory", "file", "sqlite", "redis", "rediss", "unix", "postgresql"} <= set(txlock.schemes())


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("file:relative/dir", "needs an absolute path"),
        ("file://host/dir", "names a host"),
        ("sqlite:relative.db", "needs an absolute path"),
        ("sqlite://", "has no path"),
        ("sqlite://otherhost/tmp/x.db", "three slashes"),
    ],
)
def test_local_store_urls_need_an_absolute_path(url: str, message: str) -> None:
    with pytest.raises(txlock.ConfigurationError, match=message):
        txlock.from_url(url)


@pytest.mark.parametrize(
    ("url", "meant"),
    [
        ("redis:/127.0.0.1:1", "redis://127.0.0.1:1"),
        ("redis:prod-redis:6379/0", "redis://prod-redis:6379/0"),
        ("redis:///prod-redis:6379", "redis://prod-redis:6379"),
        ("rediss:/cache.example:6380", "rediss://cache.example:6380"),
        ("redis+cluster:/node:7000", "redis+cluster://node:7000"),
        ("redis:/:secret@prod:6379", "redis://:***@prod:6379"),
        ("unix:/tmp/redis.sock", "unix:///tmp/redis.sock"),
        ("postgresql:/db.example:5432/app", "postgresql://db.example:5432/app"),
        ("postgres:///db.example:5432/app", "postgres://db.example:5432/app"),
        ("postgresql:", "postgresql://"),
        ("sqlite:/tmp/locks.db", "sqlite:///tmp/locks.db"),
        ("file:/tmp/locks", "file:///tmp/locks"),
        ("memory:name", "memory://name"),
    ],
)
def test_urls_whose_slashes_change_their_meaning_are_refused_with_the_meant_url(url: str, meant: str) -> None:
    # A missing slash would otherwise connect to this machine: every host its own lock.
    with pytest.raises(txlock.ConfigurationError) as caught:
        txlock.from_url(url)
    assert f"did you mean {meant!r}" in str(caught.value)
    assert "secret" not in str(caught.value)


def test_host_less_urls_that_mean_this_machine_still_work() -> None:
    need_module("redis", "redis")
    need_module("psycopg", "postgres")
    assert txlock.from_url("redis://").url == "redis:///0"
    assert txlock.from_url("postgresql:///test").url == "postgresql:///test"  # the local socket
    assert txlock.from_url("postgresql://").url == "postgresql://"


def test_a_bad_txlock_url_says_it_came_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TXLOCK_URL", "redis:/prod:6379")
    with pytest.raises(txlock.ConfigurationError, match=r"^\$TXLOCK_URL: 'redis:/prod:6379' is missing"):
        txlock.from_url()
