"""The PostgreSQL backend: locks shared by every process on every host that reaches one database.

Holds are rows of a table (``txlock.locks`` by default) judged by the *server's* clock:
acquire, release, extend and inspect are each one SQL statement. Fencing tokens are seeded
from the server's clock and kept per key (never regressing, without any WAL write), waiters
sleep on ``LISTEN`` (one listening connection per process and database), and they are
served in arrival order through a small queue table: the releasing statement hands the lock
straight to the oldest queued call and its ``NOTIFY`` carries the grant. Holds without
``hold_timeout`` are leases renewed by one heartbeat statement per process, so they end a
bounded time after their process dies, also behind a transaction-pooling proxy such as
pgbouncer.

Everything that talks to the server goes through :class:`_Store` (``run`` / ``arun``);
the SQL is built and the replies parsed by plain functions shared by both worlds.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import contextlib
import hashlib
import logging
import math
import os
import re
import select
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Mapping, Sequence
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode, urlsplit

import psycopg
from psycopg import errors as pg_errors
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict
from psycopg.rows import tuple_row

from txlock import _scheduler
from txlock._errors import BackendError, BackendUnavailable, ConfigurationError
from txlock._manager import BaseLockManager, call_budget, parse_bool, parse_seconds
from txlock._types import Busy, Capabilities, Lease, LockInfo
from txlock._validate import decode, encode
from txlock._waiter import Waiter

__all__ = ["PostgresLockManager"]

log = logging.getLogger("txlock.postgres")

#: Version of the tables this module creates (stored in ``<schema>.txlock_version``).
SCHEMA_VERSION = 3
#: Longest key accepted, in characters (keys are stored whole; the index holds a hash).
MAX_KEY_CHARS = 4096
#: Longest key prefix accepted, in characters.
MAX_PREFIX_CHARS = 1024
#: Default lease of a hold without ``hold_timeout``: how long it outlives its process.
DEFAULT_LEASE = 10.0
#: Longest sleep of a waiter without a wake-up while LISTEN works (the safety net).
SAFETY_NET = 5.0
#: Sleep between attempts when LISTEN cannot be used (transaction pooler, listener down).
POLL_INTERVAL = 0.05
#: Connections kept per process and store, for each world (per event loop for async).
MAX_CONNECTIONS = 8
#: Seconds between sweeps of long-released rows and dead queue tickets (per process and store).
JANITOR_INTERVAL = 60.0
#: Asked once per connection: a proxy announces a backend pid that differs from the real one.
_PID = "SELECT pg_backend_pid()"
#: Bytes of the key covered by the prefix index used by ``list_locks``.
_INDEXED = 200
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_OPTIONS = ("schema", "table", "prefix", "lease", "durable")
#: Advisory lock taken (transaction-scoped, so pgbouncer-safe) around schema creation.
_DDL_LOCK = int.from_bytes(hashlib.sha256(b"txlock ddl").digest()[:8], "big", signed=True)
_LIBPQ_KEYWORDS = frozenset(d.keyword.decode() for d in psycopg.pq.Conninfo.get_defaults())


# ---------------------------------------------------------------------- SQL (built once per store)


class _Sql:
    """Every statement of one store, composed with quoted identifiers once."""

    def __init__(self, schema: str, table: str, durable: bool) -> None:
        kind = "" if durable else "UNLOGGED "
        ids = {
            "S": sql.Identifier(schema),
            "T": sql.Identifier(schema, table),
            "W": sql.Identifier(schema, table + "_waiters"),
            "V": sql.Identifier(schema, "txlock_version"),
            "Tprefix": sql.Identifier(table + "_prefix"),
            "Towner": sql.Identifier(table + "_owner"),
            "Wkey": sql.Identifier(table + "_waiters_key"),
            "Wowner": sql.Identifier(table + "_waiters_owner"),
            "N": sql.Literal(_INDEXED),
            # Microseconds of the server's clock: the seed of fencing tokens and queue tickets.
            "CLOCK": sql.SQL("(extract(epoch FROM clock_timestamp()) * 1000000)::int8"),
            # A queue ticket counts while its lease runs and, when its process holds a
            # session advisory lock on its LISTEN connection, only while that session lives:
            # a killed waiter stops blocking the queue at once (the lock is probed shared and
            # transaction-scoped, so probing never blocks and holds nothing afterwards).
            "ALIVE": sql.SQL("(w.session IS NULL OR NOT pg_try_advisory_xact_lock_shared(w.session))"),
        }

        def q(text: str) -> str:
            return sql.SQL(text).format(**{k: v for k, v in ids.items() if "{" + k + "}" in text}).as_string(None)

        self.version = q("SELECT version FROM {V} WHERE name = %(name)s")
        self.ddl = [
            q("SELECT pg_advisory_xact_lock(%(ddl_lock)s)"),
            q("CREATE SCHEMA IF NOT EXISTS {S}"),
            q(
                "CREATE TABLE IF NOT EXISTS {V} (name text PRIMARY KEY, version integer NOT NULL,"
                " created_at timestamptz NOT NULL DEFAULT now(), hwm bigint NOT NULL DEFAULT 0)"
            ),
            q(
                "CREATE " + kind + "TABLE IF NOT EXISTS {T} ("
                " key_hash bytea PRIMARY KEY,"  # sha256 of key: fixed width, fits any btree
                " key bytea NOT NULL,"  # prefix + key, UTF-8 with lone surrogates kept
                " holder bytea NOT NULL,"
                " token bigint NOT NULL,"  # kept after release: the key's token high-water mark
                " owner uuid,"  # the process whose heartbeat renews a hold without hold_timeout
                " ttl double precision,"
                " acquired_at timestamptz NOT NULL,"
                " expires_at timestamptz NOT NULL,"  # -infinity once released
                " granted uuid,"  # the queued call this hold was handed to by a release
                " wake boolean NOT NULL DEFAULT false)"  # someone waits for this key to be free
            ),
            q("CREATE INDEX IF NOT EXISTS {Tprefix} ON {T} (substring(key FROM 1 FOR {N}))"),
            q("CREATE INDEX IF NOT EXISTS {Towner} ON {T} (owner) WHERE owner IS NOT NULL"),
            q(
                "CREATE UNLOGGED TABLE IF NOT EXISTS {W} ("
                " waiter uuid PRIMARY KEY, key_hash bytea NOT NULL, ticket bigint NOT NULL,"
                " owner uuid NOT NULL, expires_at timestamptz NOT NULL,"
                " session bigint,"  # advisory lock held by the waiting process's LISTEN session
                # What a release needs to hand the lock straight to this call:
                " holder bytea, ttl double precision, span double precision)"
            ),
            q("CREATE INDEX IF NOT EXISTS {Wkey} ON {W} (key_hash, ticket)"),
            q("CREATE INDEX IF NOT EXISTS {Wowner} ON {W} (owner)"),
            q(
                "INSERT INTO {V} AS v (name, version) VALUES (%(name)s, %(version)s)"
                " ON CONFLICT (name) DO UPDATE SET version = greatest(v.version, EXCLUDED.version)"
            ),
            q("SELECT version FROM {V} WHERE name = %(name)s"),
        ]
        # Older tables are migrated in place: version 1 (pre-release) lacks the high-water
        # mark and the session column, version 2 the columns of the direct hand-off.
        self.migrate = [
            q("SELECT pg_advisory_xact_lock(%(ddl_lock)s)"),
            q("ALTER TABLE {V} ADD COLUMN IF NOT EXISTS hwm bigint NOT NULL DEFAULT 0"),
            q("ALTER TABLE {W} ADD COLUMN IF NOT EXISTS session bigint"),
            q(
                "ALTER TABLE {T} ADD COLUMN IF NOT EXISTS granted uuid,"
                " ADD COLUMN IF NOT EXISTS wake boolean NOT NULL DEFAULT false"
            ),
            q(
                "ALTER TABLE {W} ADD COLUMN IF NOT EXISTS holder bytea,"
                " ADD COLUMN IF NOT EXISTS ttl double precision, ADD COLUMN IF NOT EXISTS span double precision"
            ),
            q("UPDATE {V} SET version = %(version)s WHERE name = %(name)s AND version < %(version)s"),
            q("SELECT version FROM {V} WHERE name = %(name)s"),
        ]
        # One attempt, one statement: take the key if it is free or expired and nobody is
        # queued ahead of us (or re-grant it to its holder); when a waiter is granted, its
        # queue ticket goes in the same statement; when it is refused, it takes a ticket
        # (once). The token of a grant is max(the key's last token + 1, the server clock in
        # microseconds, the table's high-water mark + 1): it never regresses, needs no WAL.
        self.acquire = q(
            "WITH ahead AS (SELECT count(*) AS n, min(w.expires_at) AS until FROM {W} w"
            "  WHERE w.key_hash = %(h)s AND w.expires_at > now() AND w.waiter IS DISTINCT FROM %(wid)s::uuid"
            "  AND (%(ticket)s::int8 IS NULL OR (w.ticket, w.waiter) < (%(ticket)s::int8, %(wid)s::uuid))"
            "  AND {ALIVE}),"
            " cur AS (SELECT holder, expires_at FROM {T} WHERE key_hash = %(h)s AND expires_at > now()),"
            " ins AS ("
            "  INSERT INTO {T} AS l (key_hash, key, holder, token, owner, ttl, acquired_at, expires_at)"
            "  SELECT %(h)s, %(k)s, %(who)s,"
            "   greatest(coalesce((SELECT hwm FROM {V} WHERE name = %(name)s), 0) + 1, {CLOCK}),"
            "   CASE WHEN %(ttl)s::float8 IS NULL THEN %(owner)s::uuid END, %(ttl)s::float8, now(),"
            "   now() + make_interval(secs => coalesce(%(ttl)s::float8, %(lease)s::float8))"
            "  WHERE (SELECT n FROM ahead) = 0 OR EXISTS (SELECT 1 FROM cur WHERE holder = %(who)s)"
            "  ON CONFLICT (key_hash) DO UPDATE SET"
            "   token = CASE WHEN l.expires_at > now() THEN l.token ELSE greatest(l.token + 1, EXCLUDED.token) END,"
            "   acquired_at = CASE WHEN l.expires_at > now() THEN l.acquired_at ELSE EXCLUDED.acquired_at END,"
            "   key = EXCLUDED.key, holder = EXCLUDED.holder, owner = EXCLUDED.owner, ttl = EXCLUDED.ttl,"
            "   expires_at = EXCLUDED.expires_at, granted = NULL"
            "  WHERE l.expires_at <= now() OR (l.holder = EXCLUDED.holder AND l.key = EXCLUDED.key)"
            "  RETURNING token, acquired_at, expires_at),"
            " reg AS (INSERT INTO {W} (waiter, key_hash, ticket, owner, expires_at, session, holder, ttl, span)"
            "  SELECT %(wid)s::uuid, %(h)s, {CLOCK}, %(owner)s::uuid, now() + make_interval(secs => %(lease)s::float8),"
            "   %(session)s::int8, %(who)s, %(ttl)s::float8, coalesce(%(ttl)s::float8, %(lease)s::float8)"
            "  WHERE %(wid)s::uuid IS NOT NULL AND %(ticket)s::int8 IS NULL AND NOT EXISTS (SELECT 1 FROM ins)"
            "  ON CONFLICT (waiter) DO NOTHING RETURNING ticket),"
            " gone AS (DELETE FROM {W} WHERE waiter = %(wid)s::uuid AND EXISTS (SELECT 1 FROM ins) RETURNING 1),"
            # Refused: mark the key, so that the release that frees it notifies (the mark is
            # on the row the release locks, so it sees it even if it began before this). A
            # row committed after this statement's snapshot cannot be marked here: the
            # caller then looks again at once (see _parse_acquire).
            " flag AS (UPDATE {T} SET wake = true WHERE key_hash = %(h)s"
            "  AND NOT EXISTS (SELECT 1 FROM ins) RETURNING 1)"
            " SELECT i.token, extract(epoch FROM i.acquired_at)::float8, extract(epoch FROM i.expires_at)::float8,"
            "  c.holder, extract(epoch FROM c.expires_at - now())::float8,"
            "  a.n, extract(epoch FROM a.until - now())::float8,"
            "  coalesce((SELECT ticket FROM reg),"
            "   (SELECT ticket FROM {W} WHERE %(ticket)s::int8 IS NULL AND waiter = %(wid)s::uuid)),"
            "  (SELECT count(*) FROM gone), (SELECT count(*) FROM flag)"
            " FROM (SELECT 1) AS one LEFT JOIN ins i ON true LEFT JOIN cur c ON true LEFT JOIN ahead a ON true"
        )
        # The first attempt of a call (no waiter yet): the same grant as above when nobody
        # is queued, and nothing else, so the uncontended path is one plain INSERT. A refusal
        # returns no row; the caller then registers a waiter and asks with the full statement
        # (which also re-grants to the holder while others are queued).
        self.acquire_fast = q(
            "INSERT INTO {T} AS l (key_hash, key, holder, token, owner, ttl, acquired_at, expires_at)"
            " SELECT %(h)s, %(k)s, %(who)s,"
            "  greatest(coalesce((SELECT hwm FROM {V} WHERE name = %(name)s), 0) + 1, {CLOCK}),"
            "  CASE WHEN %(ttl)s::float8 IS NULL THEN %(owner)s::uuid END, %(ttl)s::float8, now(),"
            "  now() + make_interval(secs => coalesce(%(ttl)s::float8, %(lease)s::float8))"
            " WHERE NOT EXISTS (SELECT 1 FROM {W} w WHERE w.key_hash = %(h)s AND w.expires_at > now() AND {ALIVE})"
            " ON CONFLICT (key_hash) DO UPDATE SET"
            "  token = CASE WHEN l.expires_at > now() THEN l.token ELSE greatest(l.token + 1, EXCLUDED.token) END,"
            "  acquired_at = CASE WHEN l.expires_at > now() THEN l.acquired_at ELSE EXCLUDED.acquired_at END,"
            "  key = EXCLUDED.key, holder = EXCLUDED.holder, owner = EXCLUDED.owner, ttl = EXCLUDED.ttl,"
            "  expires_at = EXCLUDED.expires_at, granted = NULL"
            " WHERE l.expires_at <= now() OR (l.holder = EXCLUDED.holder AND l.key = EXCLUDED.key)"
            " RETURNING token, extract(epoch FROM acquired_at)::float8, extract(epoch FROM expires_at)::float8"
        )
        # Release hands the lock straight to the oldest live queued call, if any (its ticket
        # carries holder, hold_timeout and lease): the row changes holder, takes a new token
        # and the ticket goes, all in this statement, and the NOTIFY tells the waiter's
        # process that it holds the lock (payload: key hash, waiter id, token, expiry), so
        # the waiter needs no statement of its own. With nobody queued the key is freed
        # (the row stays: its token is the key's high-water mark), and a NOTIFY says so only
        # if the row is marked (``wake``): some caller sleeps on it. ``cur`` locks the row
        # and reads the mark from its latest version, so a mark committed after this
        # statement began still counts. Row locks go lock row first, then ticket, as in a
        # waiter's own attempt. Nothing returned: not ours, see ``holder``.
        self.release = q(
            "WITH cur AS (SELECT wake FROM {T} WHERE key_hash = %(h)s AND holder = %(who)s AND expires_at > now()"
            "  FOR UPDATE),"
            " nxt AS (SELECT w.waiter, w.holder, w.ttl, w.span, w.owner FROM {W} w"
            "  WHERE EXISTS (SELECT 1 FROM cur) AND w.key_hash = %(h)s AND w.expires_at > now()"
            "  AND w.holder IS NOT NULL AND {ALIVE}"
            "  ORDER BY w.ticket, w.waiter LIMIT 1 FOR UPDATE OF w),"
            " rel AS (UPDATE {T} l SET"
            "  holder = coalesce(n.holder, l.holder),"
            "  token = CASE WHEN n.waiter IS NULL THEN l.token ELSE greatest(l.token + 1, {CLOCK}) END,"
            "  owner = CASE WHEN n.waiter IS NOT NULL AND n.ttl IS NULL THEN n.owner END,"
            "  ttl = CASE WHEN n.waiter IS NULL THEN l.ttl ELSE n.ttl END,"
            "  acquired_at = CASE WHEN n.waiter IS NULL THEN l.acquired_at ELSE now() END,"
            "  expires_at = CASE WHEN n.waiter IS NULL THEN '-infinity'::timestamptz"
            "   ELSE now() + make_interval(secs => coalesce(n.span, %(lease)s::float8)) END,"
            "  granted = n.waiter, wake = n.waiter IS NOT NULL AND l.wake"
            "  FROM (SELECT 1) AS one LEFT JOIN nxt n ON true"
            "  WHERE l.key_hash = %(h)s AND l.holder = %(who)s AND l.expires_at > now()"
            "  RETURNING n.waiter, l.token, l.expires_at),"
            " gone AS (DELETE FROM {W} WHERE waiter = (SELECT waiter FROM rel)),"
            " say AS (SELECT pg_notify(%(chan)s, CASE WHEN r.waiter IS NULL THEN %(payload)s::text"
            "   ELSE %(payload)s::text || ' ' || r.waiter::text || ' ' || r.token::text"
            "    || ' ' || extract(epoch FROM r.expires_at)::float8::text END)"
            "  FROM rel r WHERE r.waiter IS NOT NULL OR (SELECT wake FROM cur))"
            " SELECT r.waiter, (SELECT count(*) FROM say) FROM rel r"
        )
        # A call that gave up while a release handed it the lock finds the hold here.
        self.granted = q(
            "SELECT token, extract(epoch FROM expires_at)::float8 FROM {T}"
            " WHERE key_hash = %(h)s AND granted = %(wid)s::uuid AND expires_at > now()"
        )
        self.extend = q(
            "UPDATE {T} SET expires_at = now() + make_interval(secs => coalesce(%(ttl)s::float8, %(lease)s::float8)),"
            " ttl = %(ttl)s::float8, owner = CASE WHEN %(ttl)s::float8 IS NULL THEN %(owner)s::uuid END"
            " WHERE key_hash = %(h)s AND holder = %(who)s AND token = %(token)s AND expires_at > now()"
            " RETURNING token, extract(epoch FROM acquired_at)::float8, extract(epoch FROM expires_at)::float8"
        )
        self.holder = q("SELECT holder FROM {T} WHERE key_hash = %(h)s AND expires_at > now()")
        self.watch = q(
            "SELECT holder, extract(epoch FROM expires_at - now())::float8"
            " FROM {T} WHERE key_hash = %(h)s AND expires_at > now()"
        )
        # A registered wait_for_lock caller marks the key it sleeps on (see ``acquire``).
        self.watch_mark = q(
            "UPDATE {T} SET wake = true WHERE key_hash = %(h)s AND expires_at > now()"
            " RETURNING holder, extract(epoch FROM expires_at - now())::float8"
        )
        info = (
            " l.key, l.holder, l.token, extract(epoch FROM l.acquired_at)::float8,"
            " CASE WHEN l.ttl IS NULL THEN NULL ELSE extract(epoch FROM l.expires_at)::float8 END,"
            " (SELECT count(*) FROM {W} w WHERE w.key_hash = l.key_hash AND w.expires_at > now() AND {ALIVE})"
        )
        self.inspect = q("SELECT" + info + " FROM {T} l WHERE l.key_hash = %(h)s AND l.expires_at > now()")
        self.list = q(
            "SELECT" + info + " FROM {T} l WHERE l.expires_at > now()"
            " AND substring(l.key FROM 1 FOR {N}) >= %(lo_n)s"
            " AND (%(hi_n)s::bytea IS NULL OR substring(l.key FROM 1 FOR {N}) < %(hi_n)s::bytea)"
            " AND l.key >= %(lo)s AND (%(hi)s::bytea IS NULL OR l.key < %(hi)s::bytea)"
            " ORDER BY l.key"
        )
        self.force = q(
            "UPDATE {T} SET expires_at = '-infinity', owner = NULL, granted = NULL"
            " WHERE key_hash = %(h)s AND expires_at > now()"
            " RETURNING pg_notify(%(chan)s, %(payload)s)"
        )
        # A waiter leaving the queue lets the next one in when the key is free; if a release
        # handed it the lock meanwhile, the hold is returned (the caller keeps or releases it).
        self.withdraw = q(
            "WITH del AS (DELETE FROM {W} WHERE waiter = %(wid)s RETURNING 1),"
            " n AS (SELECT pg_notify(%(chan)s, %(payload)s) FROM del"
            "  WHERE NOT EXISTS (SELECT 1 FROM {T} WHERE key_hash = %(h)s AND expires_at > now())),"
            " got AS (SELECT token, extract(epoch FROM expires_at)::float8 AS e FROM {T}"
            "  WHERE key_hash = %(h)s AND granted = %(wid)s::uuid AND expires_at > now())"
            " SELECT (SELECT count(*) FROM del), (SELECT count(*) FROM n), (SELECT token FROM got),"
            "  (SELECT e FROM got)"
        )
        # The heartbeat: one statement renewing every hold of this process and the queue
        # tickets of its waiting calls (only those still waiting: a ticket whose call is
        # gone, because its removal failed or its reply was lost with a connection, is
        # deleted instead, and the next waiter notified), reporting holds that lapsed.
        # A ticket is deleted only once no longer fresh (expiring within 3/4 lease), so a
        # call registering while the list of live waiters was taken keeps its place.
        self.heartbeat = q(
            "WITH a AS (UPDATE {T} SET expires_at = now() + make_interval(secs => %(lease)s::float8)"
            "  WHERE owner = %(owner)s AND expires_at > now()"
            "  AND (granted IS NULL OR NOT granted = ANY(%(orphans)s::uuid[])) RETURNING 1),"
            " b AS (UPDATE {W} SET expires_at = now() + make_interval(secs => %(lease)s::float8)"
            "  WHERE owner = %(owner)s AND waiter = ANY(%(live)s::uuid[]) AND expires_at > now() RETURNING 1),"
            " stale AS (DELETE FROM {W} WHERE owner = %(owner)s AND NOT (waiter = ANY(%(live)s::uuid[]))"
            "  AND (expires_at < now() + make_interval(secs => %(lease)s::float8 * 0.75)"
            "   OR waiter = ANY(%(orphans)s::uuid[])) RETURNING key_hash),"
            # Holds handed to calls of this process that had already given up (their
            # withdrawal failed): freed, and the key's waiters notified.
            " freed AS (UPDATE {T} SET expires_at = '-infinity', owner = NULL, granted = NULL"
            "  WHERE granted = ANY(%(orphans)s::uuid[]) AND expires_at > now() RETURNING key_hash),"
            " nf AS (SELECT pg_notify(%(chan)s, encode(substring(key_hash FROM 1 FOR 12), 'hex')) FROM freed),"
            " n AS (SELECT pg_notify(%(chan)s, encode(substring(s.key_hash FROM 1 FOR 12), 'hex'))"
            "  FROM (SELECT DISTINCT key_hash FROM stale) s"
            "  WHERE NOT EXISTS (SELECT 1 FROM {T} l WHERE l.key_hash = s.key_hash AND l.expires_at > now())),"
            " lost AS (UPDATE {T} SET owner = NULL WHERE owner = %(owner)s AND expires_at <= now() RETURNING key)"
            " SELECT (SELECT count(*) FROM a), (SELECT count(*) FROM b), (SELECT array_agg(key) FROM lost),"
            "  (SELECT count(*) FROM stale), (SELECT count(*) FROM n), (SELECT count(*) FROM nf)"
        )
        # The janitor (every minute per process): rows released or expired long ago go, their
        # highest token folded into the table's high-water mark in the same statement, so a
        # key taken again later still gets a larger token; dead queue tickets go too.
        self.janitor = q(
            "WITH d AS (DELETE FROM {T} WHERE expires_at < now() - interval '60 seconds' RETURNING token),"
            " g AS (DELETE FROM {W} WHERE expires_at < now() - interval '60 seconds' RETURNING 1),"
            " u AS (UPDATE {V} SET hwm = greatest(hwm, (SELECT max(token) FROM d))"
            "  WHERE name = %(name)s AND EXISTS (SELECT 1 FROM d) RETURNING 1)"
            " SELECT (SELECT count(*) FROM d), (SELECT count(*) FROM g), (SELECT count(*) FROM u)"
        )


# ---------------------------------------------------------------------- pure helpers


def _key_bytes(prefix: str, key: str) -> bytes:
    if len(key) > MAX_KEY_CHARS:
        raise ValueError(f"key is {len(key)} characters long; the PostgreSQL backend accepts at most {MAX_KEY_CHARS}")
    return encode(prefix + key)


def _hash(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def _successor(prefix: bytes) -> bytes | None:
    """The smallest byte string greater than every string starting with ``prefix``."""
    stripped = prefix.rstrip(b"\xff")
    if not stripped:
        return None
    return stripped[:-1] + bytes([stripped[-1] + 1])


def _check_identifier(name: str, value: object, limit: int) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a str, not {type(value).__name__}")
    if not _IDENT.match(value) or len(value) > limit:
        raise ConfigurationError(
            f"{name}={value!r} is not a plain SQL identifier: use letters, digits and _ (not first),"
            f" at most {limit} characters"
        )
    return value


def _scrub(text: str, conninfo: Mapping[str, str]) -> str:
    password = conninfo.get("password")
    return text.replace(password, "***") if password else text


def _conninfo_url(conninfo: Mapping[str, str], *, redact: bool) -> str:
    """A ``postgresql://`` URL for a libpq parameter dict."""
    params = dict(conninfo)
    user = params.pop("user", "")
    password = params.pop("password", None)
    host = params.pop("host", "")
    port = params.pop("port", "")
    dbname = params.pop("dbname", "")
    netloc = ""
    if user:
        netloc = quote(user, safe="")
        if password is not None:
            netloc += ":" + ("***" if redact else quote(password, safe=""))
        netloc += "@"
    elif password is not None:
        params["password"] = "***" if redact else password
    if host and (host.startswith("/") or "," in host or ":" in host):
        params["host"] = host
    else:
        netloc += host
        if port:
            netloc += f":{port}"
    if port and "host" in params:
        params["port"] = port
    return _unsplit("postgresql", netloc, "/" + quote(dbname, safe="") if dbname else "", urlencode(params))


def _epoch(value: float | None) -> float | None:
    return None if value is None else float(value)


# ---------------------------------------------------------------------- the listener


class _Reg:
    """What a waiter of this backend carries in ``Waiter.data``."""

    __slots__ = ("acquire", "call", "chan", "db", "payload", "ticket", "wid")

    def __init__(self, chan: str, payload: str, acquire: bool) -> None:
        self.chan = chan
        self.payload = payload
        self.acquire = acquire
        self.wid = uuid.uuid4() if acquire else None
        self.ticket: int | None = None
        self.db = False  # a queue row may exist
        # (key, holder, hold_timeout) of a queued acquire: what its lease is made of when
        # a release hands it the lock.
        self.call: tuple[str, str, float | None] | None = None

    def lease(self, token: int, expires: float) -> Lease:
        """The lease of this call once handed the lock (its process's heartbeat already
        runs: the call registered as a waiter)."""
        assert self.call is not None
        key, holder, ttl = self.call
        return Lease(key, holder, token, None if ttl is None else expires, ttl)


class _Listener:
    """The one LISTEN connection of this process to one database, on its own thread.

    Waiters register here (by channel and key hash) *before* they look at the table, so a
    release that commits after their look always reaches them. The thread wakes the
    registered waiters (thread or event-loop waiters alike) when a notification names
    their key, and wakes every waiter whenever notifications may have been missed (the
    connection was lost, or LISTEN turned out not to work).
    """

    def __init__(self, conninfo: dict[str, str], display: str) -> None:
        self.conninfo = conninfo
        self.connect_args: dict[str, Any] = {"connect_timeout": "10", **conninfo, "autocommit": True}
        self.display = display
        self.mutex = threading.Lock()
        self.waiters: dict[tuple[str, str], list[Waiter]] = {}
        self.channels: dict[str, int] = {}  # channel -> number of stores using it
        self.ready: dict[str, concurrent.futures.Future[bool]] = {}
        self.listening: set[str] = set()
        self.ok = False  # notifications reach this process right now
        # A session advisory lock held by the LISTEN connection: queue tickets naming it
        # count only while this process (its listening session) is alive.
        self.session_key = int.from_bytes(os.urandom(8), "big", signed=True)
        self.locked = False
        self.pooled = False  # LISTEN does not work here (transaction pooler): poll for good
        self.thread: threading.Thread | None = None
        self.rfd, self.wfd = os.pipe()
        os.set_blocking(self.rfd, False)
        os.set_blocking(self.wfd, False)

    # -- called by stores and waiters (any thread)

    def retain(self, chan: str) -> None:
        with self.mutex:
            self.channels[chan] = self.channels.get(chan, 0) + 1

    def release(self, chan: str) -> None:
        with self.mutex:
            left = self.channels.get(chan, 0) - 1
            if left > 0:
                self.channels[chan] = left
                return
            self.channels.pop(chan, None)
            self.ready.pop(chan, None)
        self._kick()

    def subscribe(self, chan: str) -> concurrent.futures.Future[bool]:
        """A future done once LISTEN on ``chan`` is active (``True``) or unusable (``False``)."""
        with self.mutex:
            fut = self.ready.get(chan)
            if fut is None:
                fut = self.ready[chan] = concurrent.futures.Future()
                if self.pooled:
                    fut.set_result(False)
                    return fut
            if self.thread is None:
                self.thread = threading.Thread(target=self._run, name="txlock-postgres-listen", daemon=True)
                self.thread.start()
        self._kick()
        return fut

    def add(self, reg: _Reg, waiter: Waiter) -> None:
        with self.mutex:
            self.waiters.setdefault((reg.chan, reg.payload), []).append(waiter)

    def remove(self, reg: _Reg, waiter: Waiter) -> None:
        with self.mutex:
            found = self.waiters.get((reg.chan, reg.payload))
            if found and waiter in found:
                found.remove(waiter)
                if not found:
                    del self.waiters[(reg.chan, reg.payload)]

    def mark_pooled(self) -> None:
        """LISTEN cannot work here (a transaction-pooling proxy): waiters poll from now on."""
        with self.mutex:
            self.pooled = True
            self.ok = False
            futures = list(self.ready.values())
        for fut in futures:
            if not fut.done():
                fut.set_result(False)
        self._kick()

    def session(self) -> int | None:
        """The session lock key to store with queue tickets, or ``None`` (lease only)."""
        return self.session_key if self.ok and self.locked and not self.pooled else None

    def live(self, chan: str) -> list[uuid.UUID]:
        """Ids of the calls of this process queued on ``chan`` right now."""
        with self.mutex:
            regs = [w.data for found in self.waiters.values() for w in found]
        return [r.wid for r in regs if isinstance(r, _Reg) and r.chan == chan and r.db and r.wid is not None]

    def count(self) -> int:
        with self.mutex:
            return sum(len(found) for found in self.waiters.values())

    def _kick(self) -> None:
        with contextlib.suppress(BlockingIOError, OSError):
            os.write(self.wfd, b"x")

    def _dispatch(self, chan: str, payload: str) -> None:
        key, _, grant = payload.partition(" ")
        if grant:
            self._granted(chan, key, grant)
            return
        # The key is free: wake every watcher and un-ticketed waiter, but of the queued
        # acquirers only the oldest local one: the others cannot be admitted before it
        # anyway (no herd).
        with self.mutex:
            found = list(self.waiters.get((chan, key), ()))
        first: Waiter | None = None
        first_ticket = 0
        for waiter in found:
            reg = waiter.data
            ticket = reg.ticket if isinstance(reg, _Reg) and reg.acquire else None
            if ticket is None:
                waiter.wake()
            elif first is None or ticket < first_ticket:
                first, first_ticket = waiter, ticket
        if first is not None:
            first.wake()

    def _granted(self, chan: str, key: str, grant: str) -> None:
        """A release handed the lock to a queued call: if it is one of ours and still
        waiting, give it the lease (it returns without asking the table again)."""
        try:
            wid_text, token_text, expires_text = grant.split(" ")
            wid, token, expires = uuid.UUID(wid_text), int(token_text), float(expires_text)
        except ValueError:
            log.warning("txlock ignored a malformed notification on %s: %r", chan, grant)
            return
        with self.mutex:
            found = self.waiters.get((chan, key), [])
            for waiter in found:
                reg = waiter.data
                if isinstance(reg, _Reg) and reg.wid == wid and reg.call is not None:
                    # Under the mutex, so that a call giving up at this moment either finds
                    # its lease here or finds itself unregistered and asks the table.
                    found.remove(waiter)
                    if not found:
                        del self.waiters[(chan, key)]
                    reg.db = False  # the releasing statement deleted the ticket
                    waiter.data = None
                    waiter.lease = reg.lease(token, expires)
                    break
            else:
                return  # not ours, or the call already left (its withdrawal deals with it)
        waiter.wake()

    def _wake_all(self) -> None:
        with self.mutex:
            found = [w for ws in self.waiters.values() for w in ws]
        for waiter in found:
            waiter.wake()

    def _resolve(self, value: bool, only: set[str] | None = None) -> None:
        with self.mutex:
            futures = [f for c, f in self.ready.items() if only is None or c in only]
        for fut in futures:
            if not fut.done():
                fut.set_result(value)

    # -- the thread

    def _run(self) -> None:
        conn: psycopg.Connection[Any] | None = None
        backoff = 0.1
        try:
            while True:
                with self.mutex:
                    wanted = set(self.channels) & set(self.ready)
                    if not wanted or self.pooled:
                        # Exit under the mutex: a later subscribe() starts a new thread.
                        self.thread = None
                        self.ok = False
                        return
                if conn is None:
                    try:
                        conn = psycopg.Connection.connect(**self.connect_args)
                    except psycopg.Error as exc:
                        self.ok = False
                        self._resolve(False)
                        log.warning(
                            "txlock could not open its LISTEN connection to %s (%s); waiters poll every"
                            " %gs until it is back",
                            self.display,
                            _scrub(str(exc).strip(), self.conninfo),
                            POLL_INTERVAL,
                        )
                        self._pause(backoff)
                        backoff = min(backoff * 2, 2.0)
                        continue
                    self.listening = set()
                try:
                    self._serve(conn, wanted)
                    backoff = 0.1
                except psycopg.Error as exc:
                    was_ok, self.ok, self.locked = self.ok, False, False
                    log.warning(
                        "txlock's LISTEN connection to %s was lost (%s); reconnecting, waiters re-check meanwhile",
                        self.display,
                        _scrub(str(exc).strip(), self.conninfo),
                    )
                    conn.close()
                    conn = None
                    if was_ok:
                        self._wake_all()
                    self._pause(backoff)
        finally:
            if conn is not None:
                conn.close()

    def _pause(self, seconds: float) -> None:
        select.select([self.rfd], [], [], seconds)
        self._drain()

    def _drain(self) -> None:
        try:
            while os.read(self.rfd, 4096):
                pass
        except (BlockingIOError, OSError):
            pass

    def _serve(self, conn: psycopg.Connection[Any], wanted: set[str]) -> None:
        fresh = not self.listening
        for chan in sorted(wanted - self.listening):
            conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(chan)))
            self.listening.add(chan)
        for chan in sorted(self.listening - wanted):
            conn.execute(sql.SQL("UNLISTEN {}").format(sql.Identifier(chan)))
            self.listening.discard(chan)
        if fresh and self.listening and not self._direct(conn):
            self.pooled = True
            self.ok = False
            log.warning(
                "LISTEN on %s cannot reach txlock's connection through a transaction-pooling proxy"
                " (pgbouncer?); waiters poll every %gs instead of being woken",
                self.display,
                POLL_INTERVAL,
            )
            try:
                conn.execute("UNLISTEN *")
            finally:
                self._resolve(False)
                self._wake_all()
            return
        if fresh:
            self.ok = True
            self._wake_all()  # anything released while we were away
        self._resolve(True, self.listening)
        for note in conn.notifies(timeout=0):
            self._dispatch(note.channel, note.payload)
        readable, _, _ = select.select([conn.fileno(), self.rfd], [], [], 60)
        if self.rfd in readable:
            self._drain()
        for note in conn.notifies(timeout=0):
            self._dispatch(note.channel, note.payload)

    def _direct(self, conn: psycopg.Connection[Any]) -> bool:
        """Whether ``conn`` is a session of the server itself (not a proxy's: a proxy announces
        a backend pid of its own); if so, take this process's session lock on it."""
        row = conn.execute(_PID, prepare=False).fetchone()
        if not row or row[0] != conn.info.backend_pid:
            return False
        conn.execute("SELECT pg_advisory_lock(%s)", (self.session_key,), prepare=False)
        self.locked = True
        return True


# ---------------------------------------------------------------------- the store (all I/O)


_Link = tuple[psycopg.Connection[Any], psycopg.Cursor[Any]]
_ALink = tuple[psycopg.AsyncConnection[Any], psycopg.AsyncCursor[Any]]
_NO_TRANSACTION = contextlib.nullcontext()  # reusable, sync and async
_IDLE = psycopg.pq.TransactionStatus.IDLE


class _Op:
    """One round trip: statements (one, or several in a transaction) and their parameters."""

    __slots__ = ("listen", "missing_ok", "params", "statements")

    def __init__(
        self,
        statements: Sequence[str],
        params: Mapping[str, Any],
        listen: concurrent.futures.Future[bool] | None = None,
        missing_ok: bool = False,
    ) -> None:
        self.statements = statements
        self.params = dict(params)
        self.listen = listen
        self.missing_ok = missing_ok


class _Store:
    """Connections, listener and heartbeat shared by every manager of this process that
    names the same database, schema, table and lease."""

    def __init__(
        self,
        conninfo: dict[str, str],
        schema: str,
        table: str,
        lease: float,
        durable: bool,
        pool: Any = None,
        async_pool: Any = None,
    ) -> None:
        self.conninfo = conninfo
        self.schema = schema
        self.table = table
        self.lease = lease
        self.pool = pool
        self.async_pool = async_pool
        self.display = f"PostgreSQL at {_conninfo_url(conninfo, redact=True)} (table {schema}.{table})"
        self.sql = _Sql(schema, table, durable)
        self.name = f"{schema}.{table}"
        self.chan = "txlock_" + hashlib.sha256(self.name.encode()).hexdigest()[:24]
        self.owner = uuid.uuid4()  # this process, for holds bound to its life
        self.prepare = True  # server-side prepared statements, until a pooler forbids them
        self.ready = False
        self.refs = 0
        self.mutex = threading.Lock()
        # Idle connections, each with its cursor (made once: a statement costs no new objects).
        self.idle: list[_Link] = []
        self.used = 0  # blocking connections in use (at most MAX_CONNECTIONS)
        self.blocked = 0  # threads waiting for one of them
        self.freed = threading.Condition(self.mutex)
        self.aidle: list[_ALink] = []
        self.aslots: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Semaphore] = (
            weakref.WeakKeyDictionary()
        )
        self.heartbeat: _scheduler.Job | None = None
        self.janitor: _scheduler.Job | None = None
        # Queued calls that gave up but whose ticket could not be removed (the statement
        # failed): the heartbeat deletes their tickets and frees any hold a release handed
        # them meanwhile. Kept for two leases (id -> monotonic deadline), long enough for a
        # grant racing the first deletion to become visible to a later beat.
        self.orphans: dict[uuid.UUID, float] = {}
        self.kinds: weakref.WeakKeyDictionary[Any, bool] = weakref.WeakKeyDictionary()
        self.connect_args: dict[str, Any] = {"connect_timeout": "10", **conninfo, "autocommit": True}
        self.listener = _listener(conninfo, self.display)
        self.listener.retain(self.chan)
        self.active = True  # False once closed, until used again

    # -- lifetime

    def close(self) -> None:
        """Drop idle connections, stop the heartbeat and stop listening (all reopen lazily)."""
        with self.mutex:
            idle, self.idle = self.idle, []
            aidle, self.aidle = self.aidle, []
            job, self.heartbeat = self.heartbeat, None
            sweep, self.janitor = self.janitor, None
            active, self.active = self.active, False
        for conn, _ in idle:
            conn.close()
        for aconn, _ in aidle:
            aconn.pgconn.finish()  # no await needed to drop an idle socket
        for each in (job, sweep):
            if each is not None:
                each.cancel()
        self.ready = False  # set up again (and the janitor rescheduled) on next use
        if active:
            self.listener.release(self.chan)

    def reopen(self) -> None:
        with self.mutex:
            if self.active:
                return
            self.active = True
        self.listener.retain(self.chan)

    def subscribe(self) -> concurrent.futures.Future[bool]:
        self.reopen()
        return self.listener.subscribe(self.chan)

    def need_heartbeat(self) -> None:
        with self.mutex:
            if self.heartbeat is None:
                self.heartbeat = _scheduler.schedule(self._beat, self.lease / 3, name=f"txlock heartbeat {self.name}")

    def orphan(self, wid: uuid.UUID | None) -> None:
        """Remember a queued call that gave up without removing its ticket (see ``orphans``)."""
        if wid is not None:
            with self.mutex:
                self.orphans[wid] = time.monotonic() + 2 * self.lease
        self.need_heartbeat()

    def _beat(self) -> bool:
        with self.mutex:
            if self.heartbeat is None:
                return False
            now = time.monotonic()
            self.orphans = {wid: until for wid, until in self.orphans.items() if until > now}
            orphans = list(self.orphans)
        try:
            live = self.listener.live(self.chan)
            params = {"owner": self.owner, "lease": self.lease, "live": live, "chan": self.chan, "orphans": orphans}
            rows = self.run(_Op([self.sql.heartbeat], params))
        except BackendError as exc:
            log.warning("txlock heartbeat for %s failed: %s", self.display, exc)
            return True
        lost = rows[0][2] if rows else None
        if lost:
            log.error(
                "txlock lost %d hold(s) on %s because the heartbeat came too late (the process was paused"
                " or the server unreachable for more than %gs): %s",
                len(lost),
                self.display,
                self.lease,
                ", ".join(repr(decode(bytes(k))) for k in lost[:10]),
            )
        return True

    # -- errors: the one place where driver exceptions become txlock's

    def error(self, exc: BaseException) -> BackendError | ConfigurationError:
        text = _scrub(" ".join(str(exc).split()) or type(exc).__name__, self.conninfo)
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

    def recoverable(self, exc: BaseException, attempt: int, broken: bool) -> bool:
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
                _scrub(str(exc).strip(), self.conninfo),
            )
            self.drop_idle()
            return True
        return False

    def drop_idle(self) -> None:
        with self.mutex:
            idle, self.idle = self.idle, []
            aidle, self.aidle = self.aidle, []
        for conn, _ in idle:
            conn.close()
        for aconn, _ in aidle:
            aconn.pgconn.finish()

    # -- sync I/O

    def _bounded_connect_args(self) -> dict[str, Any]:
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

    def _connect(self) -> psycopg.Connection[Any]:
        conn = psycopg.Connection.connect(**self._bounded_connect_args())
        conn.add_notify_handler(_ignore)  # stray notifications (pgbouncer) must not pile up
        return conn

    def _get(self) -> _Link:
        if self.pool is not None:
            conn: psycopg.Connection[Any] = self.pool.getconn()
            return conn, conn.cursor(row_factory=tuple_row)
        with self.mutex:
            while self.used >= MAX_CONNECTIONS:
                self.blocked += 1
                try:
                    self.freed.wait()
                finally:
                    self.blocked -= 1
            self.used += 1
            if self.idle:
                return self.idle.pop()
        try:
            conn = self._connect()
        except BaseException:
            self._done(None)
            raise
        return conn, conn.cursor(row_factory=tuple_row)

    def _done(self, link: _Link | None) -> bool:
        """Give a connection slot back, and ``link`` to the idle list if it may be reused
        (returns whether it was kept)."""
        with self.mutex:
            self.used -= 1
            if self.blocked:
                self.freed.notify()
            if link is not None and self.active:
                self.idle.append(link)
                return True
        return False

    def _put(self, link: _Link) -> None:
        if self.pool is not None:
            self.pool.putconn(link[0])
        elif not self._done(link if _reusable(link[0]) else None):
            link[0].close()

    def _execute(self, link: _Link, op: _Op) -> list[tuple[Any, ...]]:
        conn, cur = link
        with conn.transaction() if len(op.statements) > 1 or not conn.autocommit else _NO_TRANSACTION:
            direct = self.kinds.get(conn)
            if direct is None:
                direct = self.classify(conn, conn.execute(_PID, prepare=False).fetchone())
            prepare = direct and self.prepare
            for statement in op.statements:
                cur.execute(statement, op.params, prepare=prepare)
            return cur.fetchall()  # every op ends with a statement that returns rows

    def run(self, op: _Op) -> list[tuple[Any, ...]]:
        """Execute ``op`` (creating the tables first if needed) and return the last rows."""
        if not self.active:
            self.reopen()
        if not self.ready:
            rows = self._io(self._version_op())
            self._check_version(self._io(self._ddl_op(rows)) if _needs_ddl(rows) else rows)
        if op.listen is not None:
            op.listen.result()
            self._late(op)
        return self._io(op)

    def _io(self, op: _Op) -> list[tuple[Any, ...]]:
        attempt = 0
        while True:
            link = None
            try:
                link = self._get()
                try:
                    return self._execute(link, op)
                finally:
                    self._put(link)
            except Exception as exc:
                rows = self._failed(exc, op, attempt, link and link[0])
                if rows is not None:
                    return rows
            attempt += 1

    def _failed(self, exc: Exception, op: _Op, attempt: int, conn: Any) -> list[tuple[Any, ...]] | None:
        """Judge a failed attempt of ``op`` (both worlds): the rows to answer with, ``None`` to
        try again, or raise (driver errors translated)."""
        if isinstance(exc, (pg_errors.UndefinedTable, pg_errors.InvalidSchemaName)):
            if op.missing_ok:
                return []
            self.ready = False
            raise exc
        if isinstance(exc, psycopg.Error):
            if self.recoverable(exc, attempt, conn is not None and _broken(conn)):
                return None
            raise self.error(exc) from exc
        if _is_pool_error(exc):
            raise self.error(exc) from exc
        raise exc

    # -- async I/O (the same steps with await)

    async def _aconnect(self) -> psycopg.AsyncConnection[Any]:
        conn = await psycopg.AsyncConnection.connect(**self._bounded_connect_args())
        conn.add_notify_handler(_ignore)
        return conn

    def _aslots(self) -> asyncio.Semaphore:
        loop = asyncio.get_running_loop()
        with self.mutex:
            sem = self.aslots.get(loop)
            if sem is None:
                sem = self.aslots[loop] = asyncio.Semaphore(MAX_CONNECTIONS)
            return sem

    async def _aget(self) -> _ALink:
        if self.async_pool is not None:
            conn: psycopg.AsyncConnection[Any] = await self.async_pool.getconn()
            return conn, conn.cursor(row_factory=tuple_row)
        sem = self._aslots()
        await sem.acquire()
        try:
            with self.mutex:
                if self.aidle:
                    return self.aidle.pop()
            conn = await self._aconnect()
        except BaseException:
            sem.release()
            raise
        return conn, conn.cursor(row_factory=tuple_row)

    async def _aput(self, link: _ALink) -> None:
        conn = link[0]
        if self.async_pool is not None:
            await self.async_pool.putconn(conn)
            return
        try:
            if _reusable(conn):
                with self.mutex:
                    if self.active:
                        self.aidle.append(link)
                        return
            await conn.close()
        finally:
            self._aslots().release()

    async def _aexecute(self, link: _ALink, op: _Op) -> list[tuple[Any, ...]]:
        conn, cur = link
        async with conn.transaction() if len(op.statements) > 1 or not conn.autocommit else _NO_TRANSACTION:
            direct = self.kinds.get(conn)
            if direct is None:
                direct = self.classify(conn, await (await conn.execute(_PID, prepare=False)).fetchone())
            prepare = direct and self.prepare
            for statement in op.statements:
                await cur.execute(statement, op.params, prepare=prepare)
            return await cur.fetchall()

    async def arun(self, op: _Op) -> list[tuple[Any, ...]]:
        """Async form of :meth:`run`."""
        if not self.active:
            self.reopen()
        if not self.ready:
            rows = await self._aio(self._version_op())
            self._check_version(await self._aio(self._ddl_op(rows)) if _needs_ddl(rows) else rows)
        if op.listen is not None:
            await asyncio.wrap_future(op.listen)
            self._late(op)
        return await self._aio(op)

    async def _aio(self, op: _Op) -> list[tuple[Any, ...]]:
        attempt = 0
        while True:
            link = None
            try:
                link = await self._aget()
                try:
                    return await self._aexecute(link, op)
                finally:
                    await self._aput(link)
            except Exception as exc:
                rows = self._failed(exc, op, attempt, link and link[0])
                if rows is not None:
                    return rows
            attempt += 1

    # -- schema (pure halves)

    def _version_op(self) -> _Op:
        return _Op([self.sql.version], {"name": self.table}, missing_ok=True)

    def _ddl_op(self, rows: list[tuple[Any, ...]]) -> _Op:
        """Create the tables (none yet) or migrate them (an older version)."""
        params = {"name": self.table, "version": SCHEMA_VERSION, "ddl_lock": _DDL_LOCK}
        return _Op(self.sql.migrate if rows else self.sql.ddl, params)

    def _check_version(self, rows: list[tuple[Any, ...]]) -> None:
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
                    self._sweep, JANITOR_INTERVAL, name=f"txlock janitor {self.name}", first_delay=JANITOR_INTERVAL
                )

    def _sweep(self) -> bool:
        with self.mutex:
            if self.janitor is None:
                return False
        try:
            self.run(_Op([self.sql.janitor], {"name": self.table}))
        except BackendError as exc:
            log.warning("txlock janitor for %s failed: %s", self.display, exc)
        return True

    def _late(self, op: _Op) -> None:
        """Parameters known only once the listener is up: its session lock (queue liveness)."""
        if "session" in op.params:
            op.params["session"] = self.listener.session()

    # -- prepared statements: only on direct connections

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


def _needs_ddl(rows: list[tuple[Any, ...]]) -> bool:
    return not rows or int(rows[0][0]) < SCHEMA_VERSION


def _ignore(_note: object) -> None:
    pass


def _reusable(conn: psycopg.Connection[Any] | psycopg.AsyncConnection[Any]) -> bool:
    return not conn.closed and conn.pgconn.transaction_status == _IDLE


def _broken(conn: psycopg.Connection[Any] | psycopg.AsyncConnection[Any]) -> bool:
    return bool(conn.closed or getattr(conn, "broken", False))


def _is_pool_error(exc: BaseException) -> bool:
    return type(exc).__module__.startswith("psycopg_pool")


# ---------------------------------------------------------------------- per-process registries

_stores: dict[tuple[Any, ...], _Store] = {}
_listeners: dict[tuple[tuple[str, str], ...], _Listener] = {}
_registry_mutex = threading.Lock()
_graveyard: list[object] = []  # a forked child must never close (or GC) its parent's sockets


def _store(key: tuple[Any, ...], make: Callable[[], _Store]) -> _Store:
    with _registry_mutex:
        store = _stores.get(key)
        if store is None:
            store = _stores[key] = make()
        store.refs += 1
        return store


def _listener(conninfo: dict[str, str], display: str) -> _Listener:
    key = tuple(sorted(conninfo.items()))
    # Called with _registry_mutex held (from _Store.__init__ inside _store).
    listener = _listeners.get(key)
    if listener is None:
        listener = _listeners[key] = _Listener(conninfo, display)
    return listener


def _after_fork() -> None:
    global _registry_mutex
    _graveyard.append((dict(_stores), dict(_listeners)))
    _stores.clear()
    _listeners.clear()
    _registry_mutex = threading.Lock()


def _close_all() -> None:
    for store in list(_stores.values()):
        store.close()


os.register_at_fork(after_in_child=_after_fork)
atexit.register(_close_all)


# ---------------------------------------------------------------------- the manager


class PostgresLockManager(BaseLockManager):
    """Locks shared by every process on every host that can reach one PostgreSQL database.

    ``PostgresLockManager("postgresql://user:pass@host:5432/db")`` or
    ``txlock.from_url("postgresql://...?schema=txlock&table=locks&prefix=app:")``. Pass
    ``pool=`` / ``async_pool=`` (psycopg_pool ``ConnectionPool`` / ``AsyncConnectionPool``)
    to use your own connections instead of the manager's small per-process cache.

    Args:
        url: a ``postgresql://`` URL or libpq conninfo string (``None``: libpq defaults and
            ``PG*`` environment variables, or the pool's conninfo). txlock's options may be
            given in the URL's query as with :func:`txlock.from_url`; a keyword argument
            that contradicts one raises ``ConfigurationError``.
        pool: a psycopg_pool ``ConnectionPool`` used for blocking calls.
        async_pool: a psycopg_pool ``AsyncConnectionPool`` used for async calls (it belongs
            to one event loop: use the manager's async methods on that loop only).
        schema: schema of the tables (created on first use), default ``txlock``.
        table: name of the lock table, default ``locks`` (also ``<table>_waiters`` and
            ``txlock_version`` in the same schema).
        prefix: prepended to every key, so several applications can share one table.
        lease: seconds a hold without ``hold_timeout`` outlives the process that took it
            (renewed every ``lease / 3`` seconds by one heartbeat per process), default 10.
        acquire_timeout, raise_on_timeout: see :class:`~txlock.BaseLockManager`.

    Guarantees and limits:

    * Mutual exclusion is decided by one SQL statement per attempt on a row keyed by the
      SHA-256 of the key, with expiry judged by the server's clock (``now()``): client
      clocks never matter. Keys are stored whole (any ``str``, NUL and lone surrogates
      included) up to 4096 characters; longer keys raise ``ValueError`` before any I/O.
    * Fencing tokens strictly increase per key (re-acquiring keeps the token): a grant takes
      ``max(the key's last token + 1, the table's high-water mark + 1, the server clock in
      microseconds)``. A released row keeps its token; rows released over a minute ago are
      swept with their tokens folded into the high-water mark. Tokens never regress across a
      restart or crash unless the server's clock is stepped back by more than the time since
      the lost rows were written (see docs/postgres.md).
    * Waiters are served in arrival order: each waiter takes a ticket in a queue table; a
      release hands the lock to the oldest live ticket in the same statement (its
      ``NOTIFY`` carries the grant to the waiting process), and a free or expired key goes
      only to the oldest live ticket, so no waiter starves. A ticket lives while its call
      waits: it goes in the statement that grants the call, or when the call gives up; a
      ticket of a killed process stops counting as soon as the server sees that process's
      LISTEN session end (else within ``lease``). Waiters sleep until a ``NOTIFY`` reaches
      this process's one LISTEN connection, with a safety net of 5 s (or the time left on
      the hold); a release sends one only when someone sleeps on the key.
    * A hold without ``hold_timeout`` is a lease of ``lease`` seconds renewed by one heartbeat
      statement per process: it ends at most ``lease`` seconds after its process dies or
      loses the server. A process paused longer than that loses its holds (logged as an
      error on the ``txlock.postgres`` logger).
    * Behind a transaction-pooling proxy (pgbouncer ``pool_mode=transaction``) everything
      stays correct (no session state is relied upon); a proxy is recognised on each new
      connection (the backend pid it announces differs from the server's), and then neither
      prepared statements nor ``LISTEN`` are used: waiters poll every 50 ms.
    * The tables are created on first use (concurrent first use from many processes is
      serialized by a transaction-scoped advisory lock) with a version row for migrations.
    * Connection failures raise :class:`~txlock.BackendUnavailable` (never a psycopg error);
      a connection the server closed is replaced and the statement retried once (every
      statement is idempotent). Passwords never appear in ``repr``, URLs, logs or errors.
    """

    schemes = ("postgresql", "postgres")
    capabilities = Capabilities(
        processes=True,
        hosts=True,
        fifo=True,
        counts_waiters=True,
        notes=("holds without hold_timeout end at most `lease` (10 s) after their process dies",),
    )
    max_key_length = MAX_KEY_CHARS
    _async_io = True

    def __init__(
        self,
        url: str | None = None,
        *,
        pool: Any = None,
        async_pool: Any = None,
        schema: str | None = None,
        table: str | None = None,
        prefix: str | None = None,
        lease: float | None = None,
        durable: bool | None = None,
        **options: Any,
    ) -> None:
        # txlock's options may also come in the URL's query, as with from_url (a keyword
        # argument that contradicts the URL is an error).
        url, in_url = _split_url(url) if isinstance(url, str) else (url, {})
        given: dict[str, Any] = {"schema": schema, "table": table, "prefix": prefix, "lease": lease}
        given.update(durable=durable, **options)
        for name, value in in_url.items():
            if given.get(name) is not None and given[name] != value:
                raise ConfigurationError(f"{name}={given[name]!r} contradicts {name}={value!r} in the URL")
            given[name] = value
        defaults: dict[str, Any] = {"schema": "txlock", "table": "locks", "prefix": "", "lease": DEFAULT_LEASE}
        defaults["durable"] = False
        chosen = {name: default if given.get(name) is None else given[name] for name, default in defaults.items()}
        schema, table, prefix = chosen["schema"], chosen["table"], chosen["prefix"]
        lease, durable = chosen["lease"], chosen["durable"]
        super().__init__(**{k: v for k, v in given.items() if k not in defaults})
        self.schema = _check_identifier("schema", schema, 63)
        self.table = _check_identifier("table", table, 48)
        if not isinstance(prefix, str):
            raise TypeError(f"prefix must be a str, not {type(prefix).__name__}")
        if len(prefix) > MAX_PREFIX_CHARS:
            raise ConfigurationError(f"prefix is {len(prefix)} characters long; at most {MAX_PREFIX_CHARS} allowed")
        self.prefix = prefix
        if isinstance(lease, bool) or not isinstance(lease, int | float) or not math.isfinite(lease) or lease <= 0:
            raise ConfigurationError(f"lease={lease!r} must be a finite number of seconds > 0")
        self.lease = float(lease)
        if not isinstance(durable, bool):
            raise TypeError(f"durable must be a bool, not {type(durable).__name__}")
        self.durable = durable
        if url is None:
            url = _pool_conninfo(pool) or _pool_conninfo(async_pool) or ""
        if not isinstance(url, str):
            raise TypeError(f"url must be a str, not {type(url).__name__}")
        try:
            self._conninfo = {k: str(v) for k, v in conninfo_to_dict(url).items()}
        except psycopg.ProgrammingError as exc:
            raise ConfigurationError(f"{_redact_text(url)!r} is not a PostgreSQL URL or conninfo: {exc}") from None
        self._pool = pool
        self._async_pool = async_pool
        config = (tuple(sorted(self._conninfo.items())), self.schema, self.table, self.lease, durable)
        key = (config, id(pool), id(async_pool))
        self._store = _store(
            key, lambda: _Store(self._conninfo, self.schema, self.table, self.lease, durable, pool, async_pool)
        )
        self._closed = False

    # ------------------------------------------------------------------ identity

    def _config(self) -> tuple[Any, ...]:
        return (tuple(sorted(self._conninfo.items())), self.schema, self.table, self.prefix, self.lease, self.durable)

    def _init_kwargs(self) -> dict[str, Any]:
        # A copy (pickle, deepcopy, another process) reconnects from the settings; a
        # caller-supplied pool is not carried over: the copy opens its own connections.
        return {
            "url": _conninfo_url(self._conninfo, redact=False),
            "schema": self.schema,
            "table": self.table,
            "prefix": self.prefix,
            "lease": self.lease,
            "durable": self.durable,
            **self._common_kwargs(),
        }

    def _url(self, *, redact: bool) -> str:
        base = _conninfo_url(self._conninfo, redact=redact)
        options: dict[str, str] = {}
        if self.schema != "txlock":
            options["schema"] = self.schema
        if self.table != "locks":
            options["table"] = self.table
        if self.prefix:
            options["prefix"] = self.prefix
        if self.lease != DEFAULT_LEASE:
            options["lease"] = f"{self.lease:g}"
        if self.durable:
            options["durable"] = "true"
        options.update(self._common_query())
        extra = urlencode(options)
        if not extra:
            return base
        return base + ("&" if urlsplit(base).query else "?") + extra

    @classmethod
    def _from_parsed(cls, url: str, options: Mapping[str, str]) -> PostgresLockManager:
        libpq = {k: v for k, v in options.items() if k in _LIBPQ_KEYWORDS}
        kwargs = _parse_options({k: v for k, v in options.items() if k not in _LIBPQ_KEYWORDS})
        parts = urlsplit(url)
        base = _unsplit(parts.scheme, parts.netloc, parts.path, "")
        try:
            conninfo = conninfo_to_dict(base)
        except psycopg.ProgrammingError as exc:
            raise ConfigurationError(
                f"{_redact_text(url)!r} is not a PostgreSQL URL ({exc}); a full one looks like "
                "postgresql://user:password@host:5432/dbname"
            ) from None
        conninfo.update(libpq)
        return cls(_conninfo_url({k: str(v) for k, v in conninfo.items()}, redact=False), **kwargs)

    def close(self) -> None:
        """Release this manager's share of the connections, listener and heartbeat.

        When the last manager of a store in this process closes, idle connections are
        closed and the heartbeat stops: holds without ``hold_timeout`` then end within
        ``lease`` seconds. Using the manager again reopens everything lazily.
        """
        if self._closed:
            return
        self._closed = True
        with _registry_mutex:
            self._store.refs -= 1
            last = self._store.refs <= 0
        if last:
            self._store.close()

    # ------------------------------------------------------------------ pure halves

    def _k(self, key: str) -> tuple[bytes, bytes, str]:
        data = _key_bytes(self.prefix, key)
        digest = _hash(data)
        return data, digest, digest[:12].hex()

    def _lease(self, key: str, holder: str, ttl: float | None, row: Sequence[Any]) -> Lease:
        if ttl is None:
            self._store.need_heartbeat()
        return Lease(key, holder, int(row[0]), None if ttl is None else float(row[2]), ttl)

    def _arm(self, key: str, waiter: Waiter | None, acquire: bool) -> concurrent.futures.Future[bool] | None:
        """Register ``waiter`` with the listener before looking at the table."""
        if waiter is None or waiter.data is not None:
            return None
        _, _, payload = self._k(key)
        reg = waiter.data = _Reg(self._store.chan, payload, acquire)
        self._store.listener.add(reg, waiter)
        return self._store.subscribe()

    def _retry(self, seconds: float | None) -> float:
        """How long a waiter sleeps without a wake-up."""
        cap = SAFETY_NET if self._store.listener.ok else POLL_INTERVAL
        if seconds is None:
            return cap
        return max(0.0, min(float(seconds), cap))

    def _op_acquire(self, key: str, holder: str, ttl: float | None, waiter: Waiter | None) -> _Op:
        data, digest, _ = self._k(key)
        if waiter is None:
            fast: dict[str, Any] = {"h": digest, "k": data, "who": encode(holder), "ttl": ttl, "name": self.table}
            fast.update(owner=self._store.owner, lease=self._store.lease)
            return _Op([self._store.sql.acquire_fast], fast)
        listen = self._arm(key, waiter, True)
        reg: _Reg | None = waiter.data
        if reg is not None:
            reg.db = True
            reg.call = (key, holder, ttl)
            self._store.need_heartbeat()
        params: dict[str, Any] = {
            "h": digest,
            "k": data,
            "who": encode(holder),
            "ttl": ttl,
            "owner": self._store.owner,
            "lease": self._store.lease,
            "wid": reg.wid if reg is not None else None,
            "ticket": reg.ticket if reg is not None else None,
            "name": self.table,
            "session": None,  # filled in once the listener is up (see _Store.run)
        }
        return _Op([self._store.sql.acquire], params, listen)

    def _parse_acquire(
        self, key: str, holder: str, ttl: float | None, waiter: Waiter | None, rows: list[tuple[Any, ...]]
    ) -> Lease | Busy:
        if waiter is None:
            # The first attempt: granted, or refused without details (the caller's next
            # attempt, with a waiter, reports the holder and how long to sleep).
            return self._lease(key, holder, ttl, rows[0]) if rows else Busy(None, 0.0)
        token, _, _, other, left, ahead, ahead_left, ticket, _, _ = rows[0]
        reg: _Reg | None = waiter.data
        if token is not None:
            if reg is not None and waiter is not None:
                # Granted: the statement removed the queue row; forget the waiter here too.
                waiter.data = None
                self._store.listener.remove(reg, waiter)
            return self._lease(key, holder, ttl, rows[0])
        if reg is not None and ticket is not None:
            reg.ticket = ticket
        if other is not None:
            return Busy(decode(bytes(other)), self._retry(left))
        if ahead:
            return Busy(None, self._retry(ahead_left))
        # Refused, yet neither a holder nor a ticket ahead in this statement's snapshot: the
        # holder's row was committed after the snapshot was taken (so it could not be
        # marked either). Look again at once: the next statement sees and marks it.
        return Busy(None, 0.0)

    def _op_release(self, key: str, holder: str) -> _Op:
        _, digest, payload = self._k(key)
        params: dict[str, Any] = {"h": digest, "who": encode(holder), "chan": self._store.chan}
        params.update(payload=payload, lease=self._store.lease)
        return _Op([self._store.sql.release], params)

    @staticmethod
    def _parse_release(holder: str, rows: list[tuple[Any, ...]]) -> str | None:
        """From the holder statement run after a release that matched nothing."""
        other = decode(bytes(rows[0][0])) if rows else None
        return None if other == holder else other

    def _op_extend(self, key: str, holder: str, token: int, ttl: float | None) -> _Op:
        _, digest, _ = self._k(key)
        params = {
            "h": digest,
            "who": encode(holder),
            "token": token,
            "ttl": ttl,
            "owner": self._store.owner,
            "lease": self._store.lease,
        }
        return _Op([self._store.sql.extend], params)

    def _parse_extend(self, key: str, holder: str, ttl: float | None, rows: list[tuple[Any, ...]]) -> Lease | None:
        return self._lease(key, holder, ttl, rows[0]) if rows else None

    def _op_key(self, statement: str, key: str) -> _Op:
        _, digest, _ = self._k(key)
        return _Op([statement], {"h": digest})

    @staticmethod
    def _parse_holder(rows: list[tuple[Any, ...]]) -> str | None:
        return decode(bytes(rows[0][0])) if rows else None

    def _info(self, row: Sequence[Any]) -> LockInfo:
        key = decode(bytes(row[0]))[len(self.prefix) :]
        return LockInfo(key, decode(bytes(row[1])), int(row[2]), float(row[3]), _epoch(row[4]), int(row[5]))

    def _parse_inspect(self, rows: list[tuple[Any, ...]]) -> LockInfo | None:
        return self._info(rows[0]) if rows else None

    def _op_list(self, prefix: str | None) -> _Op:
        lo = _key_bytes(self.prefix, prefix or "")
        hi = _successor(lo)
        lo_n = lo[:_INDEXED]
        params = {"lo": lo, "hi": hi, "lo_n": lo_n, "hi_n": hi if len(lo) <= _INDEXED else _successor(lo_n)}
        return _Op([self._store.sql.list], params)

    def _parse_list(self, rows: list[tuple[Any, ...]]) -> list[LockInfo]:
        return [self._info(row) for row in rows]

    def _op_force(self, key: str) -> _Op:
        _, digest, payload = self._k(key)
        return _Op([self._store.sql.force], {"h": digest, "chan": self._store.chan, "payload": payload})

    def _op_watch(self, key: str, waiter: Waiter | None) -> _Op:
        _, digest, _ = self._k(key)
        statement = self._store.sql.watch if waiter is None else self._store.sql.watch_mark
        return _Op([statement], {"h": digest}, self._arm(key, waiter, False))

    def _parse_watch(self, rows: list[tuple[Any, ...]]) -> Busy | None:
        if not rows:
            return None
        return Busy(decode(bytes(rows[0][0])), self._retry(rows[0][1]))

    def _op_withdraw(self, key: str, waiter: Waiter) -> _Op | None:
        """Forget ``waiter`` locally; the statement that removes its queue row, if any.

        A lease a release handed over is in ``waiter.lease`` afterwards (when the listener
        delivered it) or comes back from the statement (see :meth:`_parse_withdraw`)."""
        reg: _Reg | None = waiter.data
        if reg is None:
            return None
        self._store.listener.remove(reg, waiter)  # from here on the listener leaves it alone
        waiter.data = None
        if not reg.acquire or not reg.db or waiter.lease is not None:
            return None
        _, digest, payload = self._k(key)
        params = {"wid": reg.wid, "h": digest, "chan": reg.chan, "payload": payload}
        return _Op([self._store.sql.withdraw], params)

    def _op_granted(self, op: _Op) -> _Op:
        return _Op([self._store.sql.granted], {"h": op.params["h"], "wid": op.params["wid"]})

    @staticmethod
    def _handed(reg: _Reg, rows: list[tuple[Any, ...]]) -> Lease | None:
        """The lease a release handed to a leaving call, from the ``granted`` statement."""
        return reg.lease(int(rows[0][0]), float(rows[0][1])) if rows else None

    @staticmethod
    def _withdrawn(reg: _Reg, rows: list[tuple[Any, ...]]) -> tuple[Lease | None, bool]:
        """From the withdraw statement: the lease handed to the leaving call, and whether
        to look again with the ``granted`` statement: the ticket was gone without a visible
        grant, as when a release took it while this statement waited for its row lock (the
        grant then committed after this statement began)."""
        deleted, _, token, expires = rows[0]
        if token is not None:
            return reg.lease(int(token), float(expires)), False
        return None, not deleted

    # ------------------------------------------------------------------ primitives (thin I/O)
    # ------------------------------------------------------------------ primitives (thin I/O)

    def _try_acquire(self, key: str, holder: str, ttl: float | None, waiter: Waiter | None) -> Lease | Busy:
        rows = self._store.run(self._op_acquire(key, holder, ttl, waiter))
        return self._parse_acquire(key, holder, ttl, waiter, rows)

    async def _atry_acquire(self, key: str, holder: str, ttl: float | None, waiter: Waiter | None) -> Lease | Busy:
        rows = await self._store.arun(self._op_acquire(key, holder, ttl, waiter))
        return self._parse_acquire(key, holder, ttl, waiter, rows)

    def _release(self, key: str, holder: str) -> str | None:
        if self._store.run(self._op_release(key, holder)):
            return None  # released (and notified) by the one statement
        return self._parse_release(holder, self._store.run(self._op_key(self._store.sql.holder, key)))

    async def _arelease(self, key: str, holder: str) -> str | None:
        if await self._store.arun(self._op_release(key, holder)):
            return None
        return self._parse_release(holder, await self._store.arun(self._op_key(self._store.sql.holder, key)))

    def _extend(self, key: str, holder: str, token: int, ttl: float | None) -> Lease | None:
        return self._parse_extend(key, holder, ttl, self._store.run(self._op_extend(key, holder, token, ttl)))

    async def _aextend(self, key: str, holder: str, token: int, ttl: float | None) -> Lease | None:
        rows = await self._store.arun(self._op_extend(key, holder, token, ttl))
        return self._parse_extend(key, holder, ttl, rows)

    def _holder(self, key: str) -> str | None:
        return self._parse_holder(self._store.run(self._op_key(self._store.sql.holder, key)))

    async def _aholder(self, key: str) -> str | None:
        return self._parse_holder(await self._store.arun(self._op_key(self._store.sql.holder, key)))

    def _inspect(self, key: str) -> LockInfo | None:
        return self._parse_inspect(self._store.run(self._op_key(self._store.sql.inspect, key)))

    async def _ainspect(self, key: str) -> LockInfo | None:
        return self._parse_inspect(await self._store.arun(self._op_key(self._store.sql.inspect, key)))

    def _list(self, prefix: str | None) -> list[LockInfo]:
        return self._parse_list(self._store.run(self._op_list(prefix)))

    async def _alist(self, prefix: str | None) -> list[LockInfo]:
        return self._parse_list(await self._store.arun(self._op_list(prefix)))

    def _force_release(self, key: str) -> bool:
        return bool(self._store.run(self._op_force(key)))

    async def _aforce_release(self, key: str) -> bool:
        return bool(await self._store.arun(self._op_force(key)))

    def _watch(self, key: str, waiter: Waiter | None) -> Busy | None:
        return self._parse_watch(self._store.run(self._op_watch(key, waiter)))

    async def _awatch(self, key: str, waiter: Waiter | None) -> Busy | None:
        return self._parse_watch(await self._store.arun(self._op_watch(key, waiter)))

    def _withdraw(self, key: str, waiter: Waiter) -> Lease | None:
        reg: _Reg | None = waiter.data
        op = self._op_withdraw(key, waiter)
        if op is None or reg is None:
            return waiter.lease
        try:
            lease, look_again = self._withdrawn(reg, self._store.run(op))
            if look_again:
                lease = self._handed(reg, self._store.run(self._op_granted(op)))
        except BaseException:
            self._store.orphan(reg.wid)
            raise
        return lease

    async def _awithdraw(self, key: str, waiter: Waiter) -> Lease | None:
        reg: _Reg | None = waiter.data
        op = self._op_withdraw(key, waiter)
        if op is None or reg is None:
            return waiter.lease
        try:
            lease, look_again = self._withdrawn(reg, await self._store.arun(op))
            if look_again:
                lease = self._handed(reg, await self._store.arun(self._op_granted(op)))
        except BaseException:
            self._store.orphan(reg.wid)
            raise
        return lease

    # ------------------------------------------------------------------ extras

    def waiting(self) -> int:
        """How many calls of this process are registered to be woken (for tests and monitoring)."""
        return self._store.listener.count()


def _parse_options(ours: Mapping[str, str]) -> dict[str, Any]:
    """Parse txlock's URL options (not libpq's) into keyword arguments of the manager."""
    from txlock._url import common_options

    kwargs = common_options(ours, allowed=_OPTIONS)
    for name in ("schema", "table", "prefix"):
        if name in ours:
            kwargs[name] = ours[name]
    if "durable" in ours:
        kwargs["durable"] = parse_bool("durable", ours["durable"])
    if "lease" in ours:
        kwargs["lease"] = parse_seconds("lease", ours["lease"], positive=True) or DEFAULT_LEASE
    return kwargs


#: What the server says when it refuses the URL's role, database or credentials.
_REFUSED = re.compile(
    r'(role|database) "[^"]*" does not exist|password authentication failed for user "[^"]*"'
    r"|no pg_hba\.conf entry for [^.]*"
)


def _unsplit(scheme: str, netloc: str, path: str, query: str) -> str:
    """A URL from its parts. Not ``urlunsplit``: it drops the ``//`` of a host-less URL
    (``postgresql:///db``, the local socket), which libpq then reads as a conninfo string."""
    return f"{scheme}://{netloc}{path}" + (f"?{query}" if query else "")


def _split_url(url: str) -> tuple[str, dict[str, Any]]:
    """Separate txlock's options from a ``postgresql://`` URL: (what libpq gets, keyword arguments)."""
    from txlock._url import check_url_form

    check_url_form(url)
    if "://" not in url:
        return url, {}  # a key=value conninfo string: libpq's only
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    ours = {k: v for k, v in query if k not in _LIBPQ_KEYWORDS}
    if not ours:
        return url, {}
    libpq = urlencode([(k, v) for k, v in query if k in _LIBPQ_KEYWORDS])
    return _unsplit(parts.scheme, parts.netloc, parts.path, libpq), _parse_options(ours)


def _pool_conninfo(pool: Any) -> str | None:
    if pool is None:
        return None
    conninfo = getattr(pool, "conninfo", None)
    return conninfo if isinstance(conninfo, str) else None


def _redact_text(url: str) -> str:
    from txlock._url import redact

    try:
        return redact(url)
    except ValueError:
        return "<unparsable URL>"
