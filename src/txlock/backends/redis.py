"""The Redis backend: locks shared by every process on every host that reaches one Redis.

Works with a single server (``redis://``, ``rediss://``, ``unix://``) and with Redis Cluster
(``redis+cluster://``). Every step (acquire, release, extend, inspect, watch, withdraw) is one
Lua script, so one round trip; the holder, the fencing token and the waiting queue live in
Redis, so any process that knows the holder string can release, and every answer comes from
the server. See ``docs/redis.md`` for the design.

Layout: every lock ``K`` lives in up to four Redis keys that share one Cluster hash tag,
``<prefix>{<blake2b-128 of K>}`` followed by one letter:

* ``h`` the hold, a hash: ``holder``, ``token``, ``at`` (grant time, server ms), ``ttl`` (ms,
  ``0`` for a hold bound to its process), ``wid`` (the queued waiter it was handed to),
  ``key`` (the original key, for ``list_locks``). Its ``PEXPIRE`` is the hold's end: the
  ttl, or the short process lease renewed by the heartbeat of the process that holds it. A
  release removes the holder fields but leaves ``token`` until that expiry.
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
import contextlib
import copy
import hashlib
import itertools
import logging
import math
import os
import threading
import time
import uuid
import weakref
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any, NamedTuple
from urllib.parse import parse_qsl, quote, urlencode, urlsplit

import redis
import redis.asyncio
import redis.asyncio.cluster
import redis.asyncio.retry
import redis.cluster
import redis.connection
from redis.backoff import ExponentialWithJitterBackoff
from redis.crc import key_slot
from redis.exceptions import NoScriptError, RedisError
from redis.retry import Retry

from txlock import _scheduler
from txlock._errors import BackendError, BackendUnavailable, ConfigurationError
from txlock._manager import DEADLINE_MARGIN, BaseLockManager, call_budget, parse_seconds
from txlock._types import Busy, Capabilities, Lease, LockInfo
from txlock._url import COMMON_OPTIONS, check_url_form, common_options, redact
from txlock._validate import decode, encode
from txlock._waiter import Waiter

__all__ = ["RedisLockManager"]

log = logging.getLogger("txlock.redis")

#: Default life of a hold without ``hold_timeout`` between two heartbeats: a holder killed
#: with SIGKILL frees its locks at most this long after its last heartbeat.
DEFAULT_LEASE = 5.0
DEFAULT_PREFIX = "txlock:"
DEFAULT_URL = "redis://127.0.0.1:6379/0"

#: Query options passed through to redis-py's ``from_url``.
_REDIS_OPTIONS = (
    "db",
    "socket_timeout",
    "socket_connect_timeout",
    "ssl_cert_reqs",
    "ssl_ca_certs",
    "ssl_certfile",
    "ssl_keyfile",
    "ssl_check_hostname",
    "client_name",
    "health_check_interval",
    "max_connections",
    "protocol",
)
#: txlock's own options.
_OWN_OPTIONS = ("prefix", "lease")

#: Commands one manager keeps in flight at once per client (per event loop for async):
#: the size of its connection pool too, unless the URL's ``max_connections`` says
#: otherwise. Callers beyond it queue for a connection (redis-py >= 8.2 would refuse them
#: with ``MaxConnectionsError``); Redis runs commands one at a time, so more connections
#: from one process add no throughput.
DEFAULT_MAX_CONNECTIONS = 32

#: Longest wait for the wake-up subscription before a waiter queues in Redis.
_SUBSCRIBE_WAIT = 10.0
_HEARTBEAT_BATCH = 1000
_LISTENER_IDLE = 10.0  # seconds a listener with no local waiters stays subscribed


class _Script:
    """A Lua script: its source and SHA1 (run by EVALSHA, falling back to EVAL)."""

    __slots__ = ("name", "sha", "source")

    def __init__(self, name: str, source: str) -> None:
        self.name = name
        self.source = source
        self.sha = hashlib.sha1(source.encode(), usedforsecurity=False).hexdigest()


# Every script starts with its fast path, written inline; the shared functions below are only
# defined (closures cost time on every call) when a script reaches its slow path: a queue,
# watchers, or a hand-off.
_FUNCS = r"""
local clock = redis.call('TIME')
local now_us = clock[1] * 1000000 + clock[2]
local now = math.floor(now_us / 1000)

local function num(x) return string.format('%.0f', x) end

-- Make `holder` the holder with a new token; a ttl of 0 binds the hold to its process
-- (the lease, renewed by that process's heartbeat).
local function grant(holder, ttl, lease, wid, rawkey)
  local tok = (tonumber(redis.call('HGET', KH, 'token')) or 0) + 1
  if tok < now_us then tok = now_us end
  local life = ttl
  if ttl == 0 then life = lease end
  redis.call('HSET', KH, 'holder', holder, 'token', num(tok), 'at', num(now), 'ttl', num(ttl), 'wid', wid,
             'key', rawkey)
  redis.call('PEXPIRE', KH, life)
  return tok, life
end

-- The longest live waiter (dropping entries of dead processes on the way).
local function head()
  while true do
    local first = redis.call('ZRANGE', KQ, 0, 0)[1]
    if not first then return nil end
    local info = redis.call('HGET', KW, first)
    if info then
      local deadline, holder, ttl, chan = cmsgpack.unpack(info)
      if deadline >= now then return first, holder, ttl, chan end
    end
    redis.call('ZREM', KQ, first)
    redis.call('HDEL', KW, first)
  end
end

local function dequeue(wid)
  redis.call('ZREM', KQ, wid)
  redis.call('HDEL', KW, wid)
end

-- The key has no live hold: hand it to the longest waiter (and tell that waiter's process
-- on its channel), else free it and wake the watchers. Returns the new holder or nil.
local function vacate(lease, rawkey)
  local wid, holder, ttl, chan = head()
  if wid then
    dequeue(wid)
    local tok, life = grant(holder, ttl, lease, wid, rawkey)
    redis.call('PUBLISH', chan, 'g ' .. wid .. ' ' .. num(tok) .. ' ' .. num(now) .. ' ' .. num(life))
    return holder
  end
  redis.call('HDEL', KH, 'holder', 'at', 'ttl', 'wid')
  local watchers = redis.call('SMEMBERS', KV)
  for _, entry in ipairs(watchers) do
    local sp = string.find(entry, ' ', 1, true)
    if sp then
      redis.call('PUBLISH', string.sub(entry, 1, sp - 1), 'f ' .. string.sub(entry, sp + 1))
    end
  end
  redis.call('DEL', KV)
  return nil
end
"""

_KEYS = "local KH, KQ, KW, KV = KEYS[1], KEYS[2], KEYS[3], KEYS[4]\n"

#: ARGV: holder, ttl ms (0 = process-bound), lease ms, key[, waiter id, channel].
#: Reply: {1, token, now ms, life ms} granted | {0, holder, pttl ms} busy.
_ACQUIRE = _Script(
    "acquire",
    _KEYS
    + r"""
local holder, ttl, lease, wid = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[5] or ''
local life = ttl
if ttl == 0 then life = lease end
local cur = redis.call('HMGET', KH, 'holder', 'token')
if cur[1] == holder and wid == '' then
  redis.call('HSET', KH, 'ttl', ARGV[2])
  redis.call('PEXPIRE', KH, life)
  local clock = redis.call('TIME')
  return {1, tonumber(cur[2]), clock[1] * 1000 + math.floor(clock[2] / 1000), life}
end
if not cur[1] and wid == '' and redis.call('EXISTS', KQ) == 0 then
  local clock = redis.call('TIME')
  local now_us = clock[1] * 1000000 + clock[2]
  local tok = (tonumber(cur[2]) or 0) + 1
  if tok < now_us then tok = now_us end
  local now = math.floor(now_us / 1000)
  redis.call('HSET', KH, 'holder', holder, 'token', string.format('%.0f', tok), 'at', string.format('%.0f', now),
             'ttl', ARGV[2], 'key', ARGV[4])
  redis.call('PEXPIRE', KH, life)
  return {1, tok, now, life}
end
"""
    + _FUNCS
    + r"""
local rawkey, chan = ARGV[4], ARGV[6]
cur = cur[1]
if cur == holder then
  redis.call('HSET', KH, 'ttl', ARGV[2])
  redis.call('PEXPIRE', KH, life)
  dequeue(wid)
  return {1, tonumber(redis.call('HGET', KH, 'token')), now, life}
end
if not cur then
  local first = head()
  if (not first) or first == wid then
    if first then dequeue(wid) end
    local tok, life = grant(holder, ttl, lease, wid, rawkey)
    return {1, tok, now, life}
  end
  cur = vacate(lease, rawkey)
end
if wid ~= '' then
  if not redis.call('ZSCORE', KQ, wid) then
    local score = now_us
    local last = redis.call('ZRANGE', KQ, -1, -1, 'WITHSCORES')[2]
    if last and tonumber(last) >= score then score = tonumber(last) + 1 end
    redis.call('ZADD', KQ, num(score), wid)
  end
  redis.call('HSET', KW, wid, cmsgpack.pack(now + lease, holder, ttl, chan))
  redis.call('PEXPIRE', KQ, 2 * lease)
  redis.call('PEXPIRE', KW, 2 * lease)
end
return {0, cur, redis.call('PTTL', KH)}
""",
)

#: ARGV: holder, lease ms, key. Reply: 0 (released, or not held) | the other holder.
_RELEASE = _Script(
    "release",
    _KEYS
    + r"""
local cur = redis.call('HGET', KH, 'holder')
if cur and cur ~= ARGV[1] then return cur end
if redis.call('EXISTS', KQ, KV) == 0 then
  -- The record keeps the last token until the old hold's expiry.
  if cur then redis.call('HDEL', KH, 'holder', 'at', 'ttl', 'wid') end
  return 0
end
"""
    + _FUNCS
    + r"""
vacate(tonumber(ARGV[2]), ARGV[3])
return 0
""",
)

#: ARGV: holder, token, ttl ms (0 = process-bound), lease ms.
#: Reply: {1, token, now ms, life ms} | nil when that grant no longer holds the key.
_EXTEND = _Script(
    "extend",
    _KEYS
    + r"""
local holder, token, ttl, lease = ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
local f = redis.call('HMGET', KH, 'holder', 'token')
if f[1] ~= holder or f[2] ~= token then return nil end
local life = ttl
if ttl == 0 then life = lease end
redis.call('HSET', KH, 'ttl', ARGV[3])
redis.call('PEXPIRE', KH, life)
local clock = redis.call('TIME')
return {1, tonumber(token), clock[1] * 1000 + math.floor(clock[2] / 1000), life}
""",
)

#: Reply: nil (free) | {holder, token, acquired ms, ttl ms, pttl ms, now ms, live waiters}.
_INSPECT = _Script(
    "inspect",
    _KEYS
    + r"""
local f = redis.call('HMGET', KH, 'holder', 'token', 'at', 'ttl')
if not f[1] then return nil end
local clock = redis.call('TIME')
local now = clock[1] * 1000 + math.floor(clock[2] / 1000)
local waiters = 0
for _, info in ipairs(redis.call('HVALS', KW)) do
  local deadline = cmsgpack.unpack(info)
  if deadline >= now then waiters = waiters + 1 end
end
return {f[1], tonumber(f[2]), tonumber(f[3]), tonumber(f[4]), redis.call('PTTL', KH), now, waiters}
""",
)

#: ARGV: watcher entry ('' = none), lease ms, key. Reply: nil (free) | {holder, pttl ms}.
_WATCH = _Script(
    "watch",
    _KEYS
    + r"""
local entry, lease, rawkey = ARGV[1], tonumber(ARGV[2]), ARGV[3]
local cur = redis.call('HGET', KH, 'holder')
if not cur and redis.call('EXISTS', KQ) == 0 then return nil end
"""
    + _FUNCS
    + r"""
if not cur then
  cur = vacate(lease, rawkey)
  if not cur then return nil end
end
local pttl = redis.call('PTTL', KH)
if entry ~= '' then
  redis.call('SADD', KV, entry)
  local keep = lease
  if pttl > 0 then keep = keep + pttl end
  redis.call('PEXPIRE', KV, keep)
end
return {cur, pttl}
""",
)

#: ARGV: waiter id ('' = none), watcher entry ('' = none), lease ms, key.
#: Reply: nil | {1, token, now ms, life ms} when the lock had been handed to that waiter.
_WITHDRAW = _Script(
    "withdraw",
    _KEYS
    + _FUNCS
    + r"""
local wid, entry, lease, rawkey = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4]
if entry ~= '' then redis.call('SREM', KV, entry) end
if wid == '' then return nil end
if redis.call('ZREM', KQ, wid) == 1 then
  redis.call('HDEL', KW, wid)
  if not redis.call('HGET', KH, 'holder') and redis.call('EXISTS', KQ) == 1 then vacate(lease, rawkey) end
  return nil
end
local f = redis.call('HMGET', KH, 'wid', 'token', 'holder')
if f[1] == wid and f[3] then return {1, tonumber(f[2]), now, redis.call('PTTL', KH)} end
return nil
""",
)

#: ARGV: lease ms, key. Reply: 1 if it was held, else 0.
_FORCE = _Script(
    "force_release",
    _KEYS
    + _FUNCS
    + r"""
local lease, rawkey = tonumber(ARGV[1]), ARGV[2]
local held = redis.call('HGET', KH, 'holder')
if held or redis.call('EXISTS', KQ) == 1 then vacate(lease, rawkey) end
if held then return 1 end
return 0
""",
)

#: KEYS: hold keys. ARGV: per key (token, lease ms). Renews the process-bound holds whose
#: grant is still the one this process holds. Reply: the 1-based indexes of lost holds.
_HEARTBEAT = _Script(
    "heartbeat",
    r"""
local lost = {}
for i, k in ipairs(KEYS) do
  local f = redis.call('HMGET', k, 'token', 'ttl')
  if f[1] == ARGV[2 * i - 1] and f[2] == '0' then
    redis.call('PEXPIRE', k, ARGV[2 * i])
  else
    lost[#lost + 1] = i
  end
end
return lost
""",
)


# ---------------------------------------------------------------------------- pure helpers


def _ms(seconds: float | None) -> int:
    """A hold timeout in whole milliseconds (at least 1); ``0`` for a process-bound hold."""
    return 0 if seconds is None else max(1, math.ceil(seconds * 1000))


def _retry(pttl_ms: int, lease: float) -> float:
    """How long a waiter sleeps without a wake-up: the time left on the hold, but at most
    half the lease (the keep-alive of its queue entry and the safety net for a lost
    wake-up message)."""
    if pttl_ms < 0:
        return lease / 2
    return min(pttl_ms / 1000, lease / 2)


def _lease(key: str, holder: str, ttl: float | None, token: int, now_ms: int, life_ms: int) -> Lease:
    expires = None if ttl is None else (now_ms + life_ms) / 1000
    return Lease(key, holder, int(token), expires, ttl)


def _glob_escape(data: bytes) -> bytes:
    out = bytearray()
    for byte in data:
        if byte in b"*?[]\\":
            out += b"\\"
        out.append(byte)
    return bytes(out)


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
#: What the I/O methods catch; everything else is a bug and propagates as is.
_DRIVER_ERRORS = (RedisError, redis.exceptions.RedisClusterException, OSError)


def _translate(exc: BaseException, where: str, secret: str | None) -> BackendError:
    """The one place where redis-py's exceptions become txlock's (password scrubbed)."""
    detail = f"{type(exc).__name__}: {exc}"
    if secret:
        detail = detail.replace(secret, "***")
    if isinstance(exc, redis.exceptions.AuthenticationError):
        return BackendUnavailable(f"Redis at {where} refused the credentials ({detail}); check the URL's password")
    if isinstance(exc, _UNAVAILABLE):
        return BackendUnavailable(
            f"Redis at {where} is unavailable ({detail}); check that the server is running and "
            "reachable. The next call reconnects."
        )
    return BackendError(f"Redis at {where} failed ({detail})")


# ---------------------------------------------------------------------------- per-process hub


class _WaitState:
    """What a queued waiter (or watcher) carries in ``Waiter.data``."""

    __slots__ = ("entry", "grant", "holder", "hub", "kh", "ttl", "wid")

    def __init__(self, hub: _Hub, wid: str, kh: bytes, holder: str | None, ttl: float | None) -> None:
        self.hub = hub
        self.wid = wid
        self.kh = kh
        self.holder = holder  # None for a wait_for_lock watcher
        self.ttl = ttl
        self.entry = "" if holder is not None else f"{hub.channel} {wid}"
        self.grant: tuple[int, int, int] | None = None  # (token, now ms, life ms) pushed by a release


class _Hub:
    """Everything one process shares per Redis server: the wake-up listener (one pub/sub
    connection and thread) and the heartbeat that renews this process's process-bound holds
    (one job on the shared scheduler thread). Replaced after ``fork``."""

    def __init__(self, factory: Any, where: str, secret: str | None, cluster: bool) -> None:
        self._factory = factory
        self.where = where
        self._secret = secret
        self.cluster = cluster
        self.channel = f"txlock:wake:{uuid.uuid4().hex}"
        self.lock = threading.Lock()
        self.waiters: dict[str, Waiter] = {}
        self._ids = itertools.count(1)
        self.ready = threading.Event()
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self.holds: dict[bytes, tuple[bytes, int]] = {}  # hold key -> (token, lease ms)
        self._renewed: dict[bytes, float] = {}  # hold key -> last successful renewal (monotonic)
        self._failing = False
        self._job: _scheduler.Job | None = None
        self._interval = math.inf
        self._client: Any = None

    def client(self) -> Any:
        if self._client is None:
            with self.lock:
                if self._client is None:
                    self._client = self._factory()
        return self._client

    # -- waiters and the listener

    def add(self, waiter: Waiter, kh: bytes, holder: str | None, ttl: float | None) -> _WaitState:
        with self.lock:
            state = _WaitState(self, f"{self.channel[12:]}:{next(self._ids)}", kh, holder, ttl)
            waiter.data = state
            self.waiters[state.wid] = waiter
        return state

    def forget(self, wid: str) -> None:
        with self.lock:
            self.waiters.pop(wid, None)

    def _start(self) -> float:
        """Start the listener if needed; how long a caller may wait for its subscription."""
        with self.lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._listen, name="txlock-redis-listener", daemon=True)
                self._thread.start()
        budget = call_budget()  # an acquire with a timeout waits no longer than that
        return _SUBSCRIBE_WAIT if budget is None else min(_SUBSCRIBE_WAIT, budget)

    def _not_ready(self, timeout: float) -> BackendUnavailable:
        error = self._error
        detail = f" ({_translate(error, self.where, self._secret)})" if error is not None else ""
        return BackendUnavailable(
            f"could not subscribe to wake-ups on Redis at {self.where} within {timeout:g}s{detail}"
        )

    def ensure(self) -> None:
        """Make sure the listener is subscribed before a waiter is queued in Redis (a
        release published before the subscription would be lost)."""
        timeout = self._start()
        if not self.ready.wait(timeout):
            raise self._not_ready(timeout)

    async def aensure(self) -> None:
        """:meth:`ensure` for the event loop, parking no thread: the subscription is made by
        the listener thread; the task looks at it with a short backoff (only while a first
        subscription or a reconnection is under way)."""
        timeout = self._start()
        give_up = time.monotonic() + timeout
        delay = 0.0005
        while not self.ready.is_set():
            left = give_up - time.monotonic()
            if left <= 0:
                raise self._not_ready(timeout)
            await asyncio.sleep(min(delay, left))
            delay = min(delay * 2, 0.05)

    def _listen(self) -> None:
        pubsub: Any = None
        delay = 0.05
        idle_since: float | None = None
        try:
            while True:
                with self.lock:
                    if self.waiters:
                        idle_since = None
                    elif idle_since is None:
                        idle_since = time.monotonic()
                    elif time.monotonic() - idle_since > _LISTENER_IDLE:
                        self.ready.clear()
                        self._thread = None
                        return
                try:
                    if pubsub is None:
                        pubsub = self.client().pubsub()
                        pubsub.subscribe(self.channel)
                    # The raw reply: get_message()'s dict building is a measurable part
                    # of the hand-off latency.
                    message = pubsub.parse_response(block=False, timeout=0.5)
                except _DRIVER_ERRORS as exc:
                    self.ready.clear()
                    # Warn once per outage; the retries that follow are debug noise.
                    level = logging.WARNING if self._error is None else logging.DEBUG
                    self._error = exc
                    if pubsub is not None:
                        with contextlib.suppress(Exception):
                            pubsub.close()
                        pubsub = None
                    log.log(level, "wake-up listener lost Redis at %s (%s); reconnecting", self.where,
                            _translate(exc, self.where, self._secret))
                    self._wake_all()
                    time.sleep(delay)  # back off before reconnecting (not ordering events)
                    delay = min(delay * 2, 1.0)
                    continue
                if not message:
                    continue
                if message[0] == b"message":
                    self._dispatch(message[2])
                elif message[0] == b"subscribe":
                    delay = 0.05
                    self._error = None
                    self.ready.set()
                    self._wake_all()  # wake-ups sent while we were away are lost: re-check
        finally:
            if pubsub is not None:
                with contextlib.suppress(Exception):
                    pubsub.close()

    def _wake_all(self) -> None:
        with self.lock:
            waiters = list(self.waiters.values())
        for waiter in waiters:
            waiter.wake()

    def _dispatch(self, data: bytes) -> None:
        parts = data.split(b" ")
        with self.lock:
            waiter = self.waiters.get(parts[1].decode())
        if waiter is None:
            return
        state = waiter.data
        if parts[0] == b"g" and isinstance(state, _WaitState):
            token = int(parts[2])
            state.grant = (token, int(parts[3]), int(parts[4]))
            if state.ttl is None:
                self.keep(state.kh, parts[2], int(parts[4]))
        waiter.wake()

    # -- the heartbeat of process-bound holds

    def keep(self, kh: bytes, token: bytes, lease_ms: int) -> None:
        with self.lock:
            self.holds[kh] = (token, lease_ms)
            self._renewed[kh] = time.monotonic()
            interval = lease_ms / 3000
            if self._job is None or interval < self._interval:
                if self._job is not None:
                    self._job.cancel()
                self._interval = interval
                self._job = _scheduler.schedule(self._beat, interval, name=f"txlock heartbeat {self.where}")

    def drop(self, kh: bytes, token: bytes | None = None) -> None:
        with self.lock:
            held = self.holds.get(kh)
            if held is not None and (token is None or held[0] == token):
                del self.holds[kh]
                self._renewed.pop(kh, None)

    def _beat(self) -> bool:
        with self.lock:
            if not self.holds:
                self._job = None
                self._interval = math.inf
                return False
            items = list(self.holds.items())
        groups: dict[int, list[tuple[bytes, tuple[bytes, int]]]] = {}
        if self.cluster:
            for item in items:
                groups.setdefault(key_slot(item[0]), []).append(item)
        else:
            groups = {i: items[i : i + _HEARTBEAT_BATCH] for i in range(0, len(items), _HEARTBEAT_BATCH)}
        client = self.client()
        for group in groups.values():
            keys = [kh for kh, _ in group]
            args = [value for _, held in group for value in held]
            started = time.monotonic()
            try:
                lost = [group[int(index) - 1] for index in _eval_sync(client, _HEARTBEAT, keys, args)]
            except _DRIVER_ERRORS as exc:
                level = logging.DEBUG if self._failing else logging.WARNING
                self._failing = True
                log.log(level, "heartbeat could not renew %d hold(s) on Redis at %s: %s", len(keys), self.where,
                        _translate(exc, self.where, self._secret))
                # A hold not renewed for a whole lease has expired on the server: stop trying.
                with self.lock:
                    lost = [(kh, held) for kh, held in group
                            if started - self._renewed.get(kh, started) > held[1] / 1000]
            else:
                if self._failing:
                    self._failing = False
                    log.warning("heartbeat reached Redis at %s again", self.where)
                with self.lock:
                    for kh in keys:
                        if kh in self._renewed:
                            self._renewed[kh] = started
            for kh, (token, _) in lost:
                log.info("process-bound hold %r is lost (expired, released or force-released)", kh)
                self.drop(kh, token)
        return True


_hubs: dict[tuple[Any, ...], _Hub] = {}
_hubs_lock = threading.Lock()
_generation = 0


def _after_fork() -> None:
    # The child has no listener thread, no waiters and must never renew its parent's holds.
    global _hubs, _hubs_lock, _generation
    _hubs = {}
    _hubs_lock = threading.Lock()
    _generation += 1


os.register_at_fork(after_in_child=_after_fork)


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


_CONNECTIONS = {"redis": _TcpConnection, "rediss": _TlsConnection, "unix": _UnixConnection}


async def _within_budget(call: Any) -> Any:
    """Await ``call``, cut off by the current call's deadline (plus the margin), if any."""
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


def _eval_sync(client: Any, script: _Script, keys: Sequence[bytes], args: Sequence[Any]) -> Any:
    try:
        return client.evalsha(script.sha, len(keys), *keys, *args)
    except NoScriptError:
        return client.eval(script.source, len(keys), *keys, *args)


async def _eval_async(client: Any, script: _Script, keys: Sequence[bytes], args: Sequence[Any]) -> Any:
    try:
        return await client.evalsha(script.sha, len(keys), *keys, *args)
    except NoScriptError:
        return await client.eval(script.source, len(keys), *keys, *args)


async def _closer(client: Any) -> AsyncIterator[None]:
    """An async generator whose ``finally`` closes ``client`` when its event loop shuts
    down (``asyncio.run`` calls ``shutdown_asyncgens`` before closing the loop)."""
    try:
        yield
    finally:
        with contextlib.suppress(Exception):
            await client.aclose()


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


_closing: set[asyncio.Task[Any]] = set()


class _Gate:
    """Queues callers for a client's connections: at most ``size`` commands in flight from
    threads (sync) and ``size`` per event loop (async). A caller beyond that waits for a
    connection instead of getting redis-py's ``MaxConnectionsError``; a parked waiter holds
    no connection at all (it waits on its :class:`Waiter`, outside the gate)."""

    __slots__ = ("_loops", "size", "threads")

    def __init__(self, size: int) -> None:
        self.size = size
        self.threads = threading.BoundedSemaphore(size)
        self._loops: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Semaphore] = (
            weakref.WeakKeyDictionary()
        )

    def tasks(self) -> asyncio.Semaphore:
        """The running loop's semaphore (each loop has its own client, hence its own pool)."""
        loop = asyncio.get_running_loop()
        sem = self._loops.get(loop)
        if sem is None:
            sem = self._loops.setdefault(loop, asyncio.Semaphore(self.size))
        return sem


def _pool_size(client: Any) -> int | None:
    """The ``max_connections`` of a caller-supplied client's pool, when it has one."""
    size = getattr(getattr(client, "connection_pool", None), "max_connections", None)
    return size if isinstance(size, int) and size > 0 else None


class _Call(NamedTuple):
    keys: list[bytes]
    args: list[Any]
    state: _WaitState | None


# ---------------------------------------------------------------------------- the manager


class RedisLockManager(BaseLockManager):
    """Locks shared by every process on every host that reaches one Redis (or Redis Cluster).

    Build it from a URL (``redis://[[user]:password@]host[:port][/db]``, ``rediss://`` for
    TLS, ``unix:///path/to/redis.sock?db=0``, ``redis+cluster://host:port`` for Redis
    Cluster) or from caller-supplied clients (``client=redis.Redis(...)``, optionally with
    ``async_client=redis.asyncio.Redis(...)``; or ``redis.cluster.RedisCluster`` and its
    async twin). Options (keywords or URL query): ``prefix`` (default ``"txlock:"``, the
    start of every Redis key and no ``{``/``}``), ``lease`` (seconds, default 5), the common
    ``acquire_timeout`` / ``raise_on_timeout``, and redis-py's connection options
    (``socket_timeout``, ``socket_connect_timeout``, ``ssl_*``, ``client_name``, ...).

    Guarantees and limits:

    * Every step (acquire, release, renew, inspect) is one Lua script, one round trip. The
      holder, fencing token and waiting queue live in Redis: any process that knows the
      holder string may release, and ``is_locked`` / ``is_lock_holder`` ask the server.
    * Waiters are served in arrival order: a release hands the lock directly to the oldest
      live waiter of the per-key queue and pushes the grant to that waiter's process over
      pub/sub (one listener connection and thread per process and server). A waiter also
      re-checks at least every ``lease / 2`` seconds, which keeps its queue entry alive and
      recovers a lost wake-up message; entries of dead processes expire after ``lease``.
    * ``hold_timeout=T`` ends the hold T seconds after the grant on the server's clock
      (``PEXPIRE``). A hold without ``hold_timeout`` is a server-side lease of ``lease``
      seconds renewed every ``lease / 3`` by one heartbeat per process and server; if the
      holding process dies (even by SIGKILL) the key is free at most ``lease`` seconds after
      its last heartbeat. A forked child never renews its parent's holds. If this process
      cannot reach Redis for longer than ``lease``, its process-bound holds end.
    * Fencing tokens are ``max(last token + 1, server time in microseconds)``: strictly
      increasing per key, and larger than every earlier token even after a restart of a
      server without persistence, unless the server's wall clock steps back by more than
      the life of the key's last hold.
    * Without persistence a server restart loses every hold (fencing tokens tell the
      resource); with AOF (``appendfsync always``) holds survive restarts shorter than the
      lease. A connection failure raises :class:`~txlock.BackendUnavailable` and the next
      call reconnects.
    * Async methods use ``redis.asyncio`` on a single server; on Cluster they run the sync
      client in worker threads (redis-py 8.1's async cluster client is not safe under
      concurrent tasks). Waiters never park a thread either way.
    * Keys are identified by a 128-bit BLAKE2b digest of their UTF-8 bytes (lone surrogates
      included), which is also their Cluster hash tag: every Redis key of one lock lives in
      one slot. Keys have no length limit.
    * A manager pickles as its URL and reconnects lazily in the new process; one built from
      caller-supplied clients cannot be pickled (``TypeError``), only copied in-process.
    """

    schemes = ("redis", "rediss", "unix", "redis+cluster")
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
        lease: float | None = None,
        **options: Any,
    ) -> None:
        own: dict[str, str] = {}
        self._redis_url = ""
        self._scheme = "redis"
        self._secret: str | None = None
        if client is not None or async_client is not None:
            if url is not None:
                raise ConfigurationError("pass either a URL or client/async_client, not both")
            if client is None:
                raise ConfigurationError(
                    "async_client needs client= too (a redis.Redis for the same server): the wake-up "
                    "listener, the heartbeat and the sync methods use it"
                )
            self._cluster = isinstance(client, redis.cluster.RedisCluster)
        else:
            url = DEFAULT_URL if url is None else url
            if not isinstance(url, str):
                raise TypeError(f"url must be a str, not {type(url).__name__}")
            self._parse(url, own)
        super().__init__(**{**common_options({k: v for k, v in own.items() if k in COMMON_OPTIONS}, ()), **options})
        if prefix is None:
            prefix = own.get("prefix", DEFAULT_PREFIX)
        if not isinstance(prefix, str):
            raise TypeError(f"prefix must be a str, not {type(prefix).__name__}")
        if "{" in prefix or "}" in prefix:
            raise ConfigurationError(
                f"prefix {prefix!r} must not contain '{{' or '}}': they delimit the Redis Cluster hash "
                "tag that keeps every Redis key of one lock in one slot"
            )
        if lease is None:
            lease = parse_seconds("lease", own["lease"], positive=True) if "lease" in own else DEFAULT_LEASE
        if isinstance(lease, bool) or not isinstance(lease, int | float) or not (0 < lease < math.inf):
            raise ConfigurationError(f"lease must be a finite number of seconds > 0, got {lease!r}")
        self.prefix = prefix
        self.lease = float(lease)
        self._lease_ms = _ms(self.lease)
        self._prefix_b = encode(prefix)
        self._pattern = _glob_escape(self._prefix_b) + b"{*}h"
        self._given = (client, async_client) if client is not None else None
        # The async methods run the sync client's calls in worker threads when there is no
        # async client, and on Cluster: redis-py 8.1's redis.asyncio.cluster drops
        # connections that concurrent tasks are still using (AttributeError on
        # ``_writer.writelines``), so the thread-safe sync RedisCluster serves async callers.
        self._athread = async_client is None if client is not None else self._cluster
        self._sync: Any = client
        if self._given is not None:
            # The caller's sync client also carries the wake-up subscription and the
            # heartbeat (two connections); stay within what its pool allows.
            sizes = [size for size in (_pool_size(client), _pool_size(async_client)) if size is not None]
            self._max_connections = max(1, min([DEFAULT_MAX_CONNECTIONS, *(s - 2 for s in sizes)]))
        self._gate = _Gate(self._max_connections)
        self._aclients: dict[asyncio.AbstractEventLoop, Any] = {}
        self._aclosers: dict[asyncio.AbstractEventLoop, Any] = {}
        self._mutex = threading.Lock()
        self._hub_cache: tuple[int, _Hub] | None = None

    def _parse(self, url: str, own: dict[str, str]) -> None:
        check_url_form(url)
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme not in self.schemes:
            raise ConfigurationError(
                f"{redact(url)!r} is not a Redis URL; use redis://, rediss://, unix:// or redis+cluster://"
            )
        query = dict(parse_qsl(parts.query, keep_blank_values=True))
        self._max_connections = DEFAULT_MAX_CONNECTIONS
        if "max_connections" in query:
            raw = query["max_connections"]
            if not raw.isdigit() or int(raw) < 1:
                raise ConfigurationError(
                    f"max_connections must be a whole number >= 1, got {raw!r} (txlock's default is "
                    f"{DEFAULT_MAX_CONNECTIONS}: callers beyond it wait for a connection)"
                )
            self._max_connections = int(raw)
        for name in [*_OWN_OPTIONS, *COMMON_OPTIONS]:
            if name in query:
                own[name] = query.pop(name)
        unknown = sorted(set(query) - set(_REDIS_OPTIONS))
        if unknown:
            accepted = ", ".join(sorted({*_REDIS_OPTIONS, *_OWN_OPTIONS, *COMMON_OPTIONS}))
            raise ConfigurationError(f"unknown option(s) {', '.join(unknown)}; this backend accepts: {accepted}")
        path = parts.path
        if scheme in ("redis", "rediss") and path in ("", "/"):
            path = "/0"
        self._scheme = scheme
        self._cluster = scheme == "redis+cluster"
        self._secret = parts.password or None
        rest = urlencode(sorted(query.items()))
        self._redis_url = _join("redis" if self._cluster else scheme, parts.netloc, path, rest)
        self._where = redact(_join(scheme, parts.netloc, path, ""))

    # ------------------------------------------------------------------ identity

    def _config(self) -> tuple[Any, ...]:
        if self._given is not None:
            return ("client", id(self._given[0]), id(self._given[1]), self.prefix, self.lease)
        return ("url", self._redis_url, self._scheme, self.prefix, self.lease)

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
            client=self._given[0], async_client=self._given[1], prefix=self.prefix, lease=self.lease,
            **self._common_kwargs()
        )

    def __deepcopy__(self, memo: dict[int, Any]) -> RedisLockManager:
        return copy.copy(self)

    def _url(self, *, redact: bool) -> str:
        query: list[tuple[str, str]] = []
        if self._given is not None:
            kwargs = getattr(getattr(self._given[0], "connection_pool", None), "connection_kwargs", {})
            host, port, db = kwargs.get("host", "?"), kwargs.get("port", 6379), kwargs.get("db", 0)
            base = f"redis://{host}:{port}/{db}" if "path" not in kwargs else f"unix://{kwargs['path']}?db={db}"
        else:
            parts = urlsplit(self._redis_url)
            base = _join(self._scheme, parts.netloc, parts.path, "")
            if redact:
                base = _redact_url(base)
            query.extend(parse_qsl(parts.query, keep_blank_values=True))
        if self.prefix != DEFAULT_PREFIX:
            query.append(("prefix", self.prefix))
        if self.lease != DEFAULT_LEASE:
            query.append(("lease", f"{self.lease:g}"))
        query.extend(self._common_query().items())
        if not query:
            return base
        return base + ("&" if "?" in base else "?") + urlencode(query, quote_via=quote)

    @classmethod
    def _from_parsed(cls, url: str, options: Mapping[str, str]) -> RedisLockManager:
        common_options(options, allowed=(*_OWN_OPTIONS, *_REDIS_OPTIONS))
        parts = urlsplit(url)
        return cls(_join(parts.scheme, parts.netloc, parts.path, urlencode(list(options.items()))))

    # ------------------------------------------------------------------ clients

    def _redis_kwargs(self, *, asynchronous: bool) -> dict[str, Any]:
        # A connect or a reply that never comes (server stopped, half-open connection) must
        # become a clear BackendUnavailable, not a hang: redis-py waits forever by default.
        # Every command txlock sends is a short script, so 30 s without a reply means the
        # server is gone. The URL's socket_connect_timeout / socket_timeout win. The pool
        # is sized to the gate (_Gate) that queues callers for its connections.
        kwargs: dict[str, Any] = {"socket_connect_timeout": 10, "socket_timeout": 30,
                                  "max_connections": self._max_connections}
        if self._cluster:
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
            kwargs["connection_class"] = _CONNECTIONS[self._scheme]
        return kwargs

    def _new_sync(self) -> Any:
        if self._cluster:
            return redis.cluster.RedisCluster.from_url(self._redis_url, **self._redis_kwargs(asynchronous=False))
        return redis.Redis.from_url(self._redis_url, **self._redis_kwargs(asynchronous=False))

    def _new_async(self) -> Any:
        if self._cluster:
            return redis.asyncio.cluster.RedisCluster.from_url(
                self._redis_url, **self._redis_kwargs(asynchronous=True)
            )
        return redis.asyncio.Redis.from_url(self._redis_url, **self._redis_kwargs(asynchronous=True))

    def _client(self) -> Any:
        client = self._sync
        if client is None:
            with self._mutex:
                if self._sync is None:
                    self._sync = self._new_sync()
                client = self._sync
        return client

    async def _aclient(self) -> Any:
        if self._given is not None:
            return self._given[1]
        loop = asyncio.get_running_loop()
        client = self._aclients.get(loop)
        if client is None:
            with self._mutex:
                client = self._aclients.get(loop)
                if client is None:
                    client = self._aclients[loop] = self._new_async()
                    closer = self._aclosers[loop] = _closer(client)
                else:
                    closer = None
            if closer is not None:
                await closer.__anext__()  # registers it with the loop's shutdown_asyncgens
        return client

    def _hub(self) -> _Hub:
        cached = self._hub_cache
        if cached is not None and cached[0] == _generation:
            return cached[1]
        if self._given is not None:
            given = self._given[0]
            ident: tuple[Any, ...] = ("client", id(given))

            def factory() -> Any:
                return given
        else:
            ident = ("url", self._redis_url)
            factory = self._new_sync
        with _hubs_lock:
            hub = _hubs.get(ident)
            if hub is None:
                hub = _hubs[ident] = _Hub(factory, self._display(), self._secret, self._cluster)
        self._hub_cache = (_generation, hub)
        return hub

    def _display(self) -> str:
        return getattr(self, "_where", None) or self._url(redact=True)

    def close(self) -> None:
        """Close this manager's connections (holds stay; the next call reconnects)."""
        if self._given is not None:
            return  # the caller's clients are the caller's to close
        with self._mutex:
            sync, self._sync = self._sync, None
            aclients, self._aclients = self._aclients, {}
            self._aclosers = {}
        if sync is not None:
            with contextlib.suppress(Exception):
                sync.close()
        for loop, client in aclients.items():
            _close_async_client(loop, client)

    async def aclose(self) -> None:
        """Async form of :meth:`close`."""
        if self._given is not None:
            return
        loop = asyncio.get_running_loop()
        with self._mutex:
            client = self._aclients.pop(loop, None)
            self._aclosers.pop(loop, None)
        if client is not None:
            await client.aclose()
        self.close()

    # ------------------------------------------------------------------ I/O (thin, translated)

    def _error(self, exc: BaseException) -> BackendError:
        return _translate(exc, self._display(), self._secret)

    def _eval(self, script: _Script, keys: Sequence[bytes], args: Sequence[Any]) -> Any:
        with self._gate.threads:
            try:
                return _eval_sync(self._client(), script, keys, args)
            except _DRIVER_ERRORS as exc:
                raise self._error(exc) from exc

    async def _aeval(self, script: _Script, keys: Sequence[bytes], args: Sequence[Any]) -> Any:
        if self._athread:
            return await asyncio.to_thread(self._eval, script, keys, args)
        async with self._gate.tasks():
            try:
                return await _within_budget(_eval_async(await self._aclient(), script, keys, args))
            except _DRIVER_ERRORS as exc:
                raise self._error(exc) from exc

    def _do(self, method: str, *args: Any) -> Any:
        with self._gate.threads:
            try:
                return getattr(self._client(), method)(*args)
            except _DRIVER_ERRORS as exc:
                raise self._error(exc) from exc

    async def _ado(self, method: str, *args: Any) -> Any:
        if self._athread:
            return await asyncio.to_thread(self._do, method, *args)
        async with self._gate.tasks():
            try:
                return await _within_budget(getattr(await self._aclient(), method)(*args))
            except _DRIVER_ERRORS as exc:
                raise self._error(exc) from exc

    def _ensure(self, state: _WaitState | None) -> None:
        if state is not None and not state.hub.ready.is_set():
            state.hub.ensure()

    async def _aensure(self, state: _WaitState | None) -> None:
        if state is not None and not state.hub.ready.is_set():
            await state.hub.aensure()

    # ------------------------------------------------------------------ request building / reply parsing

    def _keys(self, key: str) -> list[bytes]:
        base = self._prefix_b + b"{" + hashlib.blake2b(encode(key), digest_size=16).hexdigest().encode() + b"}"
        return [base + b"h", base + b"q", base + b"w", base + b"v"]

    def _track(self, kh: bytes, lease: Lease) -> Lease:
        """Put a process-bound hold under this process's heartbeat (or take it off)."""
        hub = self._hub()
        if lease.ttl is None:
            hub.keep(kh, str(lease.token).encode(), self._lease_ms)
        else:
            hub.drop(kh)
        return lease

    def _state(self, waiter: Waiter, kh: bytes, holder: str | None, ttl: float | None) -> _WaitState:
        state = waiter.data
        if not isinstance(state, _WaitState):
            state = self._hub().add(waiter, kh, holder, ttl)
        return state

    def _acquire_call(self, key: str, holder: str, ttl: float | None, waiter: Waiter | None) -> _Call | Lease:
        keys = self._keys(key)
        state = None
        if waiter is not None:
            state = self._state(waiter, keys[0], holder, ttl)
            if state.grant is not None:  # a release handed us the lock and told us so
                return self._grant_of(key, waiter, state, state.grant)
        args = [encode(holder), _ms(ttl), self._lease_ms, encode(key)]
        if state is not None:
            args += [state.wid, state.hub.channel]
        return _Call(keys, args, state)

    def _grant_of(self, key: str, waiter: Waiter, state: _WaitState, grant: Sequence[int]) -> Lease:
        state.hub.forget(state.wid)
        waiter.data = None
        assert state.holder is not None
        return self._track(state.kh, _lease(key, state.holder, state.ttl, *grant))

    def _acquired(self, key: str, holder: str, ttl: float | None, waiter: Waiter | None, call: _Call,
                  reply: Any) -> Lease | Busy:
        if reply[0] == 1:
            if call.state is not None and waiter is not None:
                call.state.hub.forget(call.state.wid)
                waiter.data = None
            return self._track(call.keys[0], _lease(key, holder, ttl, reply[1], reply[2], reply[3]))
        return Busy(None if reply[1] is None else decode(reply[1]), _retry(int(reply[2]), self.lease))

    def _released(self, keys: list[bytes], reply: Any) -> str | None:
        if reply == 0:
            self._hub().drop(keys[0])
            return None
        return decode(reply)

    def _extended(self, key: str, holder: str, ttl: float | None, keys: list[bytes], reply: Any) -> Lease | None:
        if reply is None:
            self._hub().drop(keys[0])
            return None
        return self._track(keys[0], _lease(key, holder, ttl, reply[1], reply[2], reply[3]))

    def _info(self, key: str, reply: Any) -> LockInfo | None:
        if reply is None:
            return None
        holder, token, acquired, ttl, pttl, now, waiters = reply
        expires = None if int(ttl) == 0 else (int(now) + max(int(pttl), 0)) / 1000
        return LockInfo(key, decode(holder), int(token), int(acquired) / 1000, expires, int(waiters))

    def _watch_call(self, key: str, waiter: Waiter | None) -> _Call:
        keys = self._keys(key)
        state = None if waiter is None else self._state(waiter, keys[0], None, None)
        return _Call(keys, ["" if state is None else state.entry, self._lease_ms, encode(key)], state)

    def _watched(self, reply: Any) -> Busy | None:
        return None if reply is None else Busy(decode(reply[0]), _retry(int(reply[1]), self.lease))

    def _withdraw_call(self, key: str, waiter: Waiter) -> _Call | Lease | None:
        state = waiter.data
        if not isinstance(state, _WaitState):
            return None
        if state.grant is not None:
            return self._grant_of(key, waiter, state, state.grant)
        state.hub.forget(state.wid)
        waiter.data = None
        wid = state.wid if state.holder is not None else ""
        return _Call(self._keys(key), [wid, state.entry, self._lease_ms, encode(key)], state)

    def _withdrawn(self, key: str, call: _Call, reply: Any) -> Lease | None:
        state = call.state
        if reply is None or state is None or state.holder is None:
            return None
        return self._track(state.kh, _lease(key, state.holder, state.ttl, reply[1], reply[2], max(int(reply[3]), 0)))

    def _listed(self, names: list[bytes], replies: list[Any], prefix: str | None) -> list[LockInfo]:
        now = time.time()
        out: list[LockInfo] = []
        for i in range(len(names)):
            (holder, token, acquired, ttl, raw), pttl, waiters = replies[3 * i : 3 * i + 3]
            if holder is None or token is None or raw is None or pttl == -2:
                continue
            key = decode(raw)
            if prefix is not None and not key.startswith(prefix):
                continue
            expires = None if int(ttl or 0) == 0 else now + max(int(pttl), 0) / 1000
            out.append(LockInfo(key, decode(holder), int(token), int(acquired or 0) / 1000, expires, int(waiters)))
        out.sort(key=lambda info: encode(info.key))
        return out

    _LIST_FIELDS = ("holder", "token", "at", "ttl", "key")

    def _queue_list(self, pipe: Any, names: list[bytes]) -> None:
        for name in names:
            pipe.hmget(name, self._LIST_FIELDS)
            pipe.pttl(name)
            pipe.zcard(name[:-1] + b"q")

    # ------------------------------------------------------------------ primitives (sync)

    def _try_acquire(self, key: str, holder: str, ttl: float | None, waiter: Waiter | None) -> Lease | Busy:
        call = self._acquire_call(key, holder, ttl, waiter)
        if isinstance(call, Lease):
            return call
        self._ensure(call.state)
        return self._acquired(key, holder, ttl, waiter, call, self._eval(_ACQUIRE, call.keys, call.args))

    def _release(self, key: str, holder: str) -> str | None:
        keys = self._keys(key)
        return self._released(keys, self._eval(_RELEASE, keys, [encode(holder), self._lease_ms, encode(key)]))

    def _extend(self, key: str, holder: str, token: int, ttl: float | None) -> Lease | None:
        keys = self._keys(key)
        reply = self._eval(_EXTEND, keys, [encode(holder), str(token), _ms(ttl), self._lease_ms])
        return self._extended(key, holder, ttl, keys, reply)

    def _holder(self, key: str) -> str | None:
        holder = self._do("hget", self._keys(key)[0], "holder")
        return None if holder is None else decode(holder)

    def _inspect(self, key: str) -> LockInfo | None:
        return self._info(key, self._eval(_INSPECT, self._keys(key), []))

    def _list(self, prefix: str | None) -> list[LockInfo]:
        with self._gate.threads:
            try:
                client = self._client()
                names = sorted(set(client.scan_iter(match=self._pattern, count=1000)))
                pipe = client.pipeline(transaction=False)
                self._queue_list(pipe, names)
                replies = pipe.execute() if names else []
            except _DRIVER_ERRORS as exc:
                raise self._error(exc) from exc
        return self._listed(names, replies, prefix)

    def _force_release(self, key: str) -> bool:
        keys = self._keys(key)
        self._hub().drop(keys[0])
        return bool(self._eval(_FORCE, keys, [self._lease_ms, encode(key)]))

    def _watch(self, key: str, waiter: Waiter | None) -> Busy | None:
        call = self._watch_call(key, waiter)
        self._ensure(call.state)
        return self._watched(self._eval(_WATCH, call.keys, call.args))

    def _withdraw(self, key: str, waiter: Waiter) -> Lease | None:
        call = self._withdraw_call(key, waiter)
        if not isinstance(call, _Call):
            return call
        return self._withdrawn(key, call, self._eval(_WITHDRAW, call.keys, call.args))

    # ------------------------------------------------------------------ primitives (async)

    async def _atry_acquire(self, key: str, holder: str, ttl: float | None, waiter: Waiter | None) -> Lease | Busy:
        call = self._acquire_call(key, holder, ttl, waiter)
        if isinstance(call, Lease):
            return call
        await self._aensure(call.state)
        return self._acquired(key, holder, ttl, waiter, call, await self._aeval(_ACQUIRE, call.keys, call.args))

    async def _arelease(self, key: str, holder: str) -> str | None:
        keys = self._keys(key)
        return self._released(keys, await self._aeval(_RELEASE, keys, [encode(holder), self._lease_ms, encode(key)]))

    async def _aextend(self, key: str, holder: str, token: int, ttl: float | None) -> Lease | None:
        keys = self._keys(key)
        reply = await self._aeval(_EXTEND, keys, [encode(holder), str(token), _ms(ttl), self._lease_ms])
        return self._extended(key, holder, ttl, keys, reply)

    async def _aholder(self, key: str) -> str | None:
        holder = await self._ado("hget", self._keys(key)[0], "holder")
        return None if holder is None else decode(holder)

    async def _ainspect(self, key: str) -> LockInfo | None:
        return self._info(key, await self._aeval(_INSPECT, self._keys(key), []))

    async def _alist(self, prefix: str | None) -> list[LockInfo]:
        if self._athread:
            return await asyncio.to_thread(self._list, prefix)
        async with self._gate.tasks():
            try:
                client = await self._aclient()
                names = sorted({name async for name in client.scan_iter(match=self._pattern, count=1000)})
                pipe = client.pipeline(transaction=False)
                self._queue_list(pipe, names)
                replies = await pipe.execute() if names else []
            except _DRIVER_ERRORS as exc:
                raise self._error(exc) from exc
        return self._listed(names, replies, prefix)

    async def _aforce_release(self, key: str) -> bool:
        keys = self._keys(key)
        self._hub().drop(keys[0])
        return bool(await self._aeval(_FORCE, keys, [self._lease_ms, encode(key)]))

    async def _awatch(self, key: str, waiter: Waiter | None) -> Busy | None:
        call = self._watch_call(key, waiter)
        await self._aensure(call.state)
        return self._watched(await self._aeval(_WATCH, call.keys, call.args))

    async def _awithdraw(self, key: str, waiter: Waiter) -> Lease | None:
        call = self._withdraw_call(key, waiter)
        if not isinstance(call, _Call):
            return call
        return self._withdrawn(key, call, await self._aeval(_WITHDRAW, call.keys, call.args))


def _redact_url(url: str) -> str:
    return redact(url)


def _join(scheme: str, netloc: str, path: str, query: str) -> str:
    """``urlunsplit`` that keeps ``//`` before an empty host (``unix:///path``)."""
    return f"{scheme}://{netloc}{path}" + (f"?{query}" if query else "")
