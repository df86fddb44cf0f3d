"""Connections to Redis: the clients of one manager, the gate that queues callers for them,
connections whose reads end by the call's deadline, and the one place where redis-py's
errors become txlock's.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator
from typing import Any

import redis
import redis.asyncio
import redis.asyncio.cluster
import redis.asyncio.retry
import redis.cluster
import redis.connection
import redis.sentinel
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import RedisError
from redis.retry import Retry

from txlock._deadline import DEADLINE_MARGIN, call_budget
from txlock._errors import BackendError, BackendUnavailable, NotSent
from txlock._options import hide_password
from txlock._slots import Slots
from txlock.backends.redis._url import RedisUrl, SentinelTarget

__all__ = [
    "DEFAULT_MAX_CONNECTIONS",
    "DRIVER_ERRORS",
    "Clients",
    "Gate",
    "new_client",
    "translate",
    "within_budget",
]

#: Commands one manager keeps in flight at once per client (per event loop for async):
#: the size of its connection pool too, unless the URL's ``max_connections`` says
#: otherwise. Callers beyond it queue for a connection (redis-py >= 8.2 would refuse them
#: with ``MaxConnectionsError``); Redis runs commands one at a time, so more connections
#: from one process add no throughput.
DEFAULT_MAX_CONNECTIONS = 32

_UNAVAILABLE = (
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    redis.exceptions.ClusterError,
    redis.exceptions.TryAgainError,
    redis.exceptions.MasterDownError,
    redis.exceptions.ReadOnlyError,
    redis.exceptions.RedisClusterException,
    OSError,
)
#: What the transport catches; everything else is a bug and propagates as is.
DRIVER_ERRORS = (RedisError, redis.exceptions.RedisClusterException, OSError)


def translate(exc: BaseException, where: str, secrets: tuple[str, ...] = ()) -> BackendError:
    """The one place where redis-py's exceptions become txlock's (passwords scrubbed)."""
    detail = hide_password(f"{type(exc).__name__}: {exc}")
    for secret in secrets:
        detail = detail.replace(secret, "***")
    if isinstance(exc, redis.exceptions.AuthenticationError):
        return BackendUnavailable(f"Redis at {where} refused the credentials ({detail}); check the URL's password")
    if isinstance(exc, _UNAVAILABLE):
        return BackendUnavailable(
            f"Redis at {where} is unavailable ({detail}); check that the server is running and "
            "reachable. The next call reconnects."
        )
    return BackendError(f"Redis at {where} failed ({detail})")


# ---------------------------------------------------------------------------- deadlines


class _DeadlineConnection:
    """A redis-py connection whose connects and reads end by the current call's deadline.

    An acquire or wait with a timeout sets that deadline (``call_budget``); the socket
    timeout then shrinks to the time left plus ``DEADLINE_MARGIN``, so a server that
    accepts connections and never answers costs the caller its timeout, not
    ``socket_timeout``. Without a deadline nothing changes.
    """

    _sock: Any
    socket_timeout: float | None
    socket_connect_timeout: float | None

    def connect(self) -> None:
        budget = call_budget()
        saved = self.socket_connect_timeout
        if budget is None or self._sock is not None or (saved is not None and budget >= saved):
            return super().connect()  # type: ignore[misc,no-any-return]
        self.socket_connect_timeout = budget
        try:
            super().connect()  # type: ignore[misc]
        finally:
            self.socket_connect_timeout = saved

    def read_response(self, *args: Any, **kwargs: Any) -> Any:
        budget = call_budget()
        sock = self._sock
        if budget is None or sock is None or (self.socket_timeout is not None and budget >= self.socket_timeout):
            return super().read_response(*args, **kwargs)  # type: ignore[misc]
        sock.settimeout(budget)
        try:
            return super().read_response(*args, **kwargs)  # type: ignore[misc]
        finally:
            if self._sock is sock:
                sock.settimeout(self.socket_timeout)


class _TcpConnection(_DeadlineConnection, redis.connection.Connection):
    pass


class _TlsConnection(_DeadlineConnection, redis.connection.SSLConnection):
    pass


class _UnixConnection(_DeadlineConnection, redis.connection.UnixDomainSocketConnection):
    pass


class _SentinelConnection(_DeadlineConnection, redis.sentinel.SentinelManagedConnection):
    pass


class _SentinelTlsConnection(_DeadlineConnection, redis.sentinel.SentinelManagedSSLConnection):
    pass


_CONNECTIONS = {
    "redis": _TcpConnection,
    "rediss": _TlsConnection,
    "unix": _UnixConnection,
    "redis+sentinel": _SentinelConnection,
    "rediss+sentinel": _SentinelTlsConnection,
}


async def within_budget(call: Any) -> Any:
    """Await ``call``, cut off by the current call's deadline (plus the margin), if any.

    The asyncio counterpart of the deadline connections above (asyncio clients read
    through their own stream classes)."""
    budget = call_budget()
    if budget is None:
        return await call
    try:
        async with asyncio.timeout(budget):
            return await call
    except TimeoutError:
        raise redis.exceptions.TimeoutError(
            f"no reply within the call's timeout + {DEADLINE_MARGIN:g}s"
        ) from None  # translated with the others: BackendUnavailable


# ---------------------------------------------------------------------------- clients


def _client_options(url: RedisUrl, *, asynchronous: bool) -> dict[str, Any]:
    # A connect or a reply that never comes (server stopped, half-open connection) must
    # become a clear BackendUnavailable, not a hang: redis-py waits forever by default.
    # Every command txlock sends is a short script, so 30 s without a reply means the
    # server is gone. The URL's socket_connect_timeout / socket_timeout win. The pool
    # is sized to the gate (Gate) that queues callers for its connections.
    kwargs: dict[str, Any] = {"socket_connect_timeout": 10, "socket_timeout": 30,
                              "max_connections": url.max_connections}
    if url.cluster:
        return kwargs
    # Fail fast when the server is down (redis-py's default retries for ~2 s), but
    # still retry once so that a pooled connection dropped by a restart reconnects.
    # Each world takes its own Retry class: redis-py >= 8.2 warns about, and replaces,
    # a sync Retry given to an asyncio client.
    # Only a failed connection is retried: a reply that did not come within
    # socket_timeout means the server is not answering, and asking twice more would
    # triple the wait (and a retried script may already have run).
    backoff = ExponentialWithJitterBackoff(cap=0.05, base=0.005)
    errors = (redis.exceptions.ConnectionError,)
    if asynchronous:
        kwargs["retry"] = redis.asyncio.retry.Retry(backoff, 2, supported_errors=errors)
    else:
        kwargs["retry"] = Retry(backoff, 2, supported_errors=errors)
        kwargs["connection_class"] = _CONNECTIONS[url.scheme]
    return kwargs


def new_client(url: RedisUrl, *, asynchronous: bool) -> Any:
    """A new redis-py client for ``url``: sync or asyncio, single server, Sentinel or Cluster."""
    kwargs = _client_options(url, asynchronous=asynchronous)
    if url.sentinel is not None:
        return _sentinel_client(url.sentinel, kwargs, asynchronous=asynchronous)
    if url.cluster:
        kind: Any = redis.asyncio.cluster.RedisCluster if asynchronous else redis.cluster.RedisCluster
    else:
        kind = redis.asyncio.Redis if asynchronous else redis.Redis
    return kind.from_url(url.redis_url, **kwargs)


class _SentinelRedis(redis.Redis):
    """The client of the primary Sentinel names; closing it closes the sentinels' connections too."""

    sentinel: Any = None

    def close(self) -> None:
        try:
            super().close()
        finally:
            if self.sentinel is not None:
                with contextlib.suppress(Exception):
                    self.sentinel.close()


class _AsyncSentinelRedis(redis.asyncio.Redis):
    """The asyncio twin of :class:`_SentinelRedis`."""

    sentinel: Any = None

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        try:
            await super().aclose(close_connection_pool)
        finally:
            if self.sentinel is not None:
                for client in self.sentinel.sentinels:
                    with contextlib.suppress(Exception):
                        await client.aclose()


def _sentinel_client(target: SentinelTarget, kwargs: dict[str, Any], *, asynchronous: bool) -> Any:
    """A client of the primary the sentinels of ``target`` name, following their failovers.

    The servers' options come from ``target.server_url`` (parsed by redis-py, like any
    ``redis://`` URL); the sentinels get the socket timeouts, TLS and their own credentials."""
    import redis.asyncio.sentinel

    parse_url = redis.asyncio.connection.parse_url if asynchronous else redis.connection.parse_url
    options: dict[str, Any] = dict(parse_url(target.server_url))
    tls = options.pop("connection_class", None) is not None  # rediss: SSLConnection
    for name in ("host", "port", "path"):
        options.pop(name, None)
    options.update(kwargs)
    if tls and asynchronous:
        options["ssl"] = True
    sentinel_kwargs: dict[str, Any] = {
        name: value for name, value in options.items() if name.startswith(("socket_", "ssl"))
    }
    sentinel_kwargs.update(target.sentinel_auth)
    if tls:
        sentinel_kwargs["ssl"] = True
    if asynchronous:
        manager: Any = redis.asyncio.sentinel.Sentinel(target.sentinels, sentinel_kwargs=sentinel_kwargs)
        client = manager.master_for(target.service, redis_class=_AsyncSentinelRedis, **options)
    else:
        manager = redis.sentinel.Sentinel(target.sentinels, sentinel_kwargs=sentinel_kwargs)
        client = manager.master_for(target.service, redis_class=_SentinelRedis, **options)
    client.sentinel = manager
    return client


def given_max_connections(client: Any, async_client: Any) -> int:
    """How many commands to keep in flight on caller-supplied clients: what their pools
    allow, less the two connections of the wake-up listener and the heartbeat (which use
    the sync client), and no more than the default."""
    sizes = [size for size in (_pool_size(client), _pool_size(async_client)) if size is not None]
    return max(1, min([DEFAULT_MAX_CONNECTIONS, *(size - 2 for size in sizes)]))


def _pool_size(client: Any) -> int | None:
    """The ``max_connections`` of a caller-supplied client's pool, when it has one."""
    size = getattr(getattr(client, "connection_pool", None), "max_connections", None)
    return size if isinstance(size, int) and size > 0 else None


class Gate(Slots):
    """Queues callers for a client's connections: at most ``size`` commands in flight from
    threads (sync) and ``size`` per event loop (async). A caller beyond that waits for a
    connection instead of getting redis-py's ``MaxConnectionsError``; a parked waiter holds
    no connection at all (it waits on its :class:`~txlock._waiter.Waiter`, outside the gate)."""

    __slots__ = ()

    def __init__(self, size: int) -> None:
        super().__init__(size, lambda budget: NotSent(
            f"all {size} connections to Redis stayed busy for {budget or 0:.3g}s, past the call's"
            " deadline; make fewer calls at once, or raise max_connections in the URL"
        ))


class Clients:
    """The clients one manager talks through: one sync client, and one asyncio client per
    event loop (an asyncio client belongs to its loop), each made on first use; or the
    caller's own clients, used as given and never closed here."""

    def __init__(self, url: RedisUrl | None, given: tuple[Any, Any] | None) -> None:
        self.url = url
        self.given = given
        self._sync: Any = None if given is None else given[0]
        self._loops: dict[asyncio.AbstractEventLoop, Any] = {}
        self._closers: dict[asyncio.AbstractEventLoop, AsyncIterator[None]] = {}
        self._mutex = threading.Lock()

    def new(self, *, asynchronous: bool) -> Any:
        assert self.url is not None, "caller-supplied clients are not made here"
        return new_client(self.url, asynchronous=asynchronous)

    def sync(self) -> Any:
        """The sync client (made on first use, again after :meth:`close`)."""
        client = self._sync
        if client is None:
            with self._mutex:
                if self._sync is None:
                    self._sync = self.new(asynchronous=False)
                client = self._sync
        return client

    async def of_this_loop(self) -> Any:
        """The asyncio client of the running loop; closed when that loop shuts down
        (``asyncio.run`` calls ``shutdown_asyncgens`` before closing the loop)."""
        if self.given is not None:
            return self.given[1]
        loop = asyncio.get_running_loop()
        client = self._loops.get(loop)
        if client is None:
            with self._mutex:
                client = self._loops.get(loop)
                if client is None:
                    client = self._loops[loop] = self.new(asynchronous=True)
                    closer = self._closers[loop] = _closer(client)
                else:
                    closer = None
            if closer is not None:
                await anext(closer)  # registers it with the loop's shutdown_asyncgens
        return client

    def close(self) -> None:
        """Close the clients made here (a later call makes new ones)."""
        if self.given is not None:
            return  # the caller's clients are the caller's to close
        with self._mutex:
            sync, self._sync = self._sync, None
            loops, self._loops = self._loops, {}
            self._closers = {}
        if sync is not None:
            with contextlib.suppress(Exception):
                sync.close()
        for loop, client in loops.items():
            _close_async_client(loop, client)

    async def aclose(self) -> None:
        """:meth:`close`, awaiting the close of the running loop's client."""
        if self.given is not None:
            return
        loop = asyncio.get_running_loop()
        with self._mutex:
            client = self._loops.pop(loop, None)
            self._closers.pop(loop, None)
        if client is not None:
            await client.aclose()
        self.close()


async def _closer(client: Any) -> AsyncIterator[None]:
    """An async generator whose ``finally`` closes ``client`` when its event loop shuts
    down (``asyncio.run`` calls ``shutdown_asyncgens`` before closing the loop)."""
    try:
        yield
    finally:
        with contextlib.suppress(Exception):
            await client.aclose()


_closing: set[asyncio.Task[Any]] = set()


def _close_async_client(loop: asyncio.AbstractEventLoop, client: Any) -> None:
    """Close an async client from outside its loop, whatever state that loop is in."""
    if loop.is_closed():
        return  # its sockets were closed with the loop's shutdown, or are beyond reach
    try:
        running = asyncio.get_running_loop()
    except RuntimeError:
        running = None
    if running is loop:
        task = loop.create_task(client.aclose())
        _closing.add(task)
        task.add_done_callback(_closing.discard)
    elif loop.is_running():
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(client.aclose(), loop).result(5)
    else:
        with contextlib.suppress(Exception):
            loop.run_until_complete(client.aclose())
