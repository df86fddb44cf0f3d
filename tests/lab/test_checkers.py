"""The lab's own instruments, checked: history files, the three checkers, the fenced file.

Two kinds of test:

* hand-written histories with a known answer (an overlap of 5 ms, a release by a
  non-holder, a crashed holder recovered, a token that goes back, a torn line, ...), and a
  synthetic 10,000-grant history of a correct FIFO mutex (with and without crashes) that
  must pass, and fail once a single release is taken out;
* **negative controls**: three deliberately broken locks run by real processes on real
  files, whose histories the checkers must flag (each with the kind of violation its bug
  makes), and the **positive control**: the same workload on txlock's file backend, with 0
  violations of any kind.
"""

from __future__ import annotations

import heapq
import itertools
import multiprocessing
import random
import signal
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from _support import eventually
from lab.checkers import (
    Violation,
    check_accepted,
    check_all,
    check_fencing,
    check_linearizable,
    check_overlaps,
)
from lab.controls import Workload, run_worker, write_until_killed
from lab.fenced import FencedFile
from lab.history import Event, HistoryError, HistoryWriter, read_history
from lab.report import record, scaled

MS = 1_000_000


def ev(proc: str, op: str, phase: str, ms: float, key: str = "k", **fields: Any) -> Event:
    """An event at ``ms`` milliseconds (``valid_until_ms`` is converted too)."""
    until = fields.pop("valid_until_ms", None)
    return Event(proc, key, op, phase, int(ms * MS), valid_until_ns=None if until is None else int(until * MS),
                 **fields)


def hold(proc: str, start: float, end: float, token: int | None = None, **fields: Any) -> list[Event]:
    """acquire invoke/ok at ``start`` and release invoke/ok at ``end``."""
    return [ev(proc, "acquire", "invoke", start - 0.1), ev(proc, "acquire", "ok", start, token=token, **fields),
            ev(proc, "release", "invoke", end), ev(proc, "release", "ok", end + 0.1)]


def kinds(violations: list[Violation]) -> Counter[str]:
    """How many violations of each kind."""
    return Counter(violation.kind for violation in violations)


# ---------------------------------------------------------------------------------- history files


def test_history_round_trip_sorted_by_time(tmp_path: Path) -> None:
    with HistoryWriter(tmp_path, "a") as a, HistoryWriter(tmp_path, "b") as b:
        a.write("k", "acquire", "invoke", t_ns=10)
        b.write("k", "acquire", "invoke", t_ns=5)
        a.write("k", "acquire", "ok", t_ns=20, token=7, valid_until_ns=99, value={"x": [1, "é"]})
        returned = b.write("k", "acquire", "fail")
    events = read_history(tmp_path)
    assert [(event.proc, event.t_ns) for event in events][:3] == [("b", 5), ("a", 10), ("a", 20)]
    assert events[2] == Event("a", "k", "acquire", "ok", 20, 7, 99, {"x": [1, "é"]})
    assert events[3].t_ns == returned


def test_a_torn_last_line_is_dropped(tmp_path: Path) -> None:
    with HistoryWriter(tmp_path, "a") as writer:
        writer.write("k", "acquire", "invoke", t_ns=1)
        writer.write("k", "acquire", "ok", t_ns=2, token=1)
    with open(tmp_path / "a.jsonl", "ab") as out:
        out.write(b'{"proc": "a", "key": "k", "op": "rel')  # killed in the middle of a write
    assert [event.t_ns for event in read_history(tmp_path)] == [1, 2]


def test_a_damaged_line_that_is_not_last_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "a.jsonl"
    path.parent.mkdir()
    good = b'{"proc": "a", "key": "k", "op": "acquire", "phase": "invoke", "t_ns": 1}\n'
    path.write_bytes(good + b'{"proc": "a", "ke\n' + good)
    with pytest.raises(HistoryError, match=r"a\.jsonl:2"):
        read_history(tmp_path)


def test_a_new_writer_cuts_the_torn_tail_of_its_predecessor(tmp_path: Path) -> None:
    with HistoryWriter(tmp_path, "a") as writer:
        writer.write("k", "acquire", "invoke", t_ns=1)
    with open(tmp_path / "a.jsonl", "ab") as out:
        out.write(b'{"proc": "a", "key"')
    with HistoryWriter(tmp_path, "a") as writer:  # the respawned process, same name
        writer.write("k", "acquire", "invoke", t_ns=3)
    assert [event.t_ns for event in read_history(tmp_path)] == [1, 3]


def test_a_writer_killed_while_writing_leaves_a_readable_history(tmp_path: Path) -> None:
    context = multiprocessing.get_context("spawn")
    writer = context.Process(target=write_until_killed, args=(str(tmp_path), "victim"), daemon=True)
    writer.start()
    try:
        path = tmp_path / "victim.jsonl"
        eventually(lambda: path.exists() and path.stat().st_size > 100_000, 60, "the writer to write about 90 events")
    finally:
        writer.kill()  # SIGKILL our own child (the Process object we started), mid-stream
        writer.join(10)
    assert writer.exitcode == -signal.SIGKILL
    events = read_history(tmp_path)
    assert len(events) >= 50
    assert [event.token for event in events] == list(range(len(events)))
    with HistoryWriter(tmp_path, "victim") as again:
        again.write("k", "write", "invoke", token=-1)
    assert read_history(tmp_path)[-1].token == -1


# ---------------------------------------------------------------------------------- overlaps


def test_two_holders_overlap_and_the_overlap_is_measured() -> None:
    found = check_overlaps(hold("a", 0, 10) + hold("b", 5, 20))
    assert kinds(found) == {"overlap": 1}
    assert "5.000 ms" in found[0].detail
    assert {event.proc for event in found[0].events} == {"a", "b"}


def test_back_to_back_holds_do_not_overlap() -> None:
    # b's grant lands exactly when a starts releasing: the windows touch, they do not intersect.
    assert check_overlaps(hold("a", 0, 10) + hold("b", 10, 20) + hold("a", 20.5, 30)) == []


@pytest.mark.parametrize(("valid_until_ms", "expected"), [(5, 0), (8, 1)])
def test_a_lease_ends_the_window(valid_until_ms: float, expected: int) -> None:
    history = hold("a", 0, 30, valid_until_ms=valid_until_ms) + hold("b", 6, 20)
    assert len(check_overlaps(history)) == expected


@pytest.mark.parametrize("ending", [
    ev("a", "kill", "info", 5, key=""),
    ev("a", "lost", "info", 5),
    ev("a", "renew", "fail", 5),
])
def test_a_kill_or_a_loss_ends_the_window(ending: Event) -> None:
    history = [ev("a", "acquire", "ok", 0, token=1), ending, *hold("b", 6, 20, token=2)]
    assert check_overlaps(history) == []
    assert check_linearizable(history) == []


def test_a_reacquire_by_the_holder_extends_its_window() -> None:
    history = [ev("a", "acquire", "ok", 0, token=1, valid_until_ms=5),
               ev("a", "acquire", "ok", 4, token=1, valid_until_ms=20), *hold("b", 10, 30, token=2)]
    assert kinds(check_overlaps(history)) == {"overlap": 1}


def test_an_unknown_acquire_opens_no_window_but_its_accepted_write_shows() -> None:
    base = [ev("a", "acquire", "invoke", 0), ev("a", "acquire", "info", 1), *hold("b", 2, 20, token=2)]
    assert check_overlaps(base) == []
    rejected = [ev("a", "write", "invoke", 5, token=1), ev("a", "write", "fail", 6, token=1)]
    assert check_overlaps(base + rejected) == []
    accepted = [ev("a", "write", "invoke", 5, token=1), ev("a", "write", "ok", 6, token=1)]
    found = check_overlaps(base + accepted)
    assert kinds(found) == {"stale_write": 1}
    assert "b [" in found[0].detail


def test_a_holder_writing_past_its_lease_is_a_stale_write() -> None:
    history = [*hold("a", 0, 30, token=1, valid_until_ms=5), *hold("b", 6, 20, token=2),
               ev("a", "write", "invoke", 10, token=1), ev("a", "write", "ok", 11, token=1)]
    assert kinds(check_overlaps(history)) == {"stale_write": 1}


# ---------------------------------------------------------------------------------- linearizability


def test_a_sequential_history_is_linearizable() -> None:
    assert check_linearizable(hold("a", 0, 10) + hold("b", 11, 20) + hold("a", 21, 30)) == []


def test_two_grants_at_once_are_not() -> None:
    found = check_linearizable(hold("a", 0, 10) + hold("b", 5, 20))
    assert kinds(found) == {"not_linearizable": 1}
    assert "b acquire:ok" in found[0].detail and "held by a" in found[0].detail
    assert found[0].events


def test_concurrent_waiters_may_be_served_in_any_order() -> None:
    # b and c both wait during a's hold; c is served first although b asked first.
    history = [*hold("a", 0, 10), ev("b", "acquire", "invoke", 1), ev("c", "acquire", "invoke", 2),
               ev("c", "acquire", "ok", 11), ev("c", "release", "invoke", 15), ev("c", "release", "ok", 16),
               ev("b", "acquire", "ok", 17), ev("b", "release", "invoke", 18), ev("b", "release", "ok", 19)]
    assert check_linearizable(history) == []


@pytest.mark.parametrize(("release", "good"), [
    ("ok", False),   # a release that frees someone else's hold
    ("fail", True),  # NotLockHolder while a holds: right
])
def test_release_by_a_non_holder(release: str, good: bool) -> None:
    history = [*hold("a", 0, 10), ev("b", "release", "invoke", 4), ev("b", "release", release, 5)]
    assert (check_linearizable(history) == []) is good


@pytest.mark.parametrize(("release", "good"), [("ok", True), ("fail", False)])
def test_release_of_a_free_key(release: str, good: bool) -> None:
    history = [*hold("a", 0, 10), ev("b", "release", "invoke", 14), ev("b", "release", release, 15)]
    assert (check_linearizable(history) == []) is good


def test_an_unknown_acquire_may_explain_a_not_holder() -> None:
    refused = [ev("b", "release", "invoke", 5), ev("b", "release", "fail", 6)]
    assert kinds(check_linearizable(refused)) == {"not_linearizable": 1}
    unknown = [ev("a", "acquire", "invoke", 1), ev("a", "acquire", "info", 2)]
    assert check_linearizable(unknown + refused) == []
    # ... but not one that came after the refusal.
    late = [ev("a", "acquire", "invoke", 7), ev("a", "acquire", "info", 8)]
    assert kinds(check_linearizable(late + refused)) == {"not_linearizable": 1}


def test_an_unknown_release_may_or_may_not_have_freed() -> None:
    unknown = [ev("a", "acquire", "ok", 0), ev("a", "release", "invoke", 5), ev("a", "release", "info", 6)]
    assert check_linearizable([*unknown, *hold("b", 8, 10)]) == []
    assert check_linearizable([*unknown, ev("b", "release", "invoke", 8), ev("b", "release", "fail", 9)]) == []


@pytest.mark.parametrize(("killed", "good"), [(True, True), (False, False)])
def test_a_killed_holder_is_recovered(killed: bool, good: bool) -> None:
    history = [ev("a", "acquire", "ok", 0), ev("a", "acquire", "invoke", 3), *hold("b", 12, 20)]
    if killed:
        history.append(ev("a", "kill", "info", 10, key=""))
    assert (check_linearizable(history) == []) is good
    assert (check_overlaps(history) == []) is good


def test_a_grant_logged_by_a_process_after_its_kill_ends_with_it() -> None:
    # The killer took the time, then sent the signal; the victim logged one more grant.
    history = [ev("a", "acquire", "invoke", 0), ev("a", "kill", "info", 1, key=""),
               ev("a", "acquire", "ok", 1.01, token=1), *hold("b", 3, 8, token=2)]
    assert check_all(history) == []


def test_a_crashed_process_pending_acquire_may_land_after_its_death() -> None:
    # a's acquire was in flight when a was killed; it landed (b is refused), then crash
    # recovery freed it (c gets the key).
    history = [ev("a", "acquire", "invoke", 0), ev("a", "kill", "info", 1, key=""),
               ev("b", "release", "invoke", 3), ev("b", "release", "fail", 4), *hold("c", 6, 8)]
    assert check_linearizable(history) == []


@pytest.mark.parametrize(("valid_until_ms", "good"), [(5, True), (20, False)])
def test_a_lease_may_expire(valid_until_ms: float, good: bool) -> None:
    history = [ev("a", "acquire", "ok", 0, valid_until_ms=valid_until_ms), *hold("b", 6, 30),
               ev("a", "release", "invoke", 25), ev("a", "release", "fail", 26)]
    assert (check_linearizable(history) == []) is good


def test_a_renewal_moves_the_expiry() -> None:
    base = [ev("a", "acquire", "ok", 0, valid_until_ms=5)]
    renewed = [ev("a", "renew", "invoke", 3), ev("a", "renew", "ok", 4, valid_until_ms=15)]
    assert check_linearizable(base + hold("b", 8, 10)) == []
    assert kinds(check_linearizable(base + renewed + hold("b", 8, 10))) == {"not_linearizable": 1}
    assert check_linearizable(base + renewed + hold("b", 16, 20)) == []


def test_the_violation_is_the_smallest_unlinearizable_prefix() -> None:
    history = hold("a", 0, 10) + hold("b", 11, 20) + hold("c", 15, 30) + hold("a", 40, 50)
    found = check_linearizable(history)
    assert len(found) == 1
    assert "c acquire:ok" in found[0].detail
    assert max(event.t_ns for event in found[0].events) <= 30.1 * MS


def random_history(rng: random.Random, procs: int = 3, per_proc: int = 2) -> list[Event]:
    """A small random history: each process alternates acquire and release, with random
    times (so operations overlap) and random outcomes (ok, fail, unknown)."""
    events: list[Event] = []
    for index in range(procs):
        proc, now = f"p{index}", rng.randrange(0, 5)
        for step in range(per_proc * 2):
            op = "acquire" if step % 2 == 0 else "release"
            outcome = rng.choice(["ok", "ok", "ok", "fail", "info"])
            events.append(ev(proc, op, "invoke", now))
            now += rng.randrange(1, 8)
            events.append(ev(proc, op, outcome, now))
            now += rng.randrange(1, 4)
    return events


def brute_force_linearizable(events: list[Event]) -> bool:
    """An independent, exhaustive check of the same mutex model (small histories only):
    try every subset of the unknown operations and every order that respects real time."""
    pending: dict[str, Event] = {}
    ops: list[tuple[str, str, str, float, float]] = []  # proc, op, outcome, call, return
    for event in sorted(events, key=lambda event: event.t_ns):
        if event.phase == "invoke":
            pending[event.proc] = event
            continue
        call = pending.pop(event.proc).t_ns
        if event.op == "acquire" and event.phase == "fail":
            continue  # a timed-out acquire changed nothing
        ret = float("inf") if event.phase == "info" else event.t_ns
        ops.append((event.proc, event.op, event.phase, call, ret))
    unknown = [op for op in ops if op[2] == "info"]
    known = [op for op in ops if op[2] != "info"]

    def step(holder: str | None, op: tuple[str, str, str, float, float]) -> tuple[bool, str | None]:
        proc, name, outcome = op[:3]
        if name == "acquire":
            return holder in (None, proc), proc
        if outcome == "fail":
            return holder not in (None, proc), holder
        return holder in (None, proc), None  # release ok, or an unknown release that took effect

    def search(remaining: list[tuple[str, str, str, float, float]], holder: str | None) -> bool:
        if not remaining:
            return True
        for op in remaining:
            if any(other[4] < op[3] for other in remaining if other is not op):
                continue  # something that must come first is still waiting
            possible, after = step(holder, op)
            if possible and search([other for other in remaining if other is not op], after):
                return True
        return False

    for size in range(len(unknown) + 1):
        for chosen in itertools.combinations(unknown, size):
            if search(known + list(chosen), None):
                return True
    return False


def test_the_search_agrees_with_brute_force_on_random_histories() -> None:
    rng = random.Random(14)
    verdicts: Counter[bool] = Counter()
    for _ in range(scaled(300, 3_000)):
        history = random_history(rng)
        expected = brute_force_linearizable(history)
        assert (check_linearizable(history) == []) is expected, history
        verdicts[expected] += 1
    assert verdicts[True] and verdicts[False]  # both answers were exercised


def simulate_mutex(procs: int, grants: int, seed: int, *, crash_every: int = 0) -> list[Event]:
    """The history of a correct FIFO mutex server and its clients, with network delays.

    Requests reach the server 10-500 us after their invoke and replies come back 10-500 us
    after the server acted, so waiters' intervals overlap each other and the holder's. With
    ``crash_every``, about one grant in that many is followed by a kill of a random client
    (its pending operation never completes; the server frees what it held 5 ms later) and
    its respawn under a new name.
    """
    rng = random.Random(seed)
    events: list[Event] = []
    agenda: list[tuple[int, int, str, str]] = []
    counter = 0

    def later(at: int, what: str, proc: str) -> None:
        nonlocal counter
        counter += 1
        heapq.heappush(agenda, (at, counter, what, proc))

    alive = {f"p{index}" for index in range(procs)}
    for proc in sorted(alive):
        later(rng.randrange(1_000, 5_000), "invoke", proc)
    holder: str | None = None
    waiting: list[str] = []
    token = granted = respawns = 0
    tokens: dict[str, int] = {}
    while agenda and granted < grants:
        now, _, what, proc = heapq.heappop(agenda)
        if proc not in alive and what != "reap":
            continue
        if what == "invoke":
            events.append(Event(proc, "k", "acquire", "invoke", now))
            later(now + rng.randrange(10, 500), "arrive", proc)
        elif what == "arrive":
            waiting.append(proc)
        elif what == "granted":
            events.append(Event(proc, "k", "acquire", "ok", now, token=tokens[proc]))
            later(now + rng.randrange(100, 20_000), "release", proc)
        elif what == "release":
            events.append(Event(proc, "k", "release", "invoke", now))
            later(now + rng.randrange(10, 500), "free", proc)
        elif what == "free":
            holder = None if holder == proc else holder
            later(now + rng.randrange(10, 500), "released", proc)
        elif what == "released":
            events.append(Event(proc, "k", "release", "ok", now))
            later(now + rng.randrange(10, 3_000), "invoke", proc)
        elif what == "reap" and holder == proc:
            holder = None
        if holder is None and waiting:
            holder = waiting.pop(0)
            token += 1
            granted += 1
            tokens[holder] = token
            later(now + rng.randrange(10, 500), "granted", holder)
            if crash_every and rng.randrange(crash_every) == 0:
                victim = rng.choice(sorted(alive))
                events.append(Event(victim, "", "kill", "info", now + 1))
                alive.discard(victim)
                if victim in waiting:
                    waiting.remove(victim)
                later(now + 5_000_000, "reap", victim)
                respawns += 1
                fresh = f"{victim.split('.')[0]}.{respawns}"
                alive.add(fresh)
                later(now + 100_000, "invoke", fresh)
    return events


@pytest.mark.parametrize("crash_every", [0, 20])
def test_a_long_correct_history_passes_and_one_missing_release_fails(crash_every: int) -> None:
    grants = scaled(10_000, 100_000)
    history = simulate_mutex(8, grants, seed=crash_every, crash_every=crash_every)
    assert check_all(history) == []
    # Take one release out (of a process that is never killed): its holder keeps the key,
    # and the next grant overlaps it.
    killed = {event.proc for event in history if event.op == "kill"}
    middle = len(history) // 2
    index = next(index for index, event in enumerate(history[middle:], middle)
                 if event.op == "release" and event.phase == "invoke" and event.proc not in killed)
    proc = history[index].proc
    after = next(index2 for index2, event in enumerate(history[index + 1:], index + 1)
                 if event.proc == proc and event.op == "release")
    broken = history[:index] + history[index + 1:after] + history[after + 1:]
    assert kinds(check_linearizable(broken)) == {"not_linearizable": 1}
    assert kinds(check_overlaps(broken))["overlap"] >= 1
    record("checker_synthetic", "model", events=len(history), grants=grants,
           kills=sum(event.op == "kill" for event in history))


# ---------------------------------------------------------------------------------- fencing


def test_increasing_tokens_pass() -> None:
    assert check_fencing(hold("a", 0, 10, token=1) + hold("b", 11, 20, token=2) + hold("a", 21, 30, token=5)) == []


@pytest.mark.parametrize("second", [1, 2])
def test_a_token_that_does_not_grow_is_a_regression(second: int) -> None:
    found = check_fencing(hold("a", 0, 10, token=2) + hold("b", 11, 20, token=second))
    assert kinds(found) == {"token_regression": 1}


def test_concurrent_grants_are_not_ordered() -> None:
    # b's grant (token 1) and a's (token 2) were in flight together: either order is possible.
    history = [ev("a", "acquire", "invoke", 0), ev("b", "acquire", "invoke", 1),
               ev("a", "acquire", "ok", 5, token=2), ev("b", "acquire", "ok", 6, token=1)]
    assert check_fencing(history) == []


def test_a_reacquire_keeps_its_token_but_a_new_grant_does_not() -> None:
    again = [ev("a", "acquire", "invoke", 5), ev("a", "acquire", "ok", 6, token=1)]
    assert check_fencing([ev("a", "acquire", "invoke", 0), ev("a", "acquire", "ok", 1, token=1), *again]) == []
    released = hold("a", 0, 3, token=1)
    assert kinds(check_fencing(released + again)) == {"token_regression": 1}


def test_accepted_writes_never_go_down() -> None:
    writes = [ev("a", "write", "invoke", 1, token=3), ev("a", "write", "ok", 2, token=3),
              ev("b", "write", "invoke", 3, token=2), ev("b", "write", "fail", 4, token=2)]
    assert check_fencing(writes) == []
    accepted = [*writes[:2], ev("b", "write", "invoke", 3, token=2), ev("b", "write", "ok", 4, token=2)]
    assert kinds(check_fencing(accepted)) == {"write_regression": 1}
    assert check_accepted("k", [(1, "x"), (3, "y"), (3, "z")]) == []
    assert kinds(check_accepted("k", [(1, "x"), (3, "y"), (2, "z")])) == {"write_regression": 1}


# ---------------------------------------------------------------------------------- fenced file


def test_the_fenced_file_refuses_lower_tokens(tmp_path: Path) -> None:
    store = FencedFile(tmp_path / "store")
    assert store.highest() == 0
    assert store.accepted() == []
    assert store.write(5, "a")
    assert store.write(5, "a again")  # the same grant writes twice
    assert not store.write(4, "stale")
    assert store.write(9, 'b "quoted"\nline')
    assert not FencedFile(tmp_path / "store").write(8, "another handle, same file")
    assert store.highest() == 9
    assert store.accepted() == [(5, "a"), (5, "a again"), (9, 'b "quoted"\nline')]


def test_the_fenced_file_survives_a_writer_killed_mid_append(tmp_path: Path) -> None:
    store = FencedFile(tmp_path / "store")
    store.write(3, "x" * 10_000)  # longer than one tail read
    with open(store.path, "ab") as out:
        out.write(b"[7, \"tor")
    assert store.highest() == 3
    assert store.accepted() == [(3, "x" * 10_000)]
    assert not store.write(2, "stale")
    assert store.write(4, "next")
    assert store.accepted() == [(3, "x" * 10_000), (4, "next")]


# ---------------------------------------------------------------------------------- controls

PROCS = 6

CONTROLS = [
    # (workload kind, the violation its bug must produce, workload options)
    # A short acquire timeout: many workers give up while another holds, then release anyway.
    pytest.param("no_holder_check", "overlap", {"acquire_timeout": 0.003}, id="release-without-holder-check"),
    pytest.param("short_lease", "stale_write",
                 {"fenced": False, "lease_s": 0.002, "writes": 3, "work_s": 0.003}, id="lease-shorter-than-work"),
    pytest.param("racy_tas", "overlap", {}, id="non-atomic-test-and-set"),
]


def run_control(tmp_path: Path, kind: str, **options: Any) -> tuple[Workload, list[Event]]:
    """Run ``PROCS`` worker processes on one workload (lined up by an event); their history."""
    lock_dir = tmp_path / "lock"
    lock_dir.mkdir()
    workload = Workload(kind, str(lock_dir), str(tmp_path / "history"), str(tmp_path / "resource"),
                        rounds=scaled(40, 400), **options)
    context = multiprocessing.get_context("spawn")
    start = context.Event()
    workers = [context.Process(target=run_worker, args=(workload, f"w{index}", start), daemon=True)
               for index in range(PROCS)]
    for worker in workers:
        worker.start()
    start.set()
    try:
        for worker in workers:
            worker.join(120)
    finally:
        for worker in workers:
            if worker.is_alive():  # our own child (a Process object we started), hung
                worker.kill()
                worker.join(5)
    assert [worker.exitcode for worker in workers] == [0] * PROCS
    return workload, read_history(workload.history)


def summary(events: list[Event], violations: list[Violation]) -> dict[str, Any]:
    """The figures a control reports."""
    return {"processes": PROCS,
            "acquisitions": sum(event.op == "acquire" and event.phase == "ok" for event in events),
            "timeouts": sum(event.op == "acquire" and event.phase == "fail" for event in events),
            "writes_accepted": sum(event.op == "write" and event.phase == "ok" for event in events),
            "writes_rejected": sum(event.op == "write" and event.phase == "fail" for event in events),
            "violations": dict(kinds(violations))}


@pytest.mark.parametrize(("kind", "expected", "options"), CONTROLS)
def test_negative_control_is_flagged(tmp_path: Path, kind: str, expected: str, options: dict[str, Any]) -> None:
    _, events = run_control(tmp_path, kind, **options)
    found = check_all(events)
    figures = summary(events, found)
    record("checker_negative_control", kind, **figures)
    assert figures["acquisitions"] > PROCS
    assert kinds(found)[expected] >= 1, f"the checkers missed the seeded bug: {figures}"


@pytest.mark.parametrize("ttl", [None, 5.0], ids=["process-bound", "ttl"])
def test_positive_control_txlock_file_backend(tmp_path: Path, ttl: float | None) -> None:
    workload, events = run_control(tmp_path, "txlock", ttl=ttl)
    found = check_all(events)
    figures = summary(events, found)
    record("checker_positive_control", "file", ttl=ttl, **figures)
    assert found == [], "\n".join(map(str, found[:10]))
    assert figures["acquisitions"] >= PROCS
    accepted = FencedFile(workload.resource).accepted()
    assert len(accepted) == figures["writes_accepted"]
    assert check_accepted(workload.key, accepted) == []


def test_fencing_saves_the_store_from_the_short_lease(tmp_path: Path) -> None:
    """The lease bug again, writing to the fenced file: its stale writes are refused."""
    workload, events = run_control(tmp_path, "short_lease", lease_s=0.002, writes=3, work_s=0.003)
    figures = summary(events, check_all(events))
    record("checker_fenced_short_lease", "short_lease", **figures)
    assert figures["writes_rejected"] >= 1
    assert check_fencing(events) == []
    assert check_accepted(workload.key, FencedFile(workload.resource).accepted()) == []

