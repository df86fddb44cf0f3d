"""The store: what every manager of this process naming one database, schema, table and
liveness window shares (connections of both worlds, the listener, the heartbeat and the
janitor), and the one place where driver exceptions become txlock's."""

from __future__ import annotations

import atexit
import concurrent.futures
import hashlib
import logging
import math
import os
import re
import socket
import threading
import time
import uuid
import weakref
from collections.abc import Callable
from typing import Any

import psycopg
from psycopg import errors as pg_errors

from txlock import _scheduler
from txlock._deadline import call_budget
from txlock._errors import BackendError, BackendUnavailable, ConfigurationError
from txlock._per_process import PerProcess
from txlock._validate import decode
from txlock.backends.postgres._config import conninfo_url, scrub
from txlock.backends.postgres._listener import POLL_INTERVAL, Listener
from txlock.backends.postgres._query import Query, Rows
from txlock.backends.postgres._statements import PRE_RELEASE_TABLE, Statements
from txlock.backends.postgres._store_async import AsyncConnections
from txlock.backends.postgres._store_sync import Connections

__all__ = ["JANITOR_INTERVAL", "SCHEMA_VERSION", "Store", "store_for"]

log = logging.getLogger("txlock.postgres")

#: Version of the tables this package creates (stored in ``<schema>.txlock_schema``).
SCHEMA_VERSION = 1
#: Seconds between sweeps of long-released rows and dead queue tickets (per process and store).
JANITOR_INTERVAL = 60.0
#: Advisory lock taken (transaction-scoped, so pgbouncer-safe) around schema creation.
_DDL_LOCK = int.from_bytes(hashlib.sha256(b"txlock ddl").digest()[:8], "big", signed=True)
#: What the server says when it refuses the URL's role, database or credentials.
_REFUSED = re.compile(
    r'(role|database) "[^"]*" does not exist|password authentication failed for user "[^"]*"'
    r"|no pg_hba\.conf entry for [^.]*"
)


class HeldKeys:
    """The holds without hold_timeout this process knows it has, by key hash and holder.

    By holder, not only by key: a release in this process can hand its key to a waiter of
    this same process, and the new holder's grant may be noted before the old holder's
    release is; a set of keys would then forget a hold that is still running, the heartbeat
    would stop renewing it, and it would lapse after ``liveness`` under its holder."""

    __slots__ = ("mutex", "pairs")

    def __init__(self) -> None:
        self.mutex = threading.Lock()
        self.pairs: set[tuple[bytes, str]] = set()

    def add(self, digest: bytes, holder: str) -> None:
        """``holder`` holds ``digest``'s key (again: idempotent)."""
        with self.mutex:
            self.pairs.add((digest, holder))

    def discard(self, digest: bytes, holder: str) -> None:
        """``holder``'s hold of ``digest``'s key ended (or never was)."""
        with self.mutex:
            self.pairs.discard((digest, holder))

    def forget(self, digest: bytes) -> None:
        """No hold of ``digest``'s key is left in this process (forced, or lapsed)."""
        with self.mutex:
            self.pairs = {pair for pair in self.pairs if pair[0] != digest}

    def digests(self) -> list[bytes]:
        """The key hashes to renew."""
        with self.mutex:
            return list({digest for digest, _ in self.pairs})


class Store:
    """Connections, listener and heartbeat shared by every manager of this process that
    names the same database, schema, table and liveness window."""

    def __init__(
        self, conninfo: dict[str, str], schema: str, table: str, liveness: float, durable: bool,
        pool: Any = None, async_pool: Any = None,
    ) -> None:
        self.conninfo = conninfo
        self.schema = schema
        self.table = table
        self.liveness = liveness
        #: When the last heartbeat that went through was sent (``time.monotonic()``): the holds
        #: of this process are surely valid until then plus ``liveness``.
        self.beat_sent = 0.0
        self.display = f"PostgreSQL at {conninfo_url(conninfo, hide=True)} (table {schema}.{table})"
        self.statements = Statements(schema, table, durable)
        self.name = f"{schema}.{table}"
        self.channel = "txlock_" + hashlib.sha256(self.name.encode()).hexdigest()[:24]
        self.owner = uuid.uuid4()  # this process, for holds bound to its life
        self.prepare = True  # server-side prepared statements, until a pooler forbids them
        self.ready = False
        self.users = 0  # managers using this store
        self.mutex = threading.Lock()
        self.heartbeat: _scheduler.Job | None = None
        self.janitor: _scheduler.Job | None = None
        # Queued calls that gave up but whose ticket could not be removed (the statement
        # failed): the heartbeat deletes their tickets and frees any hold a release handed
        # them meanwhile. Kept for two liveness windows (id -> monotonic deadline), long
        # enough for a grant racing the first deletion to become visible to a later beat.
        self.orphans: dict[uuid.UUID, float] = {}
        #: The key hashes of the holds without hold_timeout this process knows it has: the
        #: heartbeat renews only those (and those handed to its live waiters), so a grant
        #: whose reply was lost is not kept alive by it and ends within ``liveness``.
        self.held = HeldKeys()
        # Connection -> whether it reaches the server directly (not through a proxy).
        self.kinds: weakref.WeakKeyDictionary[Any, bool] = weakref.WeakKeyDictionary()
        self.connect_args: dict[str, Any] = {"connect_timeout": "10", **conninfo, "autocommit": True}
        self.listener = _listeners.get(tuple(sorted(conninfo.items())), lambda: Listener(conninfo, self.display))
        self.listener.retain(self.channel)
        self.active = True  # False once closed, until used again
        self.connections = Connections(self, pool)
        self.async_connections = AsyncConnections(self, async_pool)

    # -- lifetime

    def retain(self) -> Store:
        with self.mutex:
            self.users += 1
        return self

    def release(self) -> None:
        """One manager less; the last one closes the store."""
        with self.mutex:
            self.users -= 1
            last = self.users <= 0
        if last:
            self.close()

    def close(self) -> None:
        """Drop idle connections, stop the heartbeat and stop listening (all reopen lazily)."""
        with self.mutex:
            heartbeat, self.heartbeat = self.heartbeat, None
            janitor, self.janitor = self.janitor, None
            active, self.active = self.active, False
        self.drop_idle()
        for job in (heartbeat, janitor):
            if job is not None:
                job.cancel()
        self.ready = False  # set up again (and the janitor rescheduled) on next use
        if active:
            self.listener.release(self.channel)

    def reopen(self) -> None:
        with self.mutex:
            if self.active:
                return
            self.active = True
        self.listener.retain(self.channel)

    def drop_idle(self) -> None:
        self.connections.drop_idle()
        self.async_connections.drop_idle()

    def subscribe(self) -> concurrent.futures.Future[bool]:
        self.reopen()
        return self.listener.subscribe(self.channel)

    def fill_session(self, query: Query) -> None:
        """Parameters known only once the listener is up: its session lock (queue liveness)."""
        if "session" in query.params:
            query.params["session"] = self.listener.session()

    def need_heartbeat(self) -> None:
        if self.heartbeat is None:
            with self.mutex:
                if self.heartbeat is None:
                    self.heartbeat = _scheduler.schedule(
                        self.beat, self.liveness / 3, name=f"txlock heartbeat {self.name}"
                    )

    def orphan(self, waiter_id: uuid.UUID | None) -> None:
        """Remember a queued call that gave up without removing its ticket (see ``orphans``)."""
        if waiter_id is not None:
            with self.mutex:
                self.orphans[waiter_id] = time.monotonic() + 2 * self.liveness
        self.need_heartbeat()

    def beat(self) -> bool:
        """The heartbeat (every ``liveness / 3`` on the scheduler thread); ``False`` stops it."""
        with self.mutex:
            if self.heartbeat is None:
                return False
            now = time.monotonic()
            self.orphans = {waiter: until for waiter, until in self.orphans.items() if until > now}
            orphans = list(self.orphans)
        params = {
            "owner": self.owner, "liveness": self.liveness, "channel": self.channel, "orphans": orphans,
            "held": self.held.digests(),
        }
        sent = time.monotonic()
        try:
            params["live"] = self.listener.live(self.channel)
            rows = self.connections.run(Query([self.statements.heartbeat], params))
        except BackendError as exc:
            log.warning("txlock heartbeat for %s failed: %s", self.display, exc)
            return True
        self.beat_sent = max(self.beat_sent, sent)
        lost = rows[0][2] if rows else None
        if lost:
            for key in lost:
                self.held.forget(hashlib.sha256(bytes(key)).digest())
            log.error(
                "txlock lost %d hold(s) on %s because the heartbeat came too late (the process was paused"
                " or the server unreachable for more than %gs): %s",
                len(lost),
                self.display,
                self.liveness,
                ", ".join(repr(decode(bytes(key))) for key in lost[:10]),
            )
        return True

    def sweep(self) -> bool:
        """The janitor (every minute on the scheduler thread); ``False`` stops it."""
        with self.mutex:
            if self.janitor is None:
                return False
        try:
            self.connections.run(Query([self.statements.janitor], {"name": self.table}))
        except BackendError as exc:
            log.warning("txlock janitor for %s failed: %s", self.display, exc)
        return True

    # -- the tables: checked on first use, created when missing

    def version_query(self) -> Query:
        return Query([self.statements.version], {"name": self.table}, missing_ok=True, then=self._after_version)

    def _after_version(self, rows: Rows) -> Rows | Query:
        if rows:
            return rows
        params = {"legacy": self.statements.pre_release_table}
        return Query([self.statements.pre_release], params, then=self._after_pre_release_check)

    def _after_pre_release_check(self, rows: Rows) -> Query:
        if rows and rows[0][0] is not None:
            raise ConfigurationError(
                f"{self.display}: schema {self.schema!r} holds the tables of a pre-release txlock"
                f" ({self.schema}.{PRE_RELEASE_TABLE}), which this version does not migrate. Drop them"
                f" (DROP TABLE {self.schema}.{PRE_RELEASE_TABLE}, {self.schema}.{self.table},"
                f" {self.schema}.{self.table}_waiters, and the tables of any other table= name in that"
                " schema); txlock creates its tables again on next use"
            )
        params = {"name": self.table, "version": SCHEMA_VERSION, "ddl_lock": _DDL_LOCK}
        return Query(self.statements.create_tables, params)

    def check_version(self, rows: Rows) -> None:
        if not rows:
            raise BackendError(f"{self.display}: the txlock tables could not be created")
        version = rows[0][0]
        if version > SCHEMA_VERSION:
            raise BackendError(
                f"{self.display} was created by a newer txlock (schema version {version}, this one knows"
                f" {SCHEMA_VERSION}); upgrade txlock"
            )
        self.ready = True
        with self.mutex:
            if self.janitor is None and self.active:
                self.janitor = _scheduler.schedule(
                    self.sweep, JANITOR_INTERVAL, name=f"txlock janitor {self.name}", first_delay=JANITOR_INTERVAL
                )

    # -- connections

    @staticmethod
    def deadline_guard(conn: psycopg.Connection[Any] | psycopg.AsyncConnection[Any]) -> _scheduler.Job | None:
        """Cut ``conn`` off when the current call's deadline (plus its margin) passes, or
        ``None`` when the call has no deadline. Cancel the job once the round trip is over.

        A server that accepted the connection and stopped answering (paused, partitioned, a
        half-open connection) would otherwise keep a statement waiting for its reply until
        TCP gives up, many minutes later. The lease-watch thread shuts the socket down; the
        read in progress then fails at once, and the connection is dropped as broken."""
        budget = call_budget()
        if budget is None:
            return None
        fd = conn.pgconn.socket

        def cut() -> bool:
            try:
                with socket.socket(fileno=os.dup(fd)) as sock:
                    sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass  # already closed
            return False

        return _scheduler.watch(cut, budget, name="txlock postgres deadline")

    def bounded_connect_args(self) -> dict[str, Any]:
        """``connect_args``, with ``connect_timeout`` cut to the current call's deadline (plus
        the margin; libpq counts whole seconds, at least 2)."""
        budget = call_budget()
        if budget is None:
            return self.connect_args
        try:
            configured = float(self.connect_args.get("connect_timeout") or 0)
        except ValueError:
            return self.connect_args  # libpq will say what is wrong with it
        if 0 < configured <= budget:
            return self.connect_args
        return {**self.connect_args, "connect_timeout": str(max(2, math.ceil(budget)))}

    def classify(self, conn: psycopg.Connection[Any] | psycopg.AsyncConnection[Any], row: Any) -> bool:
        """Remember whether ``conn`` reaches the server directly (prepared statements are
        safe) or through a proxy (pgbouncer: the backend pid differs from the one announced
        at connection time, and named prepared statements of clients would collide)."""
        direct = bool(row) and row[0] == conn.info.backend_pid
        self.kinds[conn] = direct
        if not direct and not self.listener.pooled:
            log.warning(
                "%s is reached through a proxy (pgbouncer?): prepared statements and LISTEN are not used;"
                " waiters poll every %gs",
                self.display,
                POLL_INTERVAL,
            )
            self.listener.mark_pooled()
        return direct

    # -- errors: the one place where driver exceptions become txlock's

    def failed(self, exc: Exception, query: Query, attempt: int, broken: bool) -> Rows | None:
        """Judge a failed attempt of ``query`` (both worlds): the rows to answer with, ``None``
        to try again, or raise (driver errors translated)."""
        if isinstance(exc, pg_errors.UndefinedTable | pg_errors.InvalidSchemaName):
            if query.missing_ok:
                return []
            self.ready = False
            raise exc
        if isinstance(exc, psycopg.Error):
            if self._recoverable(exc, attempt, broken):
                return None
            raise self.error(exc) from exc
        if _is_pool_error(exc):
            raise self.error(exc) from exc
        raise exc

    def error(self, exc: BaseException) -> BackendError | ConfigurationError:
        text = scrub(" ".join(str(exc).split()) or type(exc).__name__, self.conninfo)
        refused = _REFUSED.search(text)
        if refused is not None:
            # The server answered: the URL names a role, database or password it refuses.
            return ConfigurationError(
                f"{self.display} refused the connection: {refused.group(0)}; check the user, password and "
                "database in the URL (and the server's pg_hba.conf)"
            )
        sqlstate = getattr(exc, "sqlstate", None) or ""
        lost = not sqlstate or sqlstate[:2] in ("08", "53") or sqlstate in ("57P01", "57P02", "57P03")
        if (isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError) and lost) or _is_pool_error(exc):
            return BackendUnavailable(
                f"{self.display} is unreachable: {text}. Check that the server is running and reachable;"
                " the next call reconnects."
            )
        return BackendError(f"{self.display} failed: {text}")

    def _recoverable(self, exc: BaseException, attempt: int, broken: bool) -> bool:
        """Whether to retry a statement once on a fresh connection (it did not take effect,
        or repeating it is harmless: every statement here is idempotent)."""
        if attempt > 0:
            return False
        sqlstate = getattr(exc, "sqlstate", None)
        if sqlstate in ("40001", "40P01"):
            return True  # serialization failure or deadlock (first use racing): rolled back, retry
        if sqlstate in ("26000", "42P05"):
            # "prepared statement does not exist / already exists": a transaction pooler moves us
            # between server connections. Stop preparing statements (the statement never ran).
            if self.prepare:
                log.warning("%s: prepared statements do not survive here (pgbouncer?); disabling them", self.display)
            self.prepare = False
            return True
        if broken:
            # A connection killed (pg_terminate_backend, server restart) while idle in our
            # cache: the others are likely dead too.
            log.warning(
                "txlock's connection to %s was closed by the server (%s); retrying on a new connection",
                self.display,
                scrub(str(exc).strip(), self.conninfo),
            )
            self.drop_idle()
            return True
        return False


def _is_pool_error(exc: BaseException) -> bool:
    return type(exc).__module__.startswith("psycopg_pool")


# ---------------------------------------------------------------------- per process

#: A forked child must never close (or garbage-collect) its parent's sockets: libpq would
#: end the parent's sessions. What the child forgets is kept here instead.
_graveyard: list[object] = []


def _bury(value: object) -> bool:
    _graveyard.append(value)
    return False  # forgotten: the child makes its own on first use


_stores: PerProcess[tuple[Any, ...], Store] = PerProcess(after_fork=_bury)
_listeners: PerProcess[tuple[tuple[str, str], ...], Listener] = PerProcess(after_fork=_bury)


def store_for(key: tuple[Any, ...], make: Callable[[], Store]) -> Store:
    """The store of this process for ``key`` (made by ``make`` on first use), retained."""
    return _stores.get(key, make).retain()


def _close_all() -> None:
    for store in _stores.values():
        store.close()


atexit.register(_close_all)
