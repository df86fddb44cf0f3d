"""``txlock top``: the model (rates, order, filter) without a terminal; ``--once``, ``--json``
and the plain stream against every backend; the live view in a real terminal (tmux).

The command runs as ``python -m txlock`` in a subprocess; the holds it must show are taken
by the library in the test process (``memory://`` lives in one process, so there the
command sees an empty store).
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import txlock
from conftest import eventually, unavailable
from txlock.cli._top_model import (
    MODE_EXCLUSIVE,
    NOT_VISIBLE,
    GrantRate,
    WaitWindow,
    display_order,
    grants_between,
    header_fields,
    percentile,
    plain_lines,
    row_json,
    take_snapshot,
    waiters_total,
)

OK = 0
SHARED = ["file", "sqlite", "redis", "postgres", "redis_cluster"]


def _shared() -> Any:
    """Parametrize ``backend`` (and so ``url``) over the stores processes share."""
    return pytest.mark.parametrize("backend", [pytest.param(n, marks=getattr(pytest.mark, n)) for n in SHARED])


def _info(key: str, token: int, acquired_at: float = 100.0, waiters: int | None = None) -> txlock.LockInfo:
    return txlock.LockInfo(key, f"holder-of-{key}", token, acquired_at, None, waiters)


# ---------------------------------------------------------------------- the model


def test_rows_are_longest_held_first_and_filtered_by_prefix() -> None:
    locks = [_info("b", 1, 30.0), _info("a", 1, 10.0), _info("jobs:2", 1, 20.0), _info("jobs:1", 1, 20.0)]
    assert [i.key for i in display_order(locks)] == ["a", "jobs:1", "jobs:2", "b"]  # ties by key
    snapshot = take_snapshot(locks, prefix="jobs:", wall=50.0, monotonic=7.0)
    assert [i.key for i in snapshot.locks] == ["jobs:1", "jobs:2"]
    assert (snapshot.wall, snapshot.monotonic, snapshot.prefix) == (50.0, 7.0, "jobs:")
    assert [i.key for i in take_snapshot(locks, wall=0, monotonic=0).locks] == ["a", "jobs:1", "jobs:2", "b"]


def test_grants_are_counted_once_per_changed_token_and_new_key() -> None:
    before = take_snapshot([_info("same", 5), _info("regranted", 7), _info("gone", 1)], wall=0, monotonic=0)
    # A clock-seeded store (Redis, PostgreSQL) jumps by about a million a second: that is
    # one grant seen, not a million.
    after = take_snapshot([_info("same", 5), _info("regranted", 1_000_007), _info("new", 3)], wall=1, monotonic=1)
    assert grants_between(before, after) == 2
    assert grants_between(after, after) == 0


def test_the_acquisition_rate_is_a_floor_over_a_window_of_refreshes() -> None:
    rate = GrantRate(window=10.0)
    rate.add(take_snapshot([_info("a", 1)], wall=0, monotonic=0.0))
    assert rate.per_second() is None  # one look: nothing to compare with
    rate.add(take_snapshot([_info("a", 2), _info("b", 1)], wall=1, monotonic=1.0))  # 2 grants
    rate.add(take_snapshot([_info("a", 3), _info("b", 1)], wall=2, monotonic=2.0))  # 1 grant
    assert rate.per_second() == pytest.approx(1.5)
    rate.add(take_snapshot([_info("a", 3)], wall=20, monotonic=20.0))  # the older intervals leave the window
    assert rate.per_second() == pytest.approx(0.0)


def test_waiters_are_summed_where_the_store_counts_them() -> None:
    assert waiters_total(take_snapshot([_info("a", 1, waiters=2), _info("b", 1, waiters=1)])) == 3
    assert waiters_total(take_snapshot([_info("a", 1)])) is None


def test_wait_percentiles_cover_the_last_minute_of_this_process() -> None:
    assert percentile([3.0, 1.0, 2.0], 0.5) == 2.0
    window = WaitWindow(window=60.0, started=0.0)
    assert window.summary(now=1.0) is None  # nothing observed: the header says so
    for number in range(1, 101):
        window.record(when=10.0, waited=number / 1000, contended=number > 90)
    summary = window.summary(now=30.0)
    assert summary is not None
    assert (summary.acquisitions, summary.p50, summary.p99) == (100, 0.05, 0.099)
    assert summary.waits_per_second == pytest.approx(10 / 30)  # 10 contended in 30 s watched
    assert window.summary(now=71.0) is None  # a minute later they are gone


def test_the_wait_window_hears_the_real_observer_events() -> None:
    window = WaitWindow()
    manager = txlock.from_url(f"memory://top-{uuid.uuid4().hex[:8]}")
    txlock.add_observer(window)
    try:
        assert manager.acquire_lock("k", "a")
        assert not manager.acquire_lock("k", "b", acquire_timeout=0)
        manager.release_lock("k", "a")
    finally:
        txlock.remove_observer(window)
        manager.close()
    summary = window.summary()
    assert summary is not None
    assert (summary.acquisitions, summary.timed_out) == (1, 1)


def test_the_header_says_what_it_cannot_see() -> None:
    snapshot = take_snapshot([_info("a", 1)], prefix="a", wall=0, monotonic=0)
    fields = dict(header_fields("redis://:***@h/0", snapshot, acquisitions_per_second=None, counts_waiters=False,
                                waits=None))
    assert fields["store"] == "redis://:***@h/0"
    assert fields["keys"] == "1 (prefix a)"
    assert fields["acquisitions"].startswith("- ")
    assert fields["waiters"].startswith("- ")
    assert fields["wait times"] == NOT_VISIBLE == "not visible from here (see metrics)"
    counted = dict(header_fields("s", snapshot, acquisitions_per_second=2.5, counts_waiters=True, waits=None))
    assert counted["acquisitions"].startswith("≥ 2.5/s")
    assert counted["waiters"] == "0"


def test_plain_lines_and_json_rows() -> None:
    snapshot = take_snapshot([_info("new", 9, 90.0), _info("old", 4, 40.0, waiters=2)], wall=100.0, monotonic=0)
    lines = plain_lines([("store", "x"), ("keys", "2")], snapshot)
    assert lines[:3] == ["store  x", "keys   2", ""]
    assert lines[3].split() == ["KEY", "HOLDER", "MODE", "TOKEN", "HELD", "FOR", "EXPIRES", "IN", "WAITERS"]
    assert [line.split()[0] for line in lines[4:]] == ["old", "new"]
    assert lines[4].split()[2:] == [MODE_EXCLUSIVE, "4", "1m00s", "-", "2"]
    assert plain_lines([("store", "x")], take_snapshot([]))[-1] == "(no locks held)"
    assert row_json(_info("k", 3, 90.0), 100.0) == {
        "key": "k", "holder": "holder-of-k", "token": 3, "acquired_at": 90.0, "expires_at": None,
        "held_for": 10.0, "expires_in": None, "waiters": None, "mode": MODE_EXCLUSIVE,
    }


# ---------------------------------------------------------------------- the command


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TXLOCK_")}
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _txlock(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "txlock", *args], env=_env(), capture_output=True, text=True,
        stdin=subprocess.DEVNULL, timeout=60, check=False,
    )


def _holds(manager: txlock.BaseLockManager) -> list[tuple[str, str, int]]:
    return [(i.key, i.holder, i.token) for i in manager.list_locks()]


@pytest.mark.cli
def test_once_and_json_show_the_holds_longest_held_first(url: str, manager: txlock.BaseLockManager) -> None:
    # Grants in the same millisecond tie on acquired_at, then sort by key: name them in order.
    old = manager.acquire_lease("top:a-old", "alice", 0, 120)
    assert old is not None
    assert manager.acquire_lock("top:b-new", "bob", acquire_timeout=0)
    assert manager.acquire_lock("zz:other", "carol", acquire_timeout=0)
    seen = not url.startswith("memory:")  # memory:// lives in this process only
    try:
        before = _holds(manager)
        done = _txlock("top", "--url", url, "--json", "--prefix", "top:")
        assert done.returncode == OK, done.stderr
        rows = json.loads(done.stdout)
        assert [(r["key"], r["holder"], r["mode"]) for r in rows] == (
            [("top:a-old", "alice", MODE_EXCLUSIVE), ("top:b-new", "bob", MODE_EXCLUSIVE)] if seen else []
        )
        if seen:
            assert rows[0]["token"] == old.token and 0 < rows[0]["expires_in"] <= 120
            assert rows[1]["expires_in"] is None  # a hold bound to its process
            listed = json.loads(_txlock("ls", "--url", url, "--json").stdout)
            assert set(rows[0]) == set(listed[0]) | {"mode"}  # ls's fields, and the mode

        once = _txlock("--url", url, "top", "--once")
        assert once.returncode == OK, once.stderr
        lines = once.stdout.splitlines()
        assert lines[0].split()[0] == "store" and "keys" in lines[1]
        assert "not visible from here (see metrics)" in once.stdout
        table = lines[lines.index("") + 1:]
        assert table[0].split()[:3] == ["KEY", "HOLDER", "MODE"]
        if seen:
            assert [r.split()[0] for r in table[1:]] == ["top:a-old", "top:b-new", "zz:other"]
            assert all(r.split()[2] == MODE_EXCLUSIVE for r in table[1:])
        else:
            assert table[1:] == ["(no locks held)"]
        assert _holds(manager) == before  # top never changes the store
    finally:
        manager.release_lock("top:a-old", "alice")
        manager.release_lock("top:b-new", "bob")
        manager.release_lock("zz:other", "carol")


@pytest.mark.cli
@pytest.mark.sqlite
def test_not_a_terminal_streams_snapshots_and_ctrl_c_exits_0(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/locks.db"
    manager = txlock.from_url(url)
    top = subprocess.Popen(
        [sys.executable, "-m", "txlock", "top", "--url", url, "--interval", "0.2"], env=_env(),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True,
    )
    stream, errors = top.stdout, top.stderr
    assert stream is not None and errors is not None
    try:

        def next_snapshot() -> list[str]:
            """The next header and table top printed (a blank line ends each)."""
            block: list[str] = []
            for line in stream:
                if line == "\n" and any(b.startswith("KEY") for b in block):
                    return block
                block.append(line.rstrip("\n"))
            pytest.fail(f"top ended with {top.wait()}: {errors.read()}")

        first = next_snapshot()
        assert any(line.startswith("acquisitions  - ") for line in first)  # one look: no rate yet
        assert manager.acquire_lock("streamed", "me", acquire_timeout=0)
        shown = next_snapshot()
        while not any(line.startswith("streamed ") for line in shown):
            shown = next_snapshot()
        rate = next(line for line in shown if line.startswith("acquisitions"))
        assert rate.split()[1] == "≥" and float(rate.split()[2].removesuffix("/s")) > 0, rate
        top.send_signal(signal.SIGINT)
        top.communicate(timeout=30)
        assert top.returncode == OK
    finally:
        if top.poll() is None:
            top.kill()
            top.communicate(timeout=30)
        manager.release_lock("streamed", "me")
        manager.close()


@pytest.mark.cli
@pytest.mark.sqlite
def test_txlock_run_does_not_import_rich(tmp_path: Path) -> None:
    code = (
        "import sys\nfrom txlock.cli import main\ntry:\n    main(sys.argv[1:])\nexcept SystemExit as stop:\n"
        "    print(stop.code, 'rich' in sys.modules, 'txlock.cli._top' in sys.modules)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, "--url", f"sqlite:///{tmp_path}/l.db", "run", "k", "--", "true"],
        env=_env(), capture_output=True, text=True, timeout=60, check=False,
    )
    assert done.stdout.split() == ["0", "False", "False"], done.stderr


# ---------------------------------------------------------------------- a real terminal


#: Seconds between two reads of the screen (each read is a tmux process).
_LOOK = 0.05


class Tmux:
    """A private tmux server (its own socket, no configuration file)."""

    def __init__(self, tmp: Path) -> None:
        self.socket = f"txlock-test-{uuid.uuid4().hex[:12]}"
        self.tmp = tmp

    def __call__(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["tmux", "-L", self.socket, "-f", os.devnull, *args], capture_output=True, text=True, timeout=30,
            check=False, stdin=subprocess.DEVNULL, env=_env(),
        )

    def start_top(self, url: str) -> None:
        """``txlock top`` in a 120x30 terminal; when it ends, its exit code and the
        terminal's settings (``stty -a``) are written to files."""
        script = self.tmp / "top.sh"
        # The shell gets Ctrl-C too: it must outlive top (a trap, not an ignored signal,
        # which top would inherit) to report top's exit code.
        script.write_text(
            f"trap : INT\n{shlex.quote(sys.executable)} -m txlock top --url {shlex.quote(url)} --interval 0.2\n"
            f"code=$?\nstty -a > {self.tmp}/stty.txt\necho $code > {self.tmp}/exit.txt\n"
        )
        started = self("new-session", "-d", "-s", "top", "-x", "120", "-y", "30", f"sh {shlex.quote(str(script))}")
        assert started.returncode == 0, started.stderr

    def screen(self) -> str:
        return self("capture-pane", "-p", "-t", "top").stdout

    def ended(self) -> tuple[int, list[str]]:
        """top's exit code and the terminal's settings after it, once the script is done."""
        code = eventually(lambda: (self.tmp / "exit.txt").exists() and (self.tmp / "exit.txt").read_text().strip(),
                          what="txlock top to exit")
        return int(code), (self.tmp / "stty.txt").read_text().split()


@pytest.fixture
def tmux(tmp_path: Path) -> Iterator[Tmux]:
    if shutil.which("tmux") is None:
        unavailable("tmux is not installed (scripts/ci-system-deps.sh installs it)")
    terminal = Tmux(tmp_path)
    try:
        yield terminal
    finally:
        terminal("kill-server")


def _restored(settings: list[str]) -> bool:
    """Whether the terminal is back in ordinary line mode with echo (top turns both off)."""
    return "icanon" in settings and "echo" in settings


@pytest.mark.cli
@_shared()
def test_the_live_view_follows_the_store_and_q_quits(url: str, manager: txlock.BaseLockManager, tmux: Tmux) -> None:
    tmux.start_top(url)
    eventually(lambda: "no locks held" in tmux.screen(), what="the view", interval=_LOOK)
    assert manager.acquire_lock("tmux:key", "tmux-holder", acquire_timeout=0)
    try:
        row = eventually(
            lambda: next((line for line in tmux.screen().splitlines() if "tmux:key" in line), None),
            what="the view to show the key", interval=_LOOK,
        )
        assert row.split()[1:3] == ["tmux-holder", MODE_EXCLUSIVE]
    finally:
        manager.release_lock("tmux:key", "tmux-holder")
    eventually(lambda: "tmux:key" not in (screen := tmux.screen()) and "no locks held" in screen,
               what="the view to drop the key", interval=_LOOK)
    assert tmux("send-keys", "-t", "top", "q").returncode == 0
    code, settings = tmux.ended()
    assert code == OK
    assert _restored(settings), settings


@pytest.mark.cli
@pytest.mark.sqlite
def test_ctrl_c_in_the_live_view_exits_0_and_restores_the_terminal(tmp_path: Path, tmux: Tmux) -> None:
    tmux.start_top(f"sqlite:///{tmp_path}/locks.db")
    eventually(lambda: "q or Ctrl-C quits" in tmux.screen(), what="the view", interval=_LOOK)
    assert tmux("send-keys", "-t", "top", "C-c").returncode == 0
    code, settings = tmux.ended()
    assert code == OK
    assert _restored(settings), settings
