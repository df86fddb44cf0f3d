"""Checkers for lock histories (see :mod:`lab.history`): exclusion, linearizability, fencing.

Three independent views of one history, each returning a list of :class:`Violation`:

* :func:`check_overlaps`: the *validity windows* of two processes on one key must not
  intersect, and a write a process got accepted while it held nothing must not fall inside
  another process's window. A window is what the client could know: it opens at an acquire's
  ``ok`` and closes at the first of its release's ``invoke``, its ``valid_until_ns``, a
  ``kill`` of its process and a ``lost`` of its process on the key. Kinds: ``overlap``,
  ``stale_write``.
* :func:`check_linearizable`: is there an order of the operations, each placed between its
  invoke and its completion, that a mutex could have produced? A Wing & Gong search with
  Lowe's memoisation, extended for locks that end by themselves (lease expiry, crash
  recovery after a ``kill``, a ``lost`` hold) and for operations whose outcome is unknown
  (``info``, or never completed). Kind: ``not_linearizable``.
* :func:`check_fencing`: grants that follow one another in real time carry strictly
  increasing tokens, and accepted writes never go down in token. Kinds:
  ``token_regression``, ``write_regression``.

Processes are identified by ``proc``, which is also the lock *holder*: a re-acquire by the
same ``proc`` is the idempotent re-acquire of the protocol (it keeps the grant and its token).
A ``proc`` name is one process life: a ``kill`` ends every hold of its process, also one
granted after the kill event was written (the victim runs on for a moment after the
killer took the time), so a respawned process must take a new name.
"""

from __future__ import annotations

import bisect
import heapq
import itertools
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

from lab.history import Event

__all__ = [
    "CheckerLimit",
    "Op",
    "Violation",
    "Window",
    "check_accepted",
    "check_all",
    "check_fencing",
    "check_linearizable",
    "check_overlaps",
    "operations",
    "validity_windows",
]

#: Stands for "no end known" in window arithmetic (far beyond any monotonic_ns value).
FOREVER = 1 << 62

_LOCK_OPS = frozenset({"acquire", "release", "renew"})


@dataclass(frozen=True)
class Violation:
    """One thing a checker found wrong: its ``kind``, the ``key``, a sentence, the evidence."""

    kind: str
    key: str
    detail: str
    events: tuple[Event, ...] = ()

    def __str__(self) -> str:
        return f"{self.kind} on {self.key!r}: {self.detail}"


class CheckerLimit(RuntimeError):
    """The linearizability search ran out of its node budget: neither proved nor refuted."""


@dataclass
class Op:
    """One operation of one process on one key: its invoke and its completion, paired."""

    proc: str
    key: str
    name: str
    call_ns: int
    outcome: str  # "ok" | "fail" | "info" | "pending" (invoked, never completed)
    ret_ns: int | None = None  # None: the outcome is unknown
    token: int | None = None
    valid_until_ns: int | None = None
    value: object = None
    events: tuple[Event, ...] = ()

    @property
    def determinate(self) -> bool:
        """``True`` when the outcome is known (``ok`` or ``fail``)."""
        return self.outcome in ("ok", "fail")

    def describe(self) -> str:
        """A one-line rendering for messages."""
        end = "?" if self.ret_ns is None else str(self.ret_ns)
        token = "" if self.token is None else f" token={self.token}"
        return f"{self.proc} {self.name}:{self.outcome} [{self.call_ns}..{end}]{token}"


@dataclass
class Operations:
    """A history cut into operations per key, with the events that are not operations."""

    by_key: dict[str, list[Op]] = field(default_factory=lambda: defaultdict(list))
    kills: dict[str, list[int]] = field(default_factory=lambda: defaultdict(list))  # proc -> times
    lost: dict[tuple[str, str], list[Event]] = field(default_factory=lambda: defaultdict(list))  # (key, proc)


def operations(events: Iterable[Event]) -> Operations:
    """Pair each ``invoke`` with the next completion of the same process, key and op.

    A completion without an invoke gets its own time as its invoke. An invoke left open when
    the same process invokes the same op again, or at the end of the history (its process
    was killed), becomes a ``pending`` operation (outcome unknown). ``kill`` events apply to
    every key of their process; ``lost`` events (and a failed ``renew``) to their key.
    """
    result = Operations()
    ordered = sorted(events, key=lambda event: event.t_ns)
    pending: dict[tuple[str, str, str], Event] = {}

    def close(slot: tuple[str, str, str]) -> None:
        invoke = pending.pop(slot)
        result.by_key[invoke.key].append(Op(invoke.proc, invoke.key, invoke.op, invoke.t_ns, "pending",
                                            valid_until_ns=invoke.valid_until_ns, token=invoke.token,
                                            value=invoke.value, events=(invoke,)))

    for event in ordered:
        if event.op == "kill":
            result.kills[event.proc].append(event.t_ns)
            continue
        if event.op == "lost":
            result.lost[(event.key, event.proc)].append(event)
            continue
        slot = (event.proc, event.key, event.op)
        if event.phase == "invoke":
            if slot in pending:
                close(slot)
            pending[slot] = event
            continue
        if event.phase not in ("ok", "fail", "info"):
            continue  # not a completion (a marker with a phase of its own)
        invoke = pending.pop(slot, None)
        call = event.t_ns if invoke is None else invoke.t_ns
        ret = event.t_ns if event.phase != "info" else None
        valid = event.valid_until_ns
        if valid is None and invoke is not None and event.phase == "info":
            valid = invoke.valid_until_ns
        token = event.token if event.token is not None else (invoke.token if invoke is not None else None)
        evidence = (event,) if invoke is None else (invoke, event)
        result.by_key[event.key].append(Op(event.proc, event.key, event.op, call, event.phase, ret, token,
                                           valid, event.value, evidence))
        if event.op == "renew" and event.phase == "fail":
            result.lost[(event.key, event.proc)].append(event)
    for slot in list(pending):
        close(slot)
    for ops in result.by_key.values():
        ops.sort(key=lambda op: op.call_ns)
    return result


# ---------------------------------------------------------------------------------- overlaps


@dataclass(frozen=True)
class Window:
    """A span in which ``proc`` could believe it held ``key``."""

    proc: str
    start_ns: int
    end_ns: int
    opened_by: Event
    closed_by: str

    def describe(self) -> str:
        """A one-line rendering for messages."""
        end = "open" if self.end_ns >= FOREVER else str(self.end_ns)
        return f"{self.proc} [{self.start_ns}..{end}] (ended by {self.closed_by})"


def validity_windows(events: Iterable[Event]) -> dict[str, list[Window]]:
    """The validity windows of every key (see :func:`check_overlaps`), sorted by start."""
    ordered = sorted(events, key=lambda event: event.t_ns)
    windows: dict[str, list[Window]] = defaultdict(list)
    current: dict[tuple[str, str], tuple[int, int, Event]] = {}  # (key, proc) -> (start, valid_until, event)

    def end(slot: tuple[str, str], at: int, reason: str) -> None:
        start, until, opened = current.pop(slot)
        stop = min(at, until)
        if stop > start:
            windows[slot[0]].append(Window(slot[1], start, stop, opened, reason if at < until else "valid_until"))

    dead: set[str] = set()
    for event in ordered:
        if event.op == "kill":
            dead.add(event.proc)
            for slot in [slot for slot in current if slot[1] == event.proc]:
                end(slot, event.t_ns, "kill")
            continue
        slot = (event.key, event.proc)
        if event.proc in dead:
            continue  # a killed process running on for a moment: its grants end with it
        if event.op in ("acquire", "renew") and event.phase == "ok":
            until = FOREVER if event.valid_until_ns is None else event.valid_until_ns
            held = current.get(slot)
            if held is not None and held[1] > event.t_ns:  # a re-acquire or renewal keeps the grant
                current[slot] = (held[0], until, held[2])
                continue
            if held is not None:
                end(slot, event.t_ns, "valid_until")
            current[slot] = (event.t_ns, until, event)
        elif slot in current and (
            (event.op == "release" and event.phase == "invoke")
            or event.op == "lost"
            or (event.op == "renew" and event.phase == "fail")
        ):
            end(slot, event.t_ns, "lost" if event.op != "release" else "release")
    for slot in list(current):
        end(slot, FOREVER, "end of history")
    for spans in windows.values():
        spans.sort(key=lambda window: window.start_ns)
    return windows


def _accepted_writes(ops: Sequence[Op]) -> list[Op]:
    return [op for op in ops if op.name == "write" and op.outcome == "ok"]


def check_overlaps(events: Iterable[Event]) -> list[Violation]:
    """Validity windows of different processes that intersect on a key (``overlap``), and
    accepted writes made outside the writer's own windows but wholly inside another
    process's window (``stale_write``: the resource let a non-holder write).

    An acquire whose outcome is unknown (``info``) opens no window: the client does not
    believe it holds. If it wrote anyway and the write was accepted, ``stale_write`` shows it.
    """
    events = list(events)
    windows = validity_windows(events)
    found: list[Violation] = []
    for key, spans in windows.items():
        active: list[Window] = []
        for window in spans:
            active = [other for other in active if other.end_ns > window.start_ns]
            for other in active:
                if other.proc != window.proc:
                    overlap = min(other.end_ns, window.end_ns) - window.start_ns
                    found.append(Violation(
                        "overlap", key,
                        f"{other.describe()} and {window.describe()} overlap by {_ms(overlap)}",
                        (other.opened_by, window.opened_by)))
            active.append(window)
    ops = operations(events)
    for key, key_ops in ops.by_key.items():
        found.extend(_stale_writes(key, _accepted_writes(key_ops), windows.get(key, [])))
    return found


def _stale_writes(key: str, writes: list[Op], spans: list[Window]) -> list[Violation]:
    """Accepted writes outside the writer's windows and inside another's (one sweep)."""
    own: dict[str, list[Window]] = defaultdict(list)
    for window in spans:
        own[window.proc].append(window)
    starts = {proc: [window.start_ns for window in mine] for proc, mine in own.items()}
    found: list[Violation] = []
    writes = sorted(writes, key=lambda op: op.call_ns)
    heap: list[tuple[int, int, Window]] = []  # windows started so far, by end
    position = 0
    for write in writes:
        begin, finish = write.call_ns, write.ret_ns if write.ret_ns is not None else write.call_ns
        while position < len(spans) and spans[position].start_ns <= begin:
            window = spans[position]
            heapq.heappush(heap, (window.end_ns, position, window))
            position += 1
        while heap and heap[0][0] <= begin:
            heapq.heappop(heap)
        mine = own.get(write.proc, [])
        index = bisect.bisect_right(starts.get(write.proc, []), finish) - 1
        if index >= 0 and mine[index].end_ns > begin:
            continue  # the writer could believe it held the key during the write
        for _, _, window in heap:
            if window.proc != write.proc and window.end_ns >= finish:
                found.append(Violation(
                    "stale_write", key,
                    f"{write.describe()} was accepted while {write.proc} held nothing, inside "
                    f"{window.describe()}", (*write.events, window.opened_by)))
                break
    return found


def _ms(nanoseconds: int) -> str:
    return "forever" if nanoseconds >= FOREVER // 2 else f"{nanoseconds / 1e6:.3f} ms"


# ---------------------------------------------------------------------------------- fencing


def check_fencing(events: Iterable[Event]) -> list[Violation]:
    """Token order per key, in real-time order (no false alarm for concurrent operations).

    * ``token_regression``: a grant (acquire ``ok`` with a token) whose token is not larger
      than that of a grant of another process, or an earlier grant of the same process, that
      completed before it was invoked. A re-acquire by a process that still holds its grant
      (no release ``ok``, ``kill`` or ``lost`` since) with the same token is the same grant.
    * ``write_regression``: an accepted write whose token is smaller than that of an accepted
      write completed before it was invoked.
    """
    ops = operations(events)
    found: list[Violation] = []
    for key, key_ops in ops.by_key.items():
        grants = _new_grants(key, key_ops, ops)
        found.extend(_regressions(key, grants, strict=True))
        found.extend(_regressions(key, [op for op in _accepted_writes(key_ops) if op.token is not None],
                                  strict=False))
    return found


def _new_grants(key: str, key_ops: list[Op], ops: Operations) -> list[Op]:
    """Acquire ``ok`` operations with a token that are new grants (not idempotent re-acquires)."""
    ends: list[tuple[int, str]] = []  # times at which a process's grant certainly ended
    for op in key_ops:
        if op.name == "release" and op.outcome == "ok" and op.ret_ns is not None:
            ends.append((op.ret_ns, op.proc))
    for proc, times in ops.kills.items():
        ends.extend((at, proc) for at in times)
    for (lost_key, proc), lost in ops.lost.items():
        if lost_key == key:
            ends.extend((event.t_ns, proc) for event in lost)
    ends.sort()
    grants = sorted((op for op in key_ops if op.name == "acquire" and op.outcome == "ok" and op.token is not None),
                    key=lambda op: op.ret_ns or op.call_ns)
    holding: dict[str, int] = {}
    position = 0
    fresh: list[Op] = []
    for grant in grants:
        while position < len(ends) and ends[position][0] <= grant.call_ns:
            holding.pop(ends[position][1], None)
            position += 1
        if holding.get(grant.proc) == grant.token:
            continue
        holding[grant.proc] = grant.token  # type: ignore[assignment]
        fresh.append(grant)
    return fresh


def _regressions(key: str, items: list[Op], *, strict: bool) -> list[Violation]:
    """Items whose token is below (or, ``strict``, not above) one completed before their invoke."""
    kind = "token_regression" if strict else "write_regression"
    by_end = sorted(items, key=lambda op: op.ret_ns if op.ret_ns is not None else op.call_ns)
    best: Op | None = None
    position = 0
    found: list[Violation] = []
    for item in sorted(items, key=lambda op: op.call_ns):
        while position < len(by_end):
            done = by_end[position]
            done_at = done.ret_ns if done.ret_ns is not None else done.call_ns
            if done_at >= item.call_ns:
                break
            if best is None or done.token > best.token:  # type: ignore[operator]
                best = done
            position += 1
        if best is None or best is item:
            continue
        assert item.token is not None and best.token is not None
        if item.token < best.token or (strict and item.token == best.token):
            what = "grant" if strict else "accepted write"
            found.append(Violation(kind, key, f"{what} {item.describe()} follows {best.describe()}",
                                   (*best.events, *item.events)))
    return found


def check_accepted(key: str, accepted: Sequence[tuple[int, str]]) -> list[Violation]:
    """The log of a fenced resource (``FencedFile.accepted()``): tokens never go down."""
    found = []
    for (before, _), (after, value) in itertools.pairwise(accepted):
        if after < before:
            found.append(Violation("write_regression", key, f"accepted token {after} ({value!r}) after {before}"))
    return found


# ---------------------------------------------------------------------------------- linearizability

_State = tuple[str, int] | None  # (holder, epoch: the id of the op that made the grant) or free


@dataclass
class _Search:
    """The per-key tables of the linearizability search."""

    required: list[Op]  # determinate operations, sorted by completion
    optional: list[Op]  # operations of unknown outcome that matter, sorted by invoke
    open_at: list[tuple[int, ...]]  # for each required index m: required ops open when m completes
    kills: dict[str, list[int]]
    lost: dict[str, list[int]]
    relevant_from: list[int]  # see _relevance
    by_proc: dict[str, int]

    def op(self, ident: int) -> Op:
        """Required ops are ``0..R-1``, optional ones ``R..``."""
        count = len(self.required)
        return self.required[ident] if ident < count else self.optional[ident - count]

    def end_enabled(self, state: tuple[str, int], bound: int) -> bool:
        """May the grant ``state`` end by itself (expiry, crash recovery, loss) before ``bound``?"""
        proc, epoch = state
        grant = self.op(epoch)
        if grant.valid_until_ns is not None and grant.valid_until_ns <= bound:
            return True
        if any(at <= bound for at in self.kills.get(proc, ())):  # a name is one process: see history.py
            return True
        return any(at > grant.call_ns for at in self.lost.get(proc, ()))


def _prepare(key: str, key_ops: list[Op], ops: Operations) -> _Search:
    lock_ops = [op for op in key_ops if op.name in _LOCK_OPS]
    required = sorted((op for op in lock_ops if op.determinate and not (op.name == "acquire" and op.outcome == "fail")
                       and not (op.name == "renew" and op.outcome == "fail")),
                      key=lambda op: (op.ret_ns, op.call_ns))
    unknown = [op for op in lock_ops if not op.determinate]
    # An unknown acquire only makes its process the holder; that can only help explain a
    # later NotLockHolder of another process or a renewal by the same one. Unknown renewals
    # only move an expiry later, which never helps. Unknown releases always may help.
    needs = [op for op in required if (op.name == "release" and op.outcome == "fail") or op.name == "renew"]
    optional = []
    for op in unknown:
        useful = op.name == "release" or (op.name == "acquire" and any(
            (other.proc != op.proc if other.name == "release" else other.proc == op.proc)
            and (other.ret_ns or 0) >= op.call_ns for other in needs
        ))
        if useful:
            optional.append(op)
    optional.sort(key=lambda op: op.call_ns)
    relevant_from, by_proc = _relevance(required, optional, needs)
    # open_at[m]: the required ops with index >= m invoked no later than op m's completion.
    by_call = sorted(range(len(required)), key=lambda index: required[index].call_ns)
    open_at: list[tuple[int, ...]] = []
    live: set[int] = set()
    position = 0
    for index, op in enumerate(required):
        while position < len(by_call) and required[by_call[position]].call_ns <= op.ret_ns:  # type: ignore[operator]
            live.add(by_call[position])
            position += 1
        open_at.append(tuple(sorted(live)))
        live.discard(index)
    lost: dict[str, list[int]] = defaultdict(list)
    for (lost_key, proc), events in ops.lost.items():
        if lost_key == key:
            lost[proc].extend(event.t_ns for event in events)
    return _Search(required, optional, open_at, ops.kills, lost, relevant_from, by_proc)


def _relevance(required: list[Op], optional: list[Op], needs: list[Op]) -> tuple[list[int], dict[str, int]]:
    """Which optional operations can still matter, so nodes that differ only in the use of
    the others are one node (without this, every unknown operation doubles the search).

    ``relevant_from[m]``: bitset of the optional ops that may matter once the first ``m``
    required ops are linearized (and not before the op was invoked): an unknown acquire
    until the last operation it could help
    (a NotLockHolder of another process, a renewal of its own) and an unknown release of
    ``p`` until ``p``'s last operation or the horizon of ``p``'s unknown acquires.
    ``by_proc[p]``: bitset of ``p``'s optional ops, which matter while ``p`` holds the key.
    """
    position = {id(op): index for index, op in enumerate(required)}
    last_of: dict[str, int] = {}
    for index, op in enumerate(required):
        last_of[op.proc] = index
    horizon: list[int] = []
    for op in optional:
        if op.name == "acquire":
            horizon.append(max((position[id(other)] for other in needs
                                if (other.proc != op.proc if other.name == "release" else other.proc == op.proc)
                                and (other.ret_ns or 0) >= op.call_ns), default=-1))
        else:
            horizon.append(last_of.get(op.proc, -1))
    for slot, op in enumerate(optional):
        if op.name == "release":
            horizon[slot] = max([horizon[slot]] + [horizon[other] for other, acquire in enumerate(optional)
                                                  if acquire.name == "acquire" and acquire.proc == op.proc])
    # Each op matters for m in [first, last]: from the first m whose bound can reach its
    # invoke to its horizon. Mark the ends and fold with XOR (one interval per op).
    returns = [op.ret_ns or 0 for op in required]  # required ops all have a completion
    toggles = [0] * (len(required) + 2)
    for slot, last in enumerate(horizon):
        first = bisect.bisect_left(returns, optional[slot].call_ns)
        if first <= last:
            toggles[first] ^= 1 << slot
            toggles[last + 1] ^= 1 << slot
    relevant_from = [0] * (len(required) + 1)
    running = 0
    for m in range(len(required) + 1):
        running ^= toggles[m]
        relevant_from[m] = running
    by_proc: dict[str, int] = defaultdict(int)
    for slot, op in enumerate(optional):
        by_proc[op.proc] |= 1 << slot
    return relevant_from, dict(by_proc)


def check_linearizable(events: Iterable[Event], *, window: int = 200,
                       max_nodes: int = 2_000_000) -> list[Violation]:
    """Search, per key, for a linearization of the history against a mutex.

    The model's state is the holder (and the grant) or free. ``acquire`` ``ok`` needs the
    key free or held by the same process; ``release`` ``ok`` needs it held by the caller or
    free (a no-op); ``release`` ``fail`` (NotLockHolder) needs it held by another; ``renew``
    ``ok`` needs it held by the caller. A timed-out acquire (``fail``) changed nothing. An
    operation whose outcome is unknown (``info``, or cut short by a ``kill``) may take effect
    at any point after its invoke, or never. A grant may also end by itself: at its
    ``valid_until_ns`` (lease expiry), after a ``kill`` of its process (crash recovery) or,
    when its process later learnt it was ``lost``, at any point.

    The search is Wing & Gong's depth-first search with Lowe's memoisation of (linearized
    set, state); the linearized set is kept as "the first m operations by completion time
    plus a few beyond", so a node costs a few words whatever the history's length and the
    search stays close to linear on real histories. One violation per key is reported: the
    operation at which every candidate order failed, i.e. the smallest unlinearizable
    prefix of the history ends at its completion; the violation quotes the events of the
    ``window`` operations before it. ``max_nodes`` bounds the search (:class:`CheckerLimit`).
    """
    ops = operations(events)
    found: list[Violation] = []
    for key, key_ops in ops.by_key.items():
        violation = _linearize(key, _prepare(key, key_ops, ops), window, max_nodes)
        if violation is not None:
            found.append(violation)
    return found


def _linearize(key: str, search: _Search, window: int, max_nodes: int) -> Violation | None:
    """Depth-first search from the empty prefix; ``None`` when a linearization exists."""
    required, optional = search.required, search.optional
    total = len(required)
    if total == 0:
        return None
    base = total  # ids of optional ops start here
    # A node: (m, rest, used, state): ops 0..m-1 linearized, bit i of rest = op m+i linearized
    # (bit 0 always clear), used = bitset of optional ops taken, state = holder or None.
    Node = tuple[int, int, int, _State]

    def canonical(child: Node) -> Node:
        m, rest, used, state = child
        if used:
            keep = search.relevant_from[m] | (0 if state is None else search.by_proc.get(state[0], 0))
            used &= keep
        return (m, rest, used, state)

    def candidates(node: Node) -> Iterator[Node]:
        return map(canonical, raw_candidates(node))

    def raw_candidates(node: Node) -> Iterator[Node]:
        m, rest, used, state = node
        bound = required[m].ret_ns
        assert bound is not None
        for index in search.open_at[m]:
            if index >= m and not (rest >> (index - m)) & 1:
                possible, after = _step(required[index], index, state)
                if possible:
                    yield _advance(m, rest | (1 << (index - m)), used, after)
        if state is not None and search.end_enabled(state, bound):
            yield (m, rest, used, None)
        # Only the unknown operations that can still matter (see _relevance), unused so far.
        mask = (search.relevant_from[m] | (0 if state is None else search.by_proc.get(state[0], 0))) & ~used
        while mask:
            lowest = mask & -mask
            mask ^= lowest
            slot = lowest.bit_length() - 1
            op = optional[slot]
            if op.call_ns > bound:
                continue
            if op.name == "release" and state is not None and state[0] == op.proc:
                yield (m, rest, used | lowest, None)
            elif op.name == "acquire" and (state is None or state[0] == op.proc):
                yield (m, rest, used | lowest, (op.proc, base + slot))

    start: Node = (0, 0, 0, None)
    seen: set[Node] = {start}
    stack: list[tuple[Node, Iterator[Node]]] = [(start, candidates(start))]
    furthest = 0
    frontier_states: set[_State] = set()
    while stack:
        options = stack[-1][1]
        for child in options:
            if child[0] == total:
                return None
            if child in seen:
                continue
            seen.add(child)
            if len(seen) > max_nodes:
                raise CheckerLimit(f"linearizability of {key!r}: more than {max_nodes} search nodes "
                                   f"(furthest operation {furthest} of {total})")
            if child[0] > furthest:
                furthest, frontier_states = child[0], set()
            if child[0] == furthest:
                frontier_states.add(child[3])
            stack.append((child, candidates(child)))
            break
        else:
            stack.pop()
    failing = required[furthest]
    first = max(0, furthest - window)
    quoted = list(required[first:furthest + 1])
    quoted += [required[index] for index in search.open_at[furthest] if index > furthest]
    quoted += [op for op in optional if required[first].call_ns <= op.call_ns <= (failing.ret_ns or 0)]
    quoted.sort(key=lambda op: op.call_ns)
    evidence = tuple(event for op in quoted for event in op.events)
    states = sorted("free" if state is None else f"held by {state[0]}" for state in frontier_states or {None})
    concurrent = [required[index].describe() for index in search.open_at[furthest] if index != furthest]
    return Violation(
        "not_linearizable", key,
        f"no order of the first {furthest + 1} completed operations fits a mutex: {failing.describe()} "
        f"cannot take effect (the lock could only be {', '.join(states)} before it"
        + (f"; concurrent: {', '.join(concurrent)}" if concurrent else "") + ")",
        evidence)


def _step(op: Op, epoch: int, state: _State) -> tuple[bool, _State]:
    """The mutex model: whether ``op`` (determinate) can take effect in ``state``, and the state after."""
    holder = None if state is None else state[0]
    if op.name == "acquire":
        return holder in (None, op.proc), (op.proc, epoch)
    if op.name == "renew":
        return holder == op.proc, (op.proc, epoch)
    if op.outcome == "ok":  # release
        return holder in (None, op.proc), None
    return holder not in (None, op.proc), state  # release fail: NotLockHolder, held by another


def _advance(m: int, rest: int, used: int, state: _State) -> tuple[int, int, int, _State]:
    """Normalise a node: fold the linearized operations right after ``m`` into the prefix."""
    if rest & 1:
        shift = (~rest & (rest + 1)).bit_length() - 1  # trailing ones
        m += shift
        rest >>= shift
    return (m, rest, used, state)


# ---------------------------------------------------------------------------------- all


def check_all(events: Iterable[Event], *, window: int = 200) -> list[Violation]:
    """:func:`check_overlaps`, :func:`check_linearizable` and :func:`check_fencing` together."""
    events = list(events)
    return check_overlaps(events) + check_linearizable(events, window=window) + check_fencing(events)
