"""``RedisLockManager``: its configuration, its one transport per world, and its primitives.

Layout: every lock ``K`` lives in up to four Redis keys that share one Cluster hash tag,
``<prefix>{<blake2b-128 of K>}`` followed by one letter:

* ``h`` the hold, a hash: ``holder``, ``token``, ``at`` (grant time, server ms), ``ttl`` (ms,
  ``0`` for a hold bound to its process), ``wid`` (the queued waiter it was handed to),
  ``key`` (the original key, for ``list_locks``). Its ``PEXPIRE`` is the hold's end: the
  ttl, or the short liveness window renewed by the heartbeat of the process that holds it.
  A release removes the holder fields but leaves ``token`` until that expiry.
* ``q`` the FIFO of waiting acquirers: a sorted set of waiter ids scored by arrival.
* ``w`` per waiter id: msgpack of (deadline ms, holder, ttl ms, wake-up channel). An entry
  whose deadline passed belongs to a dead or stalled process and is dropped.
* ``v`` the ``wait_for_lock`` watchers: a set of ``"<channel> <waiter id>"``.

Times come from the server's ``TIME``. Tokens are ``max(last token + 1, server time in
microseconds)``: strictly increasing while the record lives, and still larger than every
earlier token once it has expired (or after a restart that lost the data), as long as the
server's clock does not step back by more than the life of the last hold.
"""

from __future__ import annotations

import asyncio
import copy
import functools
import hashlib
from collections.abc import Mapping
from typing import Any

import redis.cluster
from redis.exceptions import NoScriptError

from txlock._deadline import call_budget
from txlock._errors import BackendError, BackendUnavailable, ConfigurationError
from txlock._flows import NOTHING, Request, no_io
from txlock._manager import BaseLockManager
from txlock._options import check_liveness, merge_options
from txlock._types import Busy, Capabilities, Lease, LockInfo
from txlock._validate import decode, encode
from txlock._waiter import Waiter
from txlock.backends.redis import _scripts
from txlock.backends.redis._connection import (
    DEFAULT_MAX_CONNECTIONS,
    DRIVER_ERRORS,
    Clients,
    Gate,
    given_max_connections,
    translate,
    within_budget,
)
from txlock.backends.redis._hub import SAFETY_NET, Hub, WaitState, hubs
from txlock.backends.redis._requests import (
    Command,
    Confirmed,
    Listing,
    ScriptCall,
    Work,
    glob_escape,
    granted_token,
    hold_left,
    hold_ms,
    lease_of,
    listed,
    lock_info,
    queue_listing,
    retry_after,
)
from txlock.backends.redis._url import (
    DEFAULT_LIVENESS,
    DEFAULT_PREFIX,
    DEFAULT_URL,
    DEFAULT_WAIT_TIMEOUT,
    SCHEMES,
    check_prefix,
    check_wait_replicas,
    check_wait_timeout,
    client_url,
    from_options,
    parse,
    server_url,
    with_query,
)

__all__ = ["RedisLockManager"]


class RedisLockManager(BaseLockManager):
    """Locks shared by every process on every host that reaches one Redis (or Redis Cluster).

    Build it from a URL (``redis://[[user]:password@]host[:port][/db]``, ``rediss://`` for
    TLS, ``unix:///path/to/redis.sock?db=0``, ``redis+cluster://host:port`` for Redis
    Cluster) or from caller-supplied clients (``client=redis.Redis(...)``, optionally with
    ``async_client=redis.asyncio.Redis(...)``; or ``redis.cluster.RedisCluster`` and its
    async twin). Options (keywords or URL query; a keyword that contradicts the URL raises
    ``ConfigurationError``): ``prefix`` (default ``"txlock:"``, the start of every Redis key
    and no ``{``/``}``), ``liveness`` (seconds, default 5), the common ``acquire_timeout`` /
    ``raise_on_timeout``, and redis-py's connection options (``socket_timeout``,
    ``socket_connect_timeout``, ``ssl_*``, ``client_name``, ...).

    Guarantees and limits:

    * Every step (acquire, release, renew, inspect) is one Lua script, one round trip. The
      holder, fencing token and waiting queue live in Redis: any process that knows the
      holder string may release, and ``is_locked`` / ``is_lock_holder`` ask the server.
    * Waiters are served in arrival order: a release hands the lock directly to the oldest
      live waiter of the per-key queue and pushes the grant to that waiter's process over
      pub/sub (one listener connection and thread per process and server). The queue
      entries of a process's waiting calls are kept alive by its one heartbeat (one script
      call per beat for all of them), which also wakes a call whose entry is gone (a lost
      wake-up message); one timer per waiting key looks again when the hold runs out. A
      waiting call thus costs the server nothing while it sleeps; entries of dead processes
      expire after ``liveness``.
    * ``hold_timeout=T`` ends the hold T seconds after the grant on the server's clock
      (``PEXPIRE``). A hold without ``hold_timeout`` lives ``liveness`` seconds on the
      server, renewed every ``liveness / 3`` by one heartbeat per process and server; if the
      holding process dies (even by SIGKILL) the key is free at most ``liveness`` seconds
      after its last heartbeat. A forked child never renews its parent's holds. If this
      process cannot reach Redis for longer than ``liveness``, its process-bound holds end.
    * Fencing tokens are ``max(last token + 1, server time in microseconds)``: strictly
      increasing per key, and larger than every earlier token even after a restart of a
      server without persistence, unless the server's wall clock steps back by more than
      the life of the key's last hold.
    * Without persistence a server restart loses every hold (fencing tokens tell the
      resource); with AOF (``appendfsync always``) holds survive restarts shorter than
      ``liveness``. A connection failure raises :class:`~txlock.BackendUnavailable` and the
      next call reconnects.
    * Async methods use ``redis.asyncio`` on a single server; on Cluster they run the sync
      client in worker threads (redis-py 8.1's async cluster client is not safe under
      concurrent tasks). Waiters never park a thread either way.
    * Keys are identified by a 128-bit BLAKE2b digest of their UTF-8 bytes (lone surrogates
      included), which is also their Cluster hash tag: every Redis key of one lock lives in
      one slot. Keys have no length limit.
    * A manager pickles as its URL and reconnects lazily in the new process; one built from
      caller-supplied clients cannot be pickled (``TypeError``), only copied in-process.
    """

    schemes = SCHEMES
    capabilities = Capabilities(
        processes=True,
        hosts=True,
        fifo=True,
        counts_waiters=True,
        notes=("expiry runs on the Redis server's clock; no injectable clock",),
    )
    _async_io = True

    def __init__(
        self,
        url: str | None = None,
        *,
        client: Any = None,
        async_client: Any = None,
        prefix: str | None = None,
        liveness: float | None = None,
        wait_replicas: int | None = None,
        wait_timeout: float | None = None,
        **options: Any,
    ) -> None:
        if client is not None or async_client is not None:
            if url is not None:
                raise ConfigurationError("pass either a URL or client/async_client, not both")
            if client is None:
                raise ConfigurationError(
                    "async_client needs client= too (a redis.Redis for the same server): the wake-up "
                    "listener, the heartbeat and the sync methods use it"
                )
            parsed = None
            self._given: tuple[Any, Any] | None = (client, async_client)
            self._cluster = isinstance(client, redis.cluster.RedisCluster)
            in_url: dict[str, Any] = {}
            max_connections = given_max_connections(client, async_client)
        else:
            url = DEFAULT_URL if url is None else url
            if not isinstance(url, str):
                raise TypeError(f"url must be a str, not {type(url).__name__}")
            parsed = parse(url, DEFAULT_MAX_CONNECTIONS)
            self._given = None
            self._cluster = parsed.cluster
            in_url = parsed.options
            max_connections = parsed.max_connections
        given = {"prefix": prefix, "liveness": liveness, "wait_replicas": wait_replicas,
                 "wait_timeout": wait_timeout, **options}
        chosen = merge_options(given, in_url)
        prefix, liveness = chosen.pop("prefix"), chosen.pop("liveness")
        wait_replicas, wait_timeout = chosen.pop("wait_replicas"), chosen.pop("wait_timeout")
        super().__init__(**chosen)
        self.prefix = check_prefix(DEFAULT_PREFIX if prefix is None else prefix)
        self.liveness = DEFAULT_LIVENESS if liveness is None else check_liveness(liveness)
        #: Replicas that must confirm a grant or renewal before it counts (0: none, today's behaviour).
        self.wait_replicas = 0 if wait_replicas is None else check_wait_replicas(wait_replicas)
        #: The longest a grant waits for those replicas (bounded by the call's deadline).
        self.wait_timeout = DEFAULT_WAIT_TIMEOUT if wait_timeout is None else check_wait_timeout(wait_timeout)
        if self.wait_replicas and self._cluster:
            raise ConfigurationError(
                "wait_replicas is not supported with Redis Cluster: WAIT counts the replicas of the one "
                "node a connection talks to, and txlock cannot tie it to the node that granted a lock; "
                "use a single primary with replicas (redis:// or redis+sentinel://) or wait_replicas=0"
            )
        self._liveness_ms = hold_ms(self.liveness)
        self._prefix_bytes = encode(self.prefix)
        self._pattern = glob_escape(self._prefix_bytes) + b"{*}h"
        self._parsed = parsed
        self._clients = Clients(parsed, self._given)
        self._gate = Gate(max_connections)
        # The async methods run the sync client's calls in worker threads when there is no
        # async client, and on Cluster: redis-py 8.1's redis.asyncio.cluster drops
        # connections that concurrent tasks are still using (AttributeError on
        # ``_writer.writelines``), so the thread-safe sync RedisCluster serves async callers.
        self._athread = async_client is None if client is not None else self._cluster
        self._secrets: tuple[str, ...] = () if parsed is None else parsed.secrets
        self._where = self._url(redact=True) if parsed is None else parsed.where
        self._hub_ident: tuple[Any, ...] = (
            ("client", id(client)) if parsed is None else ("url", parsed.redis_url),
            self.wait_replicas,
            self.wait_timeout,
        )

    # ------------------------------------------------------------------ identity

    def _config(self) -> tuple[Any, ...]:
        if self._given is not None:
            return ("client", id(self._given[0]), id(self._given[1]), self.prefix, self.liveness,
                    self.wait_replicas, self.wait_timeout)
        assert self._parsed is not None
        return ("url", self._parsed.redis_url, self._parsed.scheme, self.prefix, self.liveness,
                self.wait_replicas, self.wait_timeout)

    def _init_kwargs(self) -> dict[str, Any]:
        if self._given is not None:
            raise TypeError(
                "a RedisLockManager built from caller-supplied clients cannot be pickled (its "
                "connections cannot travel); build it from a URL, e.g. RedisLockManager('redis://host:6379/0')"
            )
        return {"url": self._url(redact=False)}

    def __copy__(self) -> RedisLockManager:
        if self._given is None:
            return RedisLockManager(self._url(redact=False))
        return RedisLockManager(
            client=self._given[0], async_client=self._given[1], prefix=self.prefix, liveness=self.liveness,
            wait_replicas=self.wait_replicas, wait_timeout=self.wait_timeout, **self._common_kwargs()
        )

    def __deepcopy__(self, memo: dict[int, Any]) -> RedisLockManager:
        return copy.copy(self)

    def _url(self, *, redact: bool) -> str:
        query: list[tuple[str, str]]
        if self._parsed is None:
            assert self._given is not None
            base, query = client_url(self._given[0]), []
        else:
            base, query = server_url(self._parsed, redacted=redact)
        if self.prefix != DEFAULT_PREFIX:
            query.append(("prefix", self.prefix))
        if self.liveness != DEFAULT_LIVENESS:
            query.append(("liveness", f"{self.liveness:g}"))
        if self.wait_replicas:
            query.append(("wait_replicas", str(self.wait_replicas)))
        if self.wait_timeout != DEFAULT_WAIT_TIMEOUT:
            query.append(("wait_timeout", f"{self.wait_timeout:g}"))
        query.extend(self._common_query().items())
        return with_query(base, query)

    @classmethod
    def _from_parsed(cls, url: str, options: Mapping[str, str]) -> RedisLockManager:
        return cls(from_options(url, options))

    # ------------------------------------------------------------------ clients

    def _client(self) -> Any:
        """The sync client (tests read its pool)."""
        return self._clients.sync()

    def _new_sync(self) -> Any:
        """A new sync client for this manager's server (the hub's; tests check its options)."""
        return self._clients.new(asynchronous=False)

    def _new_async(self) -> Any:
        """A new asyncio client for this manager's server (tests check its options)."""
        return self._clients.new(asynchronous=True)

    def _hub(self) -> Hub:
        """The listener and heartbeat of this process for this manager's server."""
        return hubs.get(self._hub_ident, self._make_hub)

    def _make_hub(self) -> Hub:
        if self._given is not None:
            given = self._given[0]
            return Hub(lambda: given, self._where, self._secrets, self._cluster, self.wait_replicas, self.wait_timeout)
        return Hub(self._new_sync, self._where, self._secrets, self._cluster, self.wait_replicas, self.wait_timeout)

    def _process_hold_valid_until(self, sent: float) -> float | None:
        """A hold without ``hold_timeout`` lives ``liveness`` seconds past the later of its
        grant (requested at ``sent``) and the last heartbeat of this process that renewed
        every such hold (with ``wait_replicas``: that the replicas confirmed)."""
        return max(sent, self._hub().last_beat) + self.liveness

    def close(self) -> None:
        """Close this manager's connections (holds stay; the next call reconnects)."""
        self._clients.close()

    async def aclose(self) -> None:
        """Async form of :meth:`close`."""
        await self._clients.aclose()

    # ------------------------------------------------------------------ transport

    def _error(self, exc: BaseException) -> BackendError:
        return translate(exc, self._where, self._secrets)

    def _exec(self, work: Work) -> Any:
        call = work.call if type(work) is Confirmed else work
        hub = call.hub_to_wait_for() if type(call) is ScriptCall else None
        if hub is not None:
            timeout = hub.start()
            if not hub.ready.wait(timeout):
                raise hub.not_ready(timeout)
        self._gate.enter()
        try:
            try:
                client = self._clients.sync()
                if type(work) is Confirmed:
                    reply = _script(client, work.call)
                    token = work.token_of(reply)
                    if token is None:
                        return reply
                    seconds = _wait_seconds(work.timeout)
                    pipe = client.pipeline(transaction=False)
                    pipe.execute_command(*work.confirm(token).eval())
                    pipe.execute_command("WAIT", work.replicas, _ms(seconds))
                    held, acked = pipe.execute()
                    if held and int(acked) >= work.replicas:
                        return reply
                    undone: bool | BackendError | None = None
                    if work.revoke is not None:
                        try:
                            undone = bool(_script(client, work.withdraw(token)))
                        except DRIVER_ERRORS as exc:
                            undone = self._error(exc)
                    unconfirmed = (int(held), int(acked), seconds, undone)
                elif type(work) is ScriptCall:
                    try:
                        return client.execute_command(*work.evalsha())
                    except NoScriptError:
                        return client.execute_command(*work.eval())
                elif type(work) is Command:
                    return client.execute_command(work.name, *work.args)
                else:
                    assert type(work) is Listing
                    names = sorted(set(client.scan_iter(match=work.pattern, count=1000)))
                    pipe = client.pipeline(transaction=False)
                    queue_listing(pipe, names)
                    return names, (pipe.execute() if names else [])
            except DRIVER_ERRORS as exc:
                raise self._error(exc) from exc
            raise self._unconfirmed(work, *unconfirmed)
        finally:
            self._gate.leave()

    async def _aexec(self, work: Work) -> Any:
        call = work.call if type(work) is Confirmed else work
        hub = call.hub_to_wait_for() if type(call) is ScriptCall else None
        if hub is not None:
            timeout = hub.start()
            if not await hub.until_ready(timeout):
                raise hub.not_ready(timeout)
        if self._athread:
            return await asyncio.to_thread(self._exec, work)
        slots = await self._gate.aenter()
        try:
            try:
                client = await self._clients.of_this_loop()
                if type(work) is Confirmed:
                    reply = await _ascript(client, work.call)
                    token = work.token_of(reply)
                    if token is None:
                        return reply
                    seconds = _wait_seconds(work.timeout)
                    pipe = client.pipeline(transaction=False)
                    pipe.execute_command(*work.confirm(token).eval())
                    pipe.execute_command("WAIT", work.replicas, _ms(seconds))
                    held, acked = await within_budget(pipe.execute())
                    if held and int(acked) >= work.replicas:
                        return reply
                    undone: bool | BackendError | None = None
                    if work.revoke is not None:
                        try:
                            undone = bool(await _ascript(client, work.withdraw(token)))
                        except DRIVER_ERRORS as exc:
                            undone = self._error(exc)
                    unconfirmed = (int(held), int(acked), seconds, undone)
                elif type(work) is ScriptCall:
                    try:
                        return await within_budget(client.execute_command(*work.evalsha()))
                    except NoScriptError:
                        return await within_budget(client.execute_command(*work.eval()))
                elif type(work) is Command:
                    return await within_budget(client.execute_command(work.name, *work.args))
                else:
                    assert type(work) is Listing
                    names = sorted({name async for name in client.scan_iter(match=work.pattern, count=1000)})
                    pipe = client.pipeline(transaction=False)
                    queue_listing(pipe, names)
                    return names, (await pipe.execute() if names else [])
            except DRIVER_ERRORS as exc:
                raise self._error(exc) from exc
            raise self._unconfirmed(work, *unconfirmed)
        finally:
            slots.release()

    def _unconfirmed(
        self, work: Confirmed, held: int, acked: int, seconds: float, undone: bool | BackendError | None
    ) -> BackendUnavailable:
        """The error of a grant or renewal that fewer than ``wait_replicas`` replicas confirmed."""
        if not held:
            return BackendUnavailable(
                f"{work.what} on Redis at {self._where} ended before its replicas could confirm it "
                f"(wait_replicas={work.replicas})"
            )
        news = (f"{acked} of {work.replicas} replica(s) confirmed {work.what} on Redis at {self._where} "
                f"within {seconds:g}s")
        if work.revoke is None:
            outcome = "the renewal stands on the primary only and counts as failed"
        elif isinstance(undone, BackendError):
            outcome = f"withdrawing the grant failed ({undone}): it ends with its lease"
        else:
            outcome = "the grant was withdrawn"
        return BackendUnavailable(f"{news}; {outcome}. Check replication (INFO replication) or lower wait_replicas")

    # ------------------------------------------------------------------ primitives

    def _keys(self, key: str) -> list[bytes]:
        """The Redis keys of lock ``key``: hold, queue, queue entries, watchers."""
        base = self._prefix_bytes + b"{" + hashlib.blake2b(encode(key), digest_size=16).hexdigest().encode() + b"}"
        return [base + b"h", base + b"q", base + b"w", base + b"v"]

    def _track(self, hold_key: bytes, lease: Lease) -> Lease:
        """Put a process-bound hold under this process's heartbeat (or take it off)."""
        return self._hub().track(hold_key, lease, self._liveness_ms)

    def _registered(
        self, waiter: Waiter, state: object, key: str, hold_key: bytes, holder: str | None, ttl: float | None
    ) -> WaitState:
        """``state`` (what ``waiter`` carries), or a new registration with this process's
        listener: of an acquirer of ``holder``, or of a watcher when ``None``."""
        if isinstance(state, WaitState):
            return state
        return self._hub().add(waiter, key, hold_key, holder, ttl, self._liveness_ms)

    def _read_acquire(self, key: str, holder: str, ttl: float | None, hold_key: bytes, reply: Any) -> Lease | Busy:
        if reply[0] == 1:
            return self._track(hold_key, lease_of(key, holder, ttl, reply[1], reply[2], reply[3]))
        return Busy(None if reply[1] is None else decode(reply[1]), retry_after(int(reply[2]), self.liveness))

    def _try_acquire(self, key: str, holder: str, ttl: float | None, waiter: Waiter | None) -> Request[Lease | Busy]:
        keys = self._keys(key)
        args = [encode(holder), hold_ms(ttl), self._liveness_ms, encode(key)]
        if waiter is None:
            work = self._confirmed(ScriptCall(_scripts.ACQUIRE, keys, args), key, encode(holder), grant=True)
            return work, lambda reply: self._read_acquire(key, holder, ttl, keys[0], reply)
        state = waiter.data  # read before the lease: the listener sets the lease, then clears this
        if waiter.lease is not None:  # a release handed us the lock and told us so
            return no_io(waiter.lease)
        state = self._registered(waiter, state, key, keys[0], holder, ttl)
        args += [state.waiter_id, state.hub.channel]

        def read(reply: Any) -> Lease | Busy:
            if reply[0] == 1:
                state.hub.forget(waiter, state)
                return self._read_acquire(key, holder, ttl, keys[0], reply)
            # Queued: the heartbeat keeps the entry, a release pushes the grant, the hub
            # looks again when the hold runs out; sleeping longer costs the server nothing.
            state.hub.queued(state, hold_left(int(reply[2]), self.liveness))
            return Busy(None if reply[1] is None else decode(reply[1]), SAFETY_NET)

        return self._confirmed(ScriptCall(_scripts.ACQUIRE, keys, args, state), key, encode(holder), grant=True), read

    def _confirmed(self, call: ScriptCall, key: str, holder: bytes, *, grant: bool) -> Work:
        """``call`` as is, or, with ``wait_replicas``, followed by the replicas' confirmation of
        what it granted (``grant``) or renewed."""
        if not self.wait_replicas:
            return call
        revoke = (self._liveness_ms, encode(key)) if grant else None
        what = f"the {'grant' if grant else 'renewal'} of {key!r}"
        return Confirmed(call, granted_token, holder, self.wait_replicas, self.wait_timeout, revoke, what)

    def _release(self, key: str, holder: str) -> Request[str | None]:
        keys = self._keys(key)
        work = ScriptCall(_scripts.RELEASE, keys, [encode(holder), self._liveness_ms, encode(key)])
        return work, functools.partial(self._read_release, keys[0], holder)

    def _read_release(self, hold_key: bytes, holder: str, reply: Any) -> str | None:
        if reply == 0:
            # Only this holder's hold: the release may have handed the key to a waiter of
            # this process, whose hold the heartbeat must go on renewing.
            self._hub().drop(hold_key, holder=holder)
            return None
        return decode(reply)

    def _extend(self, key: str, holder: str, token: int, ttl: float | None) -> Request[Lease | None]:
        keys = self._keys(key)
        call = ScriptCall(_scripts.EXTEND, keys, [encode(holder), str(token), hold_ms(ttl), self._liveness_ms])
        work = self._confirmed(call, key, encode(holder), grant=False)

        def read(reply: Any) -> Lease | None:
            if reply is None:
                self._hub().drop(keys[0])
                return None
            return self._track(keys[0], lease_of(key, holder, ttl, reply[1], reply[2], reply[3]))

        return work, read

    def _holder(self, key: str) -> Request[str | None]:
        return Command("HGET", (self._keys(key)[0], "holder")), _decoded

    def _inspect(self, key: str) -> Request[LockInfo | None]:
        return ScriptCall(_scripts.INSPECT, self._keys(key), []), functools.partial(lock_info, key)

    def _list(self, prefix: str | None) -> Request[list[LockInfo]]:
        return Listing(self._pattern), lambda reply: listed(reply[0], reply[1], prefix)

    def _force_release(self, key: str) -> Request[bool]:
        keys = self._keys(key)
        self._hub().drop(keys[0])
        return ScriptCall(_scripts.FORCE_RELEASE, keys, [self._liveness_ms, encode(key)]), bool

    def _watch(self, key: str, waiter: Waiter | None) -> Request[Busy | None]:
        keys = self._keys(key)
        state = None if waiter is None else self._registered(waiter, waiter.data, key, keys[0], None, None)
        args = ["" if state is None else state.entry, self._liveness_ms, encode(key)]
        return ScriptCall(_scripts.WATCH, keys, args, state), functools.partial(self._read_watch, state)

    def _read_watch(self, state: WaitState | None, reply: Any) -> Busy | None:
        if reply is None:
            return None
        if state is None:
            return Busy(decode(reply[0]), retry_after(int(reply[1]), self.liveness))
        state.hub.queued(state, hold_left(int(reply[1]), self.liveness))
        return Busy(decode(reply[0]), SAFETY_NET)

    def _withdraw(self, key: str, waiter: Waiter) -> Request[Lease | None]:
        state = waiter.data  # read before the lease: the listener sets the lease, then clears this
        if waiter.lease is not None:  # handed over: keep it (timeout) or release it (cancellation)
            return no_io(waiter.lease)
        if not isinstance(state, WaitState):
            return NOTHING
        state.hub.forget(waiter, state)
        waiter_id = state.waiter_id if state.holder is not None else ""
        call = ScriptCall(_scripts.WITHDRAW, self._keys(key), [waiter_id, state.entry, self._liveness_ms, encode(key)])
        # A lock handed to this waiter as it gave up is a grant too: confirm it with the replicas.
        work = call if state.holder is None else self._confirmed(call, key, encode(state.holder), grant=True)

        def read(reply: Any) -> Lease | None:
            if reply is None or state.holder is None:
                return None
            grant = (reply[1], reply[2], max(int(reply[3]), 0))
            return self._track(state.hold_key, lease_of(key, state.holder, state.ttl, *grant))

        return work, read


def _decoded(reply: bytes | None) -> str | None:
    return None if reply is None else decode(reply)


def _script(client: Any, call: ScriptCall) -> Any:
    """Run ``call`` on a sync client (EVALSHA, EVAL when the server lacks the script)."""
    try:
        return client.execute_command(*call.evalsha())
    except NoScriptError:
        return client.execute_command(*call.eval())


async def _ascript(client: Any, call: ScriptCall) -> Any:
    """Run ``call`` on an asyncio client, bounded by the call's deadline."""
    try:
        return await within_budget(client.execute_command(*call.evalsha()))
    except NoScriptError:
        return await within_budget(client.execute_command(*call.eval()))


#: Seconds a WAIT leaves, within the call's budget, for its reply to arrive.
_WAIT_REPLY_ROOM = 0.25


def _wait_seconds(timeout: float) -> float:
    """How long a WAIT may block: ``wait_timeout``, and no longer than the call's budget
    allows (its deadline plus ``DEADLINE_MARGIN``, less room for the reply). Like every
    round trip of a call with a deadline, the confirmation of a grant made at the deadline
    (or by ``timeout=0``) still gets a fair chance."""
    budget = call_budget()
    return timeout if budget is None else min(timeout, max(budget - _WAIT_REPLY_ROOM, 0.001))


def _ms(seconds: float) -> int:
    """WAIT's timeout in milliseconds: at least 1 (``WAIT n 0`` would block forever)."""
    return max(1, round(seconds * 1000))
