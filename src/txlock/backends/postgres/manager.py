"""The PostgreSQL lock manager: its configuration and its primitives, each one request."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from concurrent.futures import Future
from typing import Any
from urllib.parse import urlencode, urlsplit

import psycopg
from psycopg.conninfo import conninfo_to_dict

from txlock._errors import ConfigurationError
from txlock._flows import Request, no_io
from txlock._manager import BaseLockManager
from txlock._options import check_liveness, merge_options, redact
from txlock._types import Busy, Capabilities, Lease, LockInfo
from txlock._validate import decode, encode
from txlock._waiter import Waiter
from txlock.backends.postgres._config import (
    DEFAULT_LIVENESS,
    LIBPQ_KEYWORDS,
    check_identifier,
    conninfo_url,
    parse_options,
    pool_conninfo,
    split_url,
    unsplit,
)
from txlock.backends.postgres._listener import POLL_INTERVAL, Registration
from txlock.backends.postgres._query import Query, Rows
from txlock.backends.postgres._statements import INDEXED_BYTES
from txlock.backends.postgres._store import Store, store_for

__all__ = ["MAX_KEY_CHARS", "MAX_PREFIX_CHARS", "SAFETY_NET", "PostgresLockManager"]

#: Longest key accepted, in characters (keys are stored whole; the index holds a hash).
MAX_KEY_CHARS = 4096
#: Longest key prefix accepted, in characters.
MAX_PREFIX_CHARS = 1024
#: Longest sleep of a waiter without a wake-up while LISTEN works (the safety net, a last
#: resort: releases notify, the heartbeat keeps tickets alive, a lost LISTEN connection wakes
#: every waiter, and the end of a hold is watched by one timer per key, not per waiter).
SAFETY_NET = 60.0


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
            ``txlock_schema`` in the same schema).
        prefix: prepended to every key, so several applications can share one table.
        liveness: seconds a hold without ``hold_timeout`` outlives the last heartbeat of the
            process that took it (renewed every ``liveness / 3`` seconds by one heartbeat
            per process), default 10.
        durable: create the lock table LOGGED (holds survive a server crash), default False.
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
      LISTEN session end (else within ``liveness``). Waiters sleep until a ``NOTIFY``
      reaches this process's one LISTEN connection (a release sends one only when someone
      sleeps on the key); the heartbeat keeps their tickets alive, and one timer per key
      and process looks again when the hold runs out, so a waiting call costs the server
      nothing while it sleeps (safety net: 60 s).
    * A hold without ``hold_timeout`` lasts ``liveness`` seconds past the last of the
      heartbeats (one statement per process renews all its holds): it ends at most
      ``liveness`` seconds after its process dies or loses the server. A process paused
      longer than that loses its holds (logged as an error on the ``txlock.postgres`` logger).
    * Behind a transaction-pooling proxy (pgbouncer ``pool_mode=transaction``) everything
      stays correct (no session state is relied upon); a proxy is recognised on each new
      connection (the backend pid it announces differs from the server's), and then neither
      prepared statements nor ``LISTEN`` are used: waiters poll every 50 ms.
    * The tables are created on first use (concurrent first use from many processes is
      serialized by a transaction-scoped advisory lock) with a version row (schema
      version 1). Tables of a pre-release txlock are refused with a ``ConfigurationError``
      that says which to drop.
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
        notes=("holds without hold_timeout end at most `liveness` (10 s) after their process dies",),
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
        liveness: float | None = None,
        durable: bool | None = None,
        **options: Any,
    ) -> None:
        # txlock's options may also come in the URL's query, as with from_url (a keyword
        # argument that contradicts the URL is an error).
        url, in_url = split_url(url) if isinstance(url, str) else (url, {})
        given: dict[str, Any] = {
            "schema": schema, "table": table, "prefix": prefix, "liveness": liveness, "durable": durable,
        }
        given = merge_options({**given, **options}, in_url)
        defaults: dict[str, Any] = {
            "schema": "txlock", "table": "locks", "prefix": "", "liveness": DEFAULT_LIVENESS, "durable": False,
        }
        chosen = {name: default if given.get(name) is None else given[name] for name, default in defaults.items()}
        super().__init__(**{name: value for name, value in given.items() if name not in defaults})
        self.schema = check_identifier("schema", chosen["schema"], 63)
        self.table = check_identifier("table", chosen["table"], 48)
        key_prefix = chosen["prefix"]
        if not isinstance(key_prefix, str):
            raise TypeError(f"prefix must be a str, not {type(key_prefix).__name__}")
        if len(key_prefix) > MAX_PREFIX_CHARS:
            raise ConfigurationError(
                f"prefix is {len(key_prefix)} characters long; at most {MAX_PREFIX_CHARS} allowed"
            )
        self.prefix: str = key_prefix
        self.liveness = check_liveness(chosen["liveness"])
        if not isinstance(chosen["durable"], bool):
            raise TypeError(f"durable must be a bool, not {type(chosen['durable']).__name__}")
        self.durable = durable = chosen["durable"]
        if url is None:
            url = pool_conninfo(pool) or pool_conninfo(async_pool) or ""
        if not isinstance(url, str):
            raise TypeError(f"url must be a str, not {type(url).__name__}")
        try:
            self._conninfo = {name: str(value) for name, value in conninfo_to_dict(url).items()}
        except psycopg.ProgrammingError as exc:
            raise ConfigurationError(f"{redact(url)!r} is not a PostgreSQL URL or conninfo: {exc}") from None
        self._pool = pool
        self._async_pool = async_pool
        config = (tuple(sorted(self._conninfo.items())), self.schema, self.table, self.liveness, durable)
        self._store: Store = store_for(
            (config, id(pool), id(async_pool)),
            lambda: Store(self._conninfo, self.schema, self.table, self.liveness, durable, pool, async_pool),
        )
        self._closed = False

    # ------------------------------------------------------------------ identity

    def _config(self) -> tuple[Any, ...]:
        return (
            tuple(sorted(self._conninfo.items())), self.schema, self.table, self.prefix, self.liveness, self.durable,
        )

    def _init_kwargs(self) -> dict[str, Any]:
        # A copy (pickle, deepcopy, another process) reconnects from the settings; a
        # caller-supplied pool is not carried over: the copy opens its own connections.
        return {
            "url": conninfo_url(self._conninfo, hide=False),
            "schema": self.schema,
            "table": self.table,
            "prefix": self.prefix,
            "liveness": self.liveness,
            "durable": self.durable,
            **self._common_kwargs(),
        }

    def _url(self, *, redact: bool) -> str:
        base = conninfo_url(self._conninfo, hide=redact)
        options: dict[str, str] = {}
        if self.schema != "txlock":
            options["schema"] = self.schema
        if self.table != "locks":
            options["table"] = self.table
        if self.prefix:
            options["prefix"] = self.prefix
        if self.liveness != DEFAULT_LIVENESS:
            options["liveness"] = f"{self.liveness:g}"
        if self.durable:
            options["durable"] = "true"
        options.update(self._common_query())
        extra = urlencode(options)
        if not extra:
            return base
        return base + ("&" if urlsplit(base).query else "?") + extra

    @classmethod
    def _from_parsed(cls, url: str, options: Mapping[str, str]) -> PostgresLockManager:
        libpq = {name: value for name, value in options.items() if name in LIBPQ_KEYWORDS}
        kwargs = parse_options({name: value for name, value in options.items() if name not in LIBPQ_KEYWORDS})
        parts = urlsplit(url)
        base = unsplit(parts.scheme, parts.netloc, parts.path, "")
        try:
            conninfo = conninfo_to_dict(base)
        except psycopg.ProgrammingError as exc:
            raise ConfigurationError(
                f"{redact(url)!r} is not a PostgreSQL URL ({exc}); a full one looks like "
                "postgresql://user:password@host:5432/dbname"
            ) from None
        conninfo.update(libpq)
        return cls(conninfo_url({name: str(value) for name, value in conninfo.items()}, hide=False), **kwargs)

    def close(self) -> None:
        """Release this manager's share of the connections, listener and heartbeat.

        When the last manager of a store in this process closes, idle connections are
        closed and the heartbeat stops: holds without ``hold_timeout`` then end within
        ``liveness`` seconds. Using the manager again reopens everything lazily.
        """
        if self._closed:
            return
        self._closed = True
        self._store.release()

    # ------------------------------------------------------------------ transport

    def _exec(self, work: Query) -> Any:
        return self._store.connections.run(work)

    async def _aexec(self, work: Query) -> Any:
        return await self._store.async_connections.run(work)

    # ------------------------------------------------------------------ keys and replies

    def _key(self, key: str) -> tuple[bytes, bytes, str]:
        """The key as stored (prefix included), its hash, and its tag in notifications."""
        if len(key) > MAX_KEY_CHARS:
            raise ValueError(
                f"key is {len(key)} characters long; the PostgreSQL backend accepts at most {MAX_KEY_CHARS}"
            )
        data = encode(self.prefix + key)
        digest = hashlib.sha256(data).digest()
        return data, digest, digest[:12].hex()

    def _process_hold_valid_until(self, sent: float) -> float | None:
        # A hold without hold_timeout lasts liveness past its grant or the last heartbeat.
        return max(sent, self._store.beat_sent) + self.liveness

    def _lease(self, key: str, holder: str, ttl: float | None, row: Sequence[Any]) -> Lease:
        if ttl is None:
            self._store.held.add(self._key(key)[1], holder)
            self._store.need_heartbeat()
        return Lease(key, holder, int(row[0]), None if ttl is None else float(row[2]), ttl)

    def _register(self, key_tag: str, waiter: Waiter | None, acquire: bool) -> Future[bool] | None:
        """Register ``waiter`` with the listener before looking at the table; the future of
        the LISTEN subscription (``None``: nothing to wait for)."""
        if waiter is None or waiter.data is not None:
            return None
        registration = waiter.data = Registration(self._store.channel, key_tag, acquire)
        self._store.listener.add(registration, waiter)
        return self._store.subscribe()

    def _retry(self, key_tag: str, seconds: float | None, waiter: Waiter | None) -> float:
        """How long a waiter of ``key_tag`` sleeps without a wake-up, the key being taken for
        ``seconds`` more: while LISTEN works, until the key's timer (armed here, one per key
        and process) or a notification wakes it; else it polls. A waiter alone on its key in
        this process keeps that time itself instead of arming the timer: on the path from a
        hold's end to its take-over, a hand-off from the timer thread costs a thread switch
        (tens of milliseconds under a faked wall clock, libfaketime)."""
        listener = self._store.listener
        if not listener.working:
            return POLL_INTERVAL if seconds is None else max(0.0, min(float(seconds), POLL_INTERVAL))
        if seconds is None:
            return SAFETY_NET
        seconds = max(0.0, float(seconds))
        if waiter is not None and listener.alone(self._store.channel, key_tag, waiter):
            return min(seconds, SAFETY_NET)
        listener.arm(self._store.channel, key_tag, seconds)
        return SAFETY_NET

    def _info(self, row: Sequence[Any]) -> LockInfo:
        key = decode(bytes(row[0]))[len(self.prefix) :]
        return LockInfo(
            key, decode(bytes(row[1])), int(row[2]), float(row[3]), None if row[4] is None else float(row[4]),
            int(row[5]),
        )

    def _parked_here(self, key: str) -> int:
        return self._store.listener.count_key(self._store.channel, self._key(key)[2])

    def waiting(self) -> int:
        """How many calls of this process are registered to be woken (for tests and monitoring)."""
        return self._store.listener.count()

    # ------------------------------------------------------------------ primitives

    def _try_acquire(self, key: str, holder: str, ttl: float | None, waiter: Waiter | None) -> Request[Lease | Busy]:
        store = self._store
        data, digest, key_tag = self._key(key)
        params: dict[str, Any] = {
            "key_hash": digest, "key": data, "holder": encode(holder), "ttl": ttl, "name": self.table,
            "owner": store.owner, "liveness": store.liveness,
        }
        if waiter is None:
            # The first attempt: granted, or refused without details (the caller's next
            # attempt, with a waiter, reports the holder and how long to sleep).
            return Query([store.statements.acquire_first], params), lambda rows: (
                self._lease(key, holder, ttl, rows[0]) if rows else Busy(None, 0.0)
            )
        listen = self._register(key_tag, waiter, True)
        registration: Registration | None = waiter.data
        if registration is not None:
            registration.queued = True
            registration.call = (key, holder, ttl)
            registration.held, registration.digest = store.held, digest
            store.need_heartbeat()
        params["channel"], params["payload"] = store.channel, key_tag
        params["waiter"] = registration.waiter_id if registration is not None else None
        params["ticket"] = registration.ticket if registration is not None else None
        params["session"] = None  # filled in once the listener is up (see Store.fill_session)
        query = Query([store.statements.acquire], params, listen=listen)
        return query, lambda rows: self._read_attempt(key, holder, ttl, waiter, rows)

    def _read_attempt(self, key: str, holder: str, ttl: float | None, waiter: Waiter, rows: Rows) -> Lease | Busy:
        token, _, _, other, left, ahead, ahead_left, ticket, *_ = rows[0]
        registration: Registration | None = waiter.data
        if token is not None:
            if registration is not None:
                # Granted: the statement removed the queue row; forget the waiter here too.
                waiter.data = None
                self._store.listener.remove(registration, waiter)
            return self._lease(key, holder, ttl, rows[0])
        if registration is not None and ticket is not None:
            registration.ticket = ticket
        key_tag = self._key(key)[2]
        if other is not None:
            return Busy(decode(bytes(other)), self._retry(key_tag, left, waiter))
        if ahead:
            return Busy(None, self._retry(key_tag, ahead_left, waiter))
        # Refused, yet neither a holder nor a ticket ahead in this statement's snapshot: the
        # holder's row was committed after the snapshot was taken (so it could not be
        # marked either). Look again at once: the next statement sees and marks it.
        return Busy(None, 0.0)

    def _release(self, key: str, holder: str) -> Request[str | None]:
        store = self._store
        _, digest, key_tag = self._key(key)
        params = {
            "key_hash": digest, "holder": encode(holder), "channel": store.channel, "payload": key_tag,
            "liveness": store.liveness,
        }
        # Released (and notified) by the one statement; else ask who holds the key. A
        # release answers as "nobody else holds it": no rows.
        holder_query = Query([store.statements.holder], {"key_hash": digest})
        query = Query([store.statements.release], params, then=lambda rows: [] if rows else holder_query)

        def read(rows: Rows) -> str | None:
            store.held.discard(digest, holder)  # released, or not (or no longer) this holder's
            return self._other_holder(holder, rows)

        return query, read

    @staticmethod
    def _other_holder(holder: str, rows: Rows) -> str | None:
        other = decode(bytes(rows[0][0])) if rows else None
        return None if other == holder else other

    def _extend(self, key: str, holder: str, token: int, ttl: float | None) -> Request[Lease | None]:
        store = self._store
        _, digest, _ = self._key(key)
        params = {
            "key_hash": digest, "holder": encode(holder), "token": token, "ttl": ttl, "owner": store.owner,
            "liveness": store.liveness,
        }
        query = Query([store.statements.extend], params)
        return query, lambda rows: self._lease(key, holder, ttl, rows[0]) if rows else None

    def _holder(self, key: str) -> Request[str | None]:
        query = Query([self._store.statements.holder], {"key_hash": self._key(key)[1]})
        return query, lambda rows: decode(bytes(rows[0][0])) if rows else None

    def _inspect(self, key: str) -> Request[LockInfo | None]:
        query = Query([self._store.statements.inspect], {"key_hash": self._key(key)[1]})
        return query, lambda rows: self._info(rows[0]) if rows else None

    def _list(self, prefix: str | None) -> Request[list[LockInfo]]:
        low = self._key(prefix or "")[0]
        high = _successor(low)
        low_indexed = low[:INDEXED_BYTES]
        params = {
            "low": low, "high": high, "low_indexed": low_indexed,
            "high_indexed": high if len(low) <= INDEXED_BYTES else _successor(low_indexed),
        }
        return Query([self._store.statements.list], params), lambda rows: [self._info(row) for row in rows]

    def _force_release(self, key: str) -> Request[bool]:
        store = self._store
        _, digest, key_tag = self._key(key)
        params = {"key_hash": digest, "channel": store.channel, "payload": key_tag}
        store.held.forget(digest)
        return Query([store.statements.force_release], params), bool

    def _watch(self, key: str, waiter: Waiter | None) -> Request[Busy | None]:
        store = self._store
        _, digest, key_tag = self._key(key)
        statement = store.statements.watch if waiter is None else store.statements.watch_mark
        query = Query([statement], {"key_hash": digest}, listen=self._register(key_tag, waiter, False))
        return query, lambda rows: (
            Busy(decode(bytes(rows[0][0])), self._retry(key_tag, rows[0][1], waiter)) if rows else None
        )

    def _withdraw(self, key: str, waiter: Waiter) -> Request[Lease | None]:
        """Forget ``waiter`` locally, and remove its queue row if it has one.

        A lease a release handed over is in ``waiter.lease`` afterwards (when the listener
        delivered it) or comes back from the statements."""
        registration: Registration | None = waiter.data
        if registration is None:
            return no_io(waiter.lease)
        self._store.listener.remove(registration, waiter)  # from here on the listener leaves it alone
        waiter.data = None
        if not registration.acquire or not registration.queued or waiter.lease is not None:
            return no_io(waiter.lease)
        store = self._store
        _, digest, key_tag = self._key(key)

        def orphan() -> None:  # the ticket may remain: the heartbeat deletes it
            store.orphan(registration.waiter_id)

        def handed(rows: Rows) -> Rows | Query:
            # The lease handed to the leaving call, or look again with the granted statement:
            # the ticket was gone without a visible grant, as when a release took it while
            # this statement waited for its row lock (the grant committed after it began).
            deleted, _, token, expires = rows[0]
            if token is not None:
                return [(token, expires)]
            if deleted:
                return []
            params = {"key_hash": digest, "waiter": registration.waiter_id}
            return Query([store.statements.granted], params, on_failure=orphan)

        params = {"waiter": registration.waiter_id, "key_hash": digest, "channel": registration.channel}
        params["payload"] = key_tag
        query = Query([store.statements.withdraw], params, then=handed, on_failure=orphan)
        return query, lambda rows: registration.lease(int(rows[0][0]), float(rows[0][1])) if rows else None


def _successor(prefix: bytes) -> bytes | None:
    """The smallest byte string greater than every string starting with ``prefix``."""
    stripped = prefix.rstrip(b"\xff")
    if not stripped:
        return None
    return stripped[:-1] + bytes([stripped[-1] + 1])
