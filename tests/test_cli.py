"""The ``txlock`` command, driven as a real executable in subprocesses, on every backend.

Each test runs ``python -m txlock`` with ``TXLOCK_URL`` naming a private namespace of one
backend (``url_for`` from conftest). Backends that span processes (file, SQLite, the
embedded default, Redis, PostgreSQL) run every test; ``memory://`` cannot share a hold
between two invocations, so it runs only the tests of a single ``run``.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import txlock
from conftest import eventually, need_module, url_for

pytestmark = pytest.mark.cli

# Exit codes documented in txlock.cli (repeated here on purpose: they are an interface).
OK, FAILED, USAGE, BACKEND_ERROR, TIMED_OUT, LOCK_LOST, CONFIG = 0, 1, 2, 69, 75, 76, 78

SHARED = ["file", "sqlite", "default", "redis", "postgres"]


def _param(name: str) -> Any:
    mark = getattr(pytest.mark, "sqlite" if name == "default" else name)
    return pytest.param(name, marks=mark)


class Txlock:
    """Runs ``python -m txlock`` against one store."""

    def __init__(self, env: dict[str, str], tmp: Path) -> None:
        self.env = env
        self.tmp = tmp

    def argv(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "txlock", *args]

    def __call__(self, *args: str, timeout: float = 60, **kw: Any) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.argv(*args), env=self.env, capture_output=True, text=True, stdin=subprocess.DEVNULL,
            timeout=timeout, check=False, **kw,
        )

    def popen(self, *args: str, **kw: Any) -> subprocess.Popen[str]:
        kw.setdefault("stdout", subprocess.PIPE)
        kw.setdefault("stderr", subprocess.PIPE)
        return subprocess.Popen(self.argv(*args), env=self.env, text=True, stdin=subprocess.DEVNULL, **kw)

    def json(self, *args: str) -> Any:
        done = self("--json", *args)
        assert done.returncode in (OK, TIMED_OUT), done.stderr
        return json.loads(done.stdout)

    def holder(self, key: str) -> str | None:
        status = self.json("status", key)
        return status["holder"] if status["held"] else None


def _make(name: str, request: pytest.FixtureRequest, tmp_path: Path) -> Txlock:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TXLOCK_")}
    env["PYTHONUNBUFFERED"] = "1"
    if name == "default":
        url_for("sqlite", request, tmp_path)  # skips when the SQLite backend is missing
        env["XDG_STATE_HOME"] = str(tmp_path / "state")  # the embedded default lives here
    else:
        env["TXLOCK_URL"] = url_for(name, request, tmp_path)
    return Txlock(env, tmp_path)


@pytest.fixture(params=[_param(n) for n in SHARED])
def tx(request: pytest.FixtureRequest, tmp_path: Path) -> Txlock:
    """``txlock`` on a store shared by processes."""
    return _make(request.param, request, tmp_path)


@pytest.fixture(params=[_param(n) for n in ["memory", "file", "sqlite", "default"]])
def tx_any(request: pytest.FixtureRequest, tmp_path: Path) -> Txlock:
    """``txlock`` on any store, ``memory://`` included (for tests of one invocation)."""
    return _make(request.param, request, tmp_path)


@pytest.fixture
def tx_default(request: pytest.FixtureRequest, tmp_path: Path) -> Txlock:
    """``txlock`` on the embedded default store (for tests of the command's own logic)."""
    return _make("default", request, tmp_path)


@pytest.fixture
def tx_mem(request: pytest.FixtureRequest, tmp_path: Path) -> Txlock:
    """``txlock`` on ``memory://`` (for tests of the command line itself, which share nothing)."""
    return _make("memory", request, tmp_path)


# A child the tests run under `txlock run`: modes write markers to files so the tests can
# observe it without sleeping.
CHILD = textwrap.dedent(
    """
    import os, signal, sys, time
    mode, where = sys.argv[1], sys.argv[2]

    def note(text):
        with open(where, "a") as f:
            f.write(text + "\\n")

    if mode == "section":  # a short critical section bracketed by markers
        name = sys.argv[3]
        note(f"start {name} {time.monotonic()}")
        try:
            fd = os.open(where + ".inside", os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            note(f"OVERLAP {name}")
            raise SystemExit(1)
        os.close(fd)
        time.sleep(0.15)  # widen the window in which a broken lock would let another in
        os.unlink(where + ".inside")
        note(f"end {name} {time.monotonic()}")
        print(f"output of {name}")
    elif mode == "hold":  # report the pid, then run until signalled
        def on(sig, frame):
            note(f"got {signal.Signals(sig).name}")
            raise SystemExit(40 + sig)
        signal.signal(signal.SIGTERM, on)
        signal.signal(signal.SIGINT, on)
        note(f"pid {os.getpid()}")
        while True:
            time.sleep(1)  # idle until signalled (orders nothing)
    elif mode == "stubborn":  # ignores SIGTERM
        signal.signal(signal.SIGTERM, lambda sig, frame: note("ignored SIGTERM"))
        note(f"pid {os.getpid()}")
        while True:
            time.sleep(1)  # idle until killed (orders nothing)
    """
)


@pytest.fixture
def child(tmp_path: Path) -> Callable[..., list[str]]:
    script = tmp_path / "child.py"
    script.write_text(CHILD)

    def argv(mode: str, where: Path, *extra: str) -> list[str]:
        return [sys.executable, str(script), mode, str(where), *extra]

    return argv




def lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def child_pid(path: Path) -> int:
    found = eventually(lambda: [ln for ln in lines(path) if ln.startswith("pid ")], what="the child to start")
    return int(found[0].split()[1])


def gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except FileNotFoundError:
        return True


@pytest.fixture
def reap() -> Iterator[list[subprocess.Popen[str]]]:
    """Processes a test started; killed at teardown if the test left them running."""
    procs: list[subprocess.Popen[str]] = []
    yield procs
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=30)


# ---------------------------------------------------------------- run


def test_run_passes_the_exit_code_env_and_only_the_childs_stdout(tx_any: Txlock) -> None:
    code = "import os; e = os.environ; print(e['TXLOCK_KEY'], e['TXLOCK_HOLDER'], e['TXLOCK_TOKEN']); exit(7)"
    done = tx_any("run", "jobs:1", "--holder", "me", "--", sys.executable, "-c", code)
    assert done.returncode == 7, done.stderr
    key, holder, token = done.stdout.split()
    assert (key, holder) == ("jobs:1", "me")
    assert int(token) >= 1
    assert done.stderr == ""


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        (["true"], 0),
        (["false"], 1),
        (["sh", "-c", "exit 255"], 255),
        (["sh", "-c", "kill -9 $$"], 128 + 9),
        (["no-such-command-xyz"], 127),
    ],
)
def test_run_exit_codes_propagate(tx_mem: Txlock, command: list[str], expected: int) -> None:
    done = tx_mem("run", "k", "--", *command)
    assert done.returncode == expected, done.stderr
    assert done.stdout == ""
    if expected == 127:
        assert done.stderr == "txlock: error: command not found: no-such-command-xyz\n"


def test_two_runs_on_one_key_never_interleave(tx: Txlock, child: Callable[..., list[str]], tmp_path: Path) -> None:
    log = tmp_path / "log"
    names = ["a", "b", "c"]
    procs = [tx.popen("run", "shared", "--", *child("section", log, name)) for name in names]
    for name, proc in zip(names, procs, strict=True):
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        assert out == f"output of {name}\n"  # nothing but the child's output on stdout
    events = [ln.split() for ln in lines(log)]
    assert not [e for e in events if e[0] == "OVERLAP"]
    assert len(events) == 2 * len(names)
    for i in range(0, len(events), 2):  # start X, end X, start Y, end Y, ...
        assert events[i][0] == "start"
        assert events[i + 1][:2] == ["end", events[i][1]]
    spans = [(float(events[i][2]), float(events[i + 1][2])) for i in range(0, len(events), 2)]
    assert all(prev[1] <= nxt[0] for prev, nxt in itertools.pairwise(spans))
    assert tx.holder("shared") is None


def test_timeout_zero_on_a_held_key_exits_at_once(tx: Txlock, tmp_path: Path) -> None:
    assert tx("acquire", "k", "--ttl", "60", "--holder", "owner").returncode == OK
    marker = tmp_path / "ran"
    done = tx("run", "k", "--timeout", "0", "--", "touch", str(marker))
    assert done.returncode == TIMED_OUT
    assert not marker.exists()
    assert done.stdout == ""
    assert done.stderr.count("\n") == 1
    assert "'k'" in done.stderr and "owner" in done.stderr
    assert tx("wait", "k", "--timeout", "0").returncode == TIMED_OUT
    assert tx("acquire", "k", "--ttl", "5", "--timeout", "0").returncode == TIMED_OUT
    assert tx("--json", "wait", "k", "--timeout", "0").returncode == TIMED_OUT
    assert tx("release", "k", "--holder", "owner").returncode == OK
    assert tx("wait", "k", "--timeout", "0").returncode == OK
    assert tx("run", "k", "--timeout", "0", "--", "touch", str(marker)).returncode == OK
    assert marker.exists()


def test_a_sigkilled_run_frees_the_key_and_its_command_dies(
    tx: Txlock, child: Callable[..., list[str]], tmp_path: Path, reap: list[subprocess.Popen[str]]
) -> None:
    log = tmp_path / "log"
    proc = tx.popen("run", "k", "--holder", "doomed", "--", *child("hold", log))
    reap.append(proc)
    pid = child_pid(log)
    assert tx.holder("k") == "doomed"
    proc.kill()
    proc.wait(timeout=30)
    # Crash recovery: within the backend's bound (a flock or session at once, a heartbeat
    # lease within seconds).
    eventually(lambda: tx.holder("k") is None, timeout=60, what="crash recovery to free the key")
    if sys.platform.startswith("linux"):
        eventually(lambda: gone(pid), what="the command to die with txlock")
    assert tx("run", "k", "--timeout", "0", "--", "true").returncode == OK


def test_ls_and_status_show_what_is_held(tx: Txlock) -> None:
    assert tx("acquire", "jobs:1", "--ttl", "120", "--holder", "alice").returncode == OK
    assert tx("acquire", "jobs:2", "--ttl", "120", "--holder", "bob").returncode == OK
    assert tx("acquire", "other", "--ttl", "120", "--holder", "carol").returncode == OK

    listing = tx("ls")
    assert listing.returncode == OK, listing.stderr
    header, *rows = listing.stdout.splitlines()
    counted = tx.env.get("TXLOCK_URL", "").startswith(("redis", "postgres"))  # stores that count waiters
    columns = ["KEY", "HOLDER", "TOKEN", "HELD", "FOR", "EXPIRES", "IN"]
    assert header.split() == columns + (["WAITERS"] if counted else [])
    assert all(r.split()[-1] == "0" for r in rows) or not counted
    assert [r.split()[:2] for r in rows] == [["jobs:1", "alice"], ["jobs:2", "bob"], ["other", "carol"]]
    assert len({len(r.rstrip()) for r in rows}) == 1  # aligned

    only = tx("--json", "ls", "--prefix", "jobs:")
    locks = json.loads(only.stdout)
    assert [(x["key"], x["holder"]) for x in locks] == [("jobs:1", "alice"), ("jobs:2", "bob")]
    assert all(isinstance(x["token"], int) and 0 < x["expires_in"] <= 120 for x in locks)

    status = tx("status", "jobs:1")
    assert status.returncode == OK
    assert "held" in status.stdout and "alice" in status.stdout
    status_json = tx.json("status", "jobs:1")
    assert (status_json["held"], status_json["holder"]) == (True, "alice")
    assert status_json["token"] == locks[0]["token"]
    assert tx.json("status", "free-key") == {"key": "free-key", "held": False}


@pytest.mark.sqlite
def test_every_command_speaks_json(tx_default: Txlock) -> None:
    tx = tx_default
    acquired = tx.json("acquire", "k", "--ttl", "30", "--holder", "h")
    assert acquired["key"] == "k" and acquired["holder"] == "h" and isinstance(acquired["token"], int)
    assert tx.json("status", "k")["token"] == acquired["token"]
    assert [x["key"] for x in tx.json("ls")] == ["k"]
    refused = tx("release", "k", "--holder", "intruder", "--json")
    assert refused.returncode == FAILED
    assert json.loads(refused.stdout) == {"key": "k", "holder": "intruder", "released": False, "held_by": "h"}
    assert tx.json("release", "k", "--holder", "h")["released"] is True
    assert tx.json("wait", "k", "--timeout", "0")["free"] is True
    assert tx.json("acquire", "k", "--ttl", "30", "--holder", "h2")["token"] > acquired["token"]
    forced = tx.json("force-release", "k", "--yes")
    assert forced["released"] is True and forced["holder"] == "h2"
    assert tx.json("force-release", "k", "--yes")["released"] is False
    error = tx("--json", "acquire", "k")  # missing --ttl
    assert error.returncode == USAGE
    assert json.loads(error.stderr)["exit_code"] == USAGE


@pytest.mark.sqlite
def test_release_by_another_holder_is_refused(tx_default: Txlock) -> None:
    tx = tx_default
    assert tx("acquire", "k", "--ttl", "30", "--holder", "a").returncode == OK
    done = tx("release", "k", "--holder", "b")
    assert done.returncode == FAILED
    assert done.stderr.count("\n") == 1 and "'a'" not in done.stdout
    assert tx.holder("k") == "a"
    assert tx("release", "k", "--holder", "a").returncode == OK
    assert tx("release", "k", "--holder", "a").returncode == OK  # not held: a no-op


@pytest.mark.sqlite
def test_force_release_asks_and_refuses_without_a_terminal(tx_default: Txlock) -> None:
    tx = tx_default
    assert tx("acquire", "k", "--ttl", "30", "--holder", "a").returncode == OK
    done = tx("force-release", "k")  # stdin is not a terminal, no --yes
    assert done.returncode == USAGE
    assert "--yes" in done.stderr
    assert tx.holder("k") == "a"
    assert tx("force-release", "k", "--yes").returncode == OK
    assert tx.holder("k") is None


# ---------------------------------------------------------------- signals and lost locks


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signals_are_forwarded_and_the_lock_released_after(
    tx_any: Txlock, child: Callable[..., list[str]], tmp_path: Path, sig: signal.Signals
) -> None:
    log = tmp_path / "log"
    proc = tx_any.popen("run", "k", "--", *child("hold", log))
    try:
        child_pid(log)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert f"got {sig.name}" in lines(log)
    assert proc.returncode == 40 + sig, err  # the child's own exit code
    if "memory" not in tx_any.env.get("TXLOCK_URL", ""):
        assert tx_any.holder("k") is None


def test_a_signal_while_waiting_leaves_no_hold(tx: Txlock, reap: list[subprocess.Popen[str]]) -> None:
    assert tx("acquire", "k", "--ttl", "60", "--holder", "owner").returncode == OK
    waiting = tx.popen("run", "k", "--", "true")
    reap.append(waiting)
    waiting.send_signal(signal.SIGTERM)  # before or while it waits: either way it gives up
    waiting.communicate(timeout=30)
    assert waiting.returncode in (128 + signal.SIGTERM, -signal.SIGTERM)
    assert tx.holder("k") == "owner"
    assert tx("release", "k", "--holder", "owner").returncode == OK
    assert tx.holder("k") is None


@pytest.mark.parametrize("store", [_param("redis"), _param("postgres")])
def test_ctrl_c_while_waiting_exits_130_and_leaves_no_waiter(
    store: str, request: pytest.FixtureRequest, tmp_path: Path, reap: list[subprocess.Popen[str]]
) -> None:
    tx = _make(store, request, tmp_path)
    m = txlock.from_url(tx.env["TXLOCK_URL"])  # a store that counts its waiters
    try:
        assert m.acquire_lock("k", "owner", acquire_timeout=0)
        waiting = tx.popen("run", "k", "--", "true")
        reap.append(waiting)
        eventually(lambda: (m.inspect("k") or pytest.fail("released")).waiters == 1, what="txlock run to wait")
        header, row = tx("ls").stdout.splitlines()
        assert header.split()[-1] == "WAITERS" and row.split()[-1] == "1"
        assert "waiters     1" in tx("status", "k").stdout
        waiting.send_signal(signal.SIGINT)
        _, err = waiting.communicate(timeout=30)
        assert waiting.returncode == 128 + signal.SIGINT, err  # 130, not 1 ("refused")
        eventually(lambda: (m.inspect("k") or pytest.fail("released")).waiters == 0, what="the waiter to leave")
        assert m.is_lock_holder("k", "owner")
    finally:
        m.force_release("k")
        m.close()


def test_a_lost_lock_terminates_the_command(
    tx: Txlock, child: Callable[..., list[str]], tmp_path: Path, reap: list[subprocess.Popen[str]]
) -> None:
    _lose_the_lock(tx, child, tmp_path, reap, "hold", "1.5")


@pytest.mark.sqlite
@pytest.mark.parametrize(("mode", "ttl"), [("stubborn", "1.5"), ("hold", None)])
def test_a_lost_lock_kills_a_stubborn_command_and_is_noticed_without_ttl(
    tx_default: Txlock,
    child: Callable[..., list[str]],
    tmp_path: Path,
    reap: list[subprocess.Popen[str]],
    mode: str,
    ttl: str | None,
) -> None:
    _lose_the_lock(tx_default, child, tmp_path, reap, mode, ttl)


def _lose_the_lock(
    tx: Txlock,
    child: Callable[..., list[str]],
    tmp_path: Path,
    reap: list[subprocess.Popen[str]],
    mode: str,
    ttl: str | None,
) -> None:
    log = tmp_path / "log"
    options = ["--kill-after", "0.5"] + (["--ttl", ttl] if ttl else [])
    proc = tx.popen("run", "k", *options, "--", *child(mode, log))
    reap.append(proc)
    pid = child_pid(log)
    assert tx("force-release", "k", "--yes").returncode == OK
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == LOCK_LOST, err
    assert "lost" in err
    assert gone(pid)
    expected = "got SIGTERM" if mode == "hold" else "ignored SIGTERM"
    assert expected in lines(log)


# ---------------------------------------------------------------- errors


def _one_error_line(done: subprocess.CompletedProcess[str], code: int, *words: str) -> None:
    assert done.returncode == code, done.stderr
    assert done.stdout == ""
    assert done.stderr.startswith("txlock: error: ") and done.stderr.count("\n") == 1, done.stderr
    for word in words:
        assert word in done.stderr


@pytest.mark.parametrize(
    ("url", "code", "words"),
    [
        ("not a url", CONFIG, ["not a URL", "sqlite://"]),
        ("nope://x", CONFIG, ["unknown URL scheme 'nope'"]),
        ("memory://?colour=red", CONFIG, ["colour"]),
    ],
)
def test_bad_urls_are_one_line(tx_mem: Txlock, url: str, code: int, words: list[str]) -> None:
    _one_error_line(tx_mem("--url", url, "ls"), code, *words)
    _one_error_line(tx_mem("run", "--url", url, "k", "--", "true"), code, *words)


def test_an_unreachable_server_is_one_line(tx_mem: Txlock, request: pytest.FixtureRequest) -> None:
    need_module("txlock.backends.redis", "redis")
    # Port 1 on loopback: nothing listens there.
    done = tx_mem("--url", "redis://127.0.0.1:1/0", "status", "k")
    _one_error_line(done, BACKEND_ERROR, "127.0.0.1", "check that the server is running", "--url / $TXLOCK_URL")
    assert "next call" not in done.stderr  # advice for a library caller, not for a command
    assert done.stderr.count("running") == 1  # the advice once, not twice


def test_a_missing_extra_names_it(tx_mem: Txlock) -> None:
    need_module("txlock.backends.redis", "redis")
    code = "import sys; sys.modules['redis'] = None; from txlock.cli import main; main()"
    done = subprocess.run(
        [sys.executable, "-c", code, "--url", "redis://127.0.0.1:6379/0", "ls"],
        env=tx_mem.env, capture_output=True, text=True, check=False, timeout=60,
    )
    _one_error_line(done, CONFIG, "txlock[redis]")


def test_missing_click_is_one_line(tx_mem: Txlock) -> None:
    code = "import sys; sys.modules['click'] = None; from txlock.cli import main; main()"
    done = subprocess.run([sys.executable, "-c", code, "ls"], env=tx_mem.env, capture_output=True, text=True,
                          check=False, timeout=60)
    assert done.returncode == USAGE
    assert done.stderr == "txlock's command line needs click: pip install 'txlock[cli]'\n"


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["run", "k", "ls", "-l"], ["-l", "'--'"]),
        (["run", "k", "--bogus", "--", "true"], ["--bogus"]),
        (["acquire", "k"], ["--ttl"]),
        (["run", "k", "--timeout", "soon", "--", "true"], ["soon"]),
        (["run", "k", "--ttl", "0", "--", "true"], ["--ttl"]),
        (["run", "k", "--ttl", "0.001", "--", "echo", "ran"], ["--ttl", "minimum of 1s"]),
        (["acquire", "k", "--ttl", "500ms"], ["--ttl", "minimum of 1s"]),
        (["run", "--", "echo", "ran"], ["needs a KEY before '--'"]),
        (["--url", "memory://x", "run", "--timeout", "5", "--", "echo", "ran"], ["needs a KEY"]),
        (["frobnicate"], ["frobnicate"]),
    ],
)
def test_usage_errors_are_one_line(tx_mem: Txlock, args: list[str], words: list[str]) -> None:
    _one_error_line(tx_mem(*args), USAGE, *words)


def test_version_and_the_console_script(tx_mem: Txlock) -> None:
    done = tx_mem("--version")
    assert done.returncode == OK and done.stdout.startswith("txlock ")
    script = Path(sys.executable).with_name("txlock")
    if not script.exists():
        pytest.skip("the txlock console script is not installed next to this Python")
    done = subprocess.run([str(script), "run", "k", "--", "echo", "hi"], env=tx_mem.env, capture_output=True,
                          text=True, check=False, timeout=60)
    assert (done.returncode, done.stdout) == (OK, "hi\n")


def test_the_default_store_needs_no_configuration(request: pytest.FixtureRequest, tmp_path: Path) -> None:
    tx = _make("default", request, tmp_path)
    assert tx("acquire", "k", "--ttl", "30", "--holder", "h").returncode == OK
    assert tx.holder("k") == "h"
    assert any((tmp_path / "state").rglob("*")), "the default store should live in the user's state directory"
