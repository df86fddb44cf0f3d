"""The *session loss* scenario on PostgreSQL (issue 14), on a private server only.

txlock's PostgreSQL holds are rows judged by ``expires_at``, not session state
(docs/postgres.md, "Crash recovery"), so what a lost session must do is:

* ``pg_terminate_backend`` of every session of the holder's process (found by its
  ``application_name`` in ``pg_stat_activity``): the hold **survives**, for a process-bound
  hold (``liveness``) and a ``ttl`` hold alike: past the bound the key is still the
  holder's, nobody else gets it, the block ends without a loss. When the sessions cannot
  come back (the holder's role is refused new connections for longer than the bound), the
  hold is **lost safely**: another process gets the key after the bound, and the holder's
  ``lock()`` block learns of the loss (``on_lost`` before the other grant for a ``ttl``
  hold; ``LockLost`` at exit either way).
* A SIGSTOPped client holding a process-bound hold (``liveness=1``): another process gets
  the key after about ``liveness``; after SIGCONT the stale client's ``is_lock_holder`` is
  ``False``, its ``release_lock`` raises ``NotLockHolder`` and leaves the new holder's
  lock alone, and its ``lock()`` block raises ``LockLost`` at exit.
* A server restart (``pg_ctl stop -m fast`` or ``-m immediate``, then start) while a
  holder holds (a ``ttl`` block and a process-bound hold) and a waiter waits: a clean stop
  keeps the holds (UNLOGGED tables survive it); an immediate stop is a crash, which empties
  the UNLOGGED table (holds lost: the block is told, the waiter gets the key) unless the
  table is ``durable`` (LOGGED: holds kept). Tokens never regress either way.

Every client is a separate process (:class:`lab.test_partition.Client`) writing its own
history; overlaps and token order are checked with :mod:`lab.checkers`.
"""

from __future__ import annotations

import dataclasses
import functools
import queue
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest

from _support import eventually, need_module
from lab.report import percentiles, record, scaled
from lab.test_partition import Client

pytestmark = pytest.mark.postgres


def _sleep_until(deadline: float) -> None:
    """Let a fault last until ``deadline`` (monotonic seconds): injection, not ordering."""
    left = deadline - time.monotonic()
    if left > 0:
        time.sleep(left)


class Session:
    """One test's clients, history and admin connection to the private server."""

    def __init__(self, server: Any, tmp_path: Path) -> None:
        need_module("txlock.backends.postgres", "postgres")
        import psycopg

        from lab.history import HistoryWriter

        self.server = server
        self.tmp_path = tmp_path
        self.history = tmp_path / "history"
        self.history.mkdir(exist_ok=True)
        self.prefix = f"txlab-{uuid.uuid4().hex[:8]}:"
        self.clients: list[Client] = []
        self.notes = HistoryWriter(self.history, "lab")
        self.admin = psycopg.connect(server.url, autocommit=True, connect_timeout=10)
        self.roles: list[str] = []

    def url(self, app: str, user: str = "postgres", **options: object) -> str:
        """A URL on the private server for a client named ``app`` (its application_name)."""
        base = self.server.url.replace("postgresql://postgres@", f"postgresql://{user}@", 1)
        query = {"prefix": self.prefix, "application_name": app, "connect_timeout": "5",
                 **{k: str(v).lower() if isinstance(v, bool) else str(v) for k, v in options.items()}}
        return f"{base}?{urlencode(query)}"

    def client(self, name: str, user: str = "postgres", **options: object) -> Client:
        """A client process named ``name`` (also its application_name, made unique)."""
        app = f"txlab-{name}-{uuid.uuid4().hex[:6]}"
        client = Client(self.url(app, user, **options), name, self.history, self.tmp_path / f"{name}.log")
        client.app = app
        self.clients.append(client)
        return client

    def note(self, key: str, op: str, proc: str) -> float:
        """Record a fault in the history (under ``proc``, the process it concerns)."""
        return int(self.notes.write(key, op, "info", value=proc)) / 1e9

    def sessions(self, app: str) -> list[int]:
        """Backend pids of the sessions whose application_name is ``app`` (this server only)."""
        rows = self.admin.execute(
            "SELECT pid FROM pg_stat_activity WHERE application_name = %s AND pid <> pg_backend_pid()", (app,)
        ).fetchall()
        return [int(row[0]) for row in rows]

    def terminate(self, app: str) -> int:
        """``pg_terminate_backend`` every session of ``app``; how many there were."""
        pids = self.sessions(app)
        for pid in pids:
            self.admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
        return len(pids)

    def limited_role(self) -> str:
        """A non-superuser role that may use txlock's tables (created on the server first):
        ``CONNECTION LIMIT 0`` then refuses it new sessions, as an outage would."""
        import txlock

        with txlock.from_url(self.url("txlab-setup")) as setup:
            setup.is_locked("setup")  # creates the tables
        role = f"txlab_{uuid.uuid4().hex[:8]}"
        self.admin.execute(f"CREATE ROLE {role} LOGIN")
        self.admin.execute(f"GRANT USAGE ON SCHEMA txlock TO {role}")
        self.admin.execute(f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA txlock TO {role}")
        self.roles.append(role)
        return role

    def refuse(self, role: str, refused: bool) -> None:
        """Refuse (or allow again) new sessions of ``role``."""
        self.admin.execute(f"ALTER ROLE {role} CONNECTION LIMIT {0 if refused else -1}")

    def events(self) -> list[Any]:
        """The whole history so far."""
        from lab.history import read_history

        return read_history(self.history)

    def close(self) -> None:
        """Stop the clients, drop the roles, close the admin connection."""
        for client in self.clients:
            client.close()
        self.notes.close()
        if not self.admin.closed:
            for role in self.roles:
                self.refuse(role, False)
                for pid in self.admin.execute(
                    "SELECT pid FROM pg_stat_activity WHERE usename = %s", (role,)
                ).fetchall():
                    self.admin.execute("SELECT pg_terminate_backend(%s)", (pid[0],))
                self.admin.execute(f"DROP OWNED BY {role}")
                self.admin.execute(f"DROP ROLE {role}")
            self.admin.close()


@pytest.fixture
def session(postgres_server: Any, tmp_path: Path) -> Iterator[Session]:
    """A :class:`Session` on the private server."""
    s = Session(postgres_server, tmp_path)
    try:
        yield s
    finally:
        s.close()


def _overlaps(events: list[Any]) -> list[Any]:
    from lab.checkers import check_overlaps

    return check_overlaps(events)


def _regressions(events: list[Any]) -> list[Any]:
    from lab.checkers import check_fencing

    return check_fencing(events)


# ------------------------------------------------------------------------ pg_terminate_backend


@pytest.mark.parametrize("kind", ["process", "ttl"])
def test_terminated_session(kind: str, session: Session) -> None:
    """The holder's sessions are terminated: the hold survives (rows, not session state).
    Its sessions then refused for longer than the bound: the hold is lost safely and the
    holder's block learns of it."""
    window = 2.0  # liveness of the process-bound hold, ttl of the other
    ttl = window if kind == "ttl" else None
    trials = scaled(1, 10)
    role = session.limited_role()
    holder = session.client("holder", user=role, liveness=window)
    other = session.client("other", liveness=window)
    problems: list[str] = []
    latencies: list[float] = []
    loss_signals = 0
    for trial in range(trials):
        # 1. A brief session loss: the hold survives, past the bound.
        key = f"terminate-{kind}-{trial}"
        entered = holder.call(do="enter", key=key, holder="holder", ttl=ttl, timeout=10)
        assert entered["granted"], entered
        killed = session.terminate(holder.app)
        assert killed >= 1, "the holder had no session to terminate"
        killed_at = session.note(key, "terminate", "holder")
        _sleep_until(killed_at + 1.5 * window)
        tried = other.call(do="acquire", key=key, holder="other", ttl=None, timeout=0)
        if tried["granted"]:
            problems.append(f"{key}: another process got the key after the holder's sessions were terminated")
        if not holder.call(do="is_holder", key=key, holder="holder")["holder"]:
            problems.append(f"{key}: the hold did not survive the termination of its sessions")
        eventually(lambda: session.sessions(holder.app), 20, "the holder's sessions to come back")
        left = holder.call(do="exit", key=key)
        if left["lock_lost"] or left["lost"] or left["on_lost_ns"] is not None:
            problems.append(f"{key}: the block reported a loss although the hold survived: {left}")
        after = other.call(do="acquire", key=key, holder="other", ttl=None, timeout=10)
        assert after["granted"] and after["token"] > entered["token"], after
        other.call(do="release", key=key, holder="other")

        # 2. The sessions cannot come back for longer than the bound: the hold is lost safely.
        key = f"cutoff-{kind}-{trial}"
        entered = holder.call(do="enter", key=key, holder="holder", ttl=ttl, timeout=10)
        assert entered["granted"], entered
        session.refuse(role, True)
        try:
            session.terminate(holder.app)
            cut_at = session.note(key, "terminate", "holder")
            granted = other.call(window * 10 + 30, do="acquire", key=key, holder="other", ttl=None,
                                 timeout=window * 10 + 20)
        finally:
            session.refuse(role, False)
        assert granted["granted"], f"{key}: the other process never got the key of the cut-off holder: {granted}"
        latencies.append(granted["t_ns"] / 1e9 - cut_at)
        if kind == "ttl":
            try:
                lost = holder.events.get(timeout=30)
            except queue.Empty:
                problems.append(f"{key}: on_lost never fired")
            else:
                if lost["t_ns"] >= granted["t_ns"]:
                    problems.append(f"{key}: on_lost fired {(lost['t_ns'] - granted['t_ns']) / 1e6:.1f} ms "
                                    "after the other process's grant")
        if holder.call(do="is_holder", key=key, holder="holder")["holder"]:
            problems.append(f"{key}: the cut-off holder still reads as the holder after the other's grant")
        left = holder.call(do="exit", key=key)
        if not left["lock_lost"]:
            problems.append(f"{key}: the block did not raise LockLost at exit: {left}")
        loss_signals += bool(left["lock_lost"]) + (left["on_lost_ns"] is not None)
        other.call(do="release", key=key, holder="other")

    events = session.events()
    overlaps, regressions = _overlaps(events), _regressions(events)
    record("pg_session", "postgres", case=f"terminate_{kind}", trials=trials, overlaps=len(overlaps),
           token_regressions=len(regressions), loss_signals=loss_signals,
           takeover_after_cutoff_s=percentiles(latencies), bound_s=window)
    if overlaps:
        problems.append(f"{len(overlaps)} overlaps, first: {overlaps[0]}")
    if regressions:
        problems.append(f"{len(regressions)} token regressions, first: {regressions[0]}")
    assert not problems, "\n".join(problems)


# ----------------------------------------------------------------------------------- SIGSTOP


def test_stopped_client(session: Session) -> None:
    """A SIGSTOPped holder of a process-bound hold (liveness=1) loses it to another process
    after about liveness; once resumed it is no holder, cannot free the new holder's lock,
    and its block raises LockLost."""
    liveness = 1.0
    trials = scaled(1, 10)
    holder = session.client("holder", liveness=liveness)
    other = session.client("other", liveness=liveness)
    problems: list[str] = []
    latencies: list[float] = []
    loss_signals = 0
    for trial in range(trials):
        key = f"sigstop-{trial}"
        entered = holder.call(do="enter", key=key, holder="holder", ttl=None, timeout=10)
        assert entered["granted"], entered
        holder.signal(signal.SIGSTOP)
        try:
            stopped_at = session.note(key, "pause", "holder")
            granted = other.call(60, do="acquire", key=key, holder="other", ttl=None, timeout=50)
        finally:
            holder.signal(signal.SIGCONT)
            session.note(key, "resume", "holder")
        assert granted["granted"], f"{key}: the other process never got the stopped holder's key: {granted}"
        latencies.append(granted["t_ns"] / 1e9 - stopped_at)
        if holder.call(do="is_holder", key=key, holder="holder")["holder"]:
            problems.append(f"{key}: the resumed stale client still reads as the holder")
        released = holder.call(do="release", key=key, holder="holder")
        if released["outcome"] != "not_holder":
            problems.append(f"{key}: the stale client's release_lock: {released} (expected NotLockHolder)")
        if not other.call(do="is_holder", key=key, holder="other")["holder"]:
            problems.append(f"{key}: the stale client's release freed the new holder's lock")
        left = holder.call(do="exit", key=key)
        if not left["lock_lost"]:
            problems.append(f"{key}: the stale block did not raise LockLost: {left}")
        loss_signals += bool(left["lock_lost"])
        if granted["token"] <= entered["token"]:
            problems.append(f"{key}: token went from {entered['token']} to {granted['token']}")
        other.call(do="release", key=key, holder="other")

    # A stopped process does nothing: its window ends when it is stopped (the pause marker,
    # noted by the test under its own name, read as a kill of the stopped process); what it
    # believes once resumed is checked above, call by call.
    events = [dataclasses.replace(e, proc=e.value, op="kill") if e.op == "pause" else e for e in session.events()]
    overlaps, regressions = _overlaps(events), _regressions(events)
    record("pg_session", "postgres", case="sigstop", trials=trials, overlaps=len(overlaps),
           token_regressions=len(regressions), loss_signals=loss_signals, takeover_s=percentiles(latencies),
           liveness_s=liveness)
    if overlaps:
        problems.append(f"{len(overlaps)} overlaps, first: {overlaps[0]}")
    if regressions:
        problems.append(f"{len(regressions)} token regressions, first: {regressions[0]}")
    assert not problems, "\n".join(problems)


# ------------------------------------------------------------------------------ server restart


@pytest.mark.parametrize("mode", ["fast", "immediate", "immediate_durable"])
def test_server_restart(mode: str, session: Session) -> None:
    """A restart while a holder holds (a ttl block and a process-bound hold) and a waiter
    waits: holds kept by a clean stop and by a crash of a durable table, lost (and the block
    told) by a crash of the default UNLOGGED table; the waiter gets the key; no token
    regression."""
    stop_mode, durable = mode.split("_", maxsplit=1)[0], mode.endswith("durable")
    window = 5.0  # ttl of the block and liveness of the process-bound hold: outlasts a restart
    trials = scaled(1, 10)
    table = "locks_durable" if durable else "locks"
    options: dict[str, object] = {"liveness": window}
    if durable:
        options.update(durable=True, table=table)
    holder = session.client("holder", **options)
    waiter = session.client("waiter", **options)
    keep = stop_mode == "fast" or durable
    problems: list[str] = []
    waiter_errors: list[str] = []
    loss_signals = 0
    loss_first = 0  # crashes where the holder was told before the waiter's grant
    for trial in range(trials):
        block_key, bound_key = f"restart-block-{trial}", f"restart-bound-{trial}"
        entered = holder.call(do="enter", key=block_key, holder="holder", ttl=window, timeout=10)
        bound = holder.call(do="acquire", key=bound_key, holder="holder", ttl=None, timeout=10)
        assert entered["granted"] and bound["granted"], (entered, bound)
        waiting = waiter.send(do="acquire", key=block_key, holder="waiter", ttl=None, timeout=60)
        eventually(functools.partial(_queued, session, table, block_key), 20, "the waiter to queue for the key")

        session.server.stop(stop_mode)
        session.note(block_key, "restart", "server")
        session.server.start()
        restarted = time.monotonic()
        session.admin.close()
        import psycopg

        session.admin = psycopg.connect(session.server.url, autocommit=True, connect_timeout=10)

        if keep:
            # Past the bound: both holds still the holder's, the waiter still waiting.
            _sleep_until(restarted + window)
            for key in (block_key, bound_key):
                if not holder.call(do="is_holder", key=key, holder="holder")["holder"]:
                    problems.append(f"{mode}: {key} was lost although the {mode} restart keeps holds")
            if not waiter.replies.empty():
                early = waiter.answer(waiting, 0)
                if early["granted"]:
                    problems.append(f"{mode}: the waiter was granted the key while the holder still held it")
                else:
                    waiter_errors.append(early["error"])
                    waiting = waiter.send(do="acquire", key=block_key, holder="waiter", ttl=None, timeout=60)
            left = holder.call(do="exit", key=block_key)
            if left["lock_lost"] or left["on_lost_ns"] is not None:
                problems.append(f"{mode}: the block reported a loss: {left}")
            holder.call(do="release", key=bound_key, holder="holder")
        got = waiter.answer(waiting, 70)
        if not got["granted"] and "BackendUnavailable" in str(got.get("error")):
            waiter_errors.append(got["error"])  # reported below; ask again to check the rest
            got = waiter.call(40, do="acquire", key=block_key, holder="waiter", ttl=None, timeout=30)
        if not got["granted"]:
            problems.append(f"{mode}: the waiter did not get the key: {got}")
            continue
        if got["token"] <= entered["token"]:
            problems.append(f"{mode}: token regression {entered['token']} -> {got['token']}")
        if not keep:
            # The crash emptied the table: the block is told (its next renewal finds the
            # grant gone), the bound hold is gone.
            try:
                told = holder.events.get(timeout=window + 10)
            except queue.Empty:
                problems.append(f"{mode}: on_lost never fired after the crash emptied the table")
            else:
                if told["t_ns"] < got["t_ns"]:
                    loss_first += 1
            left = holder.call(do="exit", key=block_key)
            if not (left["lock_lost"] and left["on_lost_ns"] is not None):
                problems.append(f"{mode}: the block did not report the lost hold (on_lost, LockLost): {left}")
            loss_signals += bool(left["lock_lost"]) + (left["on_lost_ns"] is not None)
            if holder.call(do="is_holder", key=bound_key, holder="holder")["holder"]:
                problems.append(f"{mode}: the process-bound hold survived a crash of the UNLOGGED table")
            again = waiter.call(do="acquire", key=bound_key, holder="waiter", ttl=None, timeout=10)
            if not again["granted"] or again["token"] <= bound["token"]:
                problems.append(f"{mode}: {bound_key} after the crash: {again} (old token {bound['token']})")
            else:
                waiter.call(do="release", key=bound_key, holder="waiter")
        waiter.call(do="release", key=block_key, holder="waiter")

    events = session.events()
    overlaps, regressions = _overlaps(events), _regressions(events)
    record("pg_session", "postgres", case=f"restart_{mode}", trials=trials, overlaps=len(overlaps),
           token_regressions=len(regressions), loss_signals=loss_signals, holds_kept=keep,
           waiter_errors=len(waiter_errors), loss_before_grant=loss_first)
    if waiter_errors:
        problems.append(f"{len(waiter_errors)} times the waiter's acquire (timeout 60 s) gave up with the server's "
                        f"restart instead of waiting through it, first: {waiter_errors[0]}")
    if regressions:
        problems.append(f"{len(regressions)} token regressions, first: {regressions[0]}")
    # A crash of the UNLOGGED table loses holds the clients still believe in: the overlaps it
    # causes are the documented limit (docs/postgres.md, "Why UNLOGGED by default"), recorded
    # above; a clean stop and a durable table must cause none.
    if overlaps and keep:
        problems.append(f"{len(overlaps)} overlaps, first: {overlaps[0]}")
    assert not problems, "\n".join(problems)


def _queued(session: Session, table: str, key: str) -> bool:
    """Whether a waiter's ticket for ``key`` is in ``table``'s queue (read on the server)."""
    import hashlib

    found = session.admin.execute(
        f"SELECT count(*) FROM txlock.{table}_waiters WHERE key_hash = %s",
        (hashlib.sha256((session.prefix + key).encode()).digest(),),
    ).fetchone()
    return bool(found and found[0])
