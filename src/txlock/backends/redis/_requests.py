"""The work a primitive hands the transport, and the pure functions that read the replies.

Four kinds of work, each executed by the manager's one ``_exec`` (sync) and one ``_aexec``
(async):

* :class:`ScriptCall`: a Lua script on a lock's keys (EVALSHA, falling back to EVAL);
* :class:`Command`: one plain command (``HGET``);
* :class:`Listing`: ``SCAN`` for every hold, then one pipeline reading them all;
* :class:`Confirmed`: a script that grants or renews, then (with ``wait_replicas``) the
  replicas' confirmation of what it granted.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NamedTuple, TypeAlias

from txlock._types import Lease, LockInfo
from txlock._validate import decode, encode
from txlock.backends.redis._scripts import CONFIRM, REVOKE, Script

if TYPE_CHECKING:
    from txlock.backends.redis._hub import Hub, WaitState

__all__ = [
    "Command",
    "Confirmed",
    "Listing",
    "ScriptCall",
    "Work",
    "glob_escape",
    "granted_token",
    "hold_left",
    "hold_ms",
    "lease_of",
    "listed",
    "lock_info",
    "queue_listing",
    "retry_after",
]


class ScriptCall(NamedTuple):
    """Run ``script`` on ``keys`` with ``args``.

    With ``waiting``, the script may queue that waiter (or watcher) in Redis: this process's
    wake-up subscription must be ready first, or a release published before it would be
    lost.
    """

    script: Script
    keys: list[bytes]
    args: list[Any]
    waiting: WaitState | None = None

    def hub_to_wait_for(self) -> Hub | None:
        """The hub whose subscription must be ready before this call runs, or ``None``."""
        waiting = self.waiting
        if waiting is None or waiting.hub.ready.is_set():
            return None
        return waiting.hub

    def evalsha(self) -> tuple[Any, ...]:
        """The ``EVALSHA`` command of this call (``eval()`` when the server lacks the script)."""
        return ("EVALSHA", self.script.sha, len(self.keys), *self.keys, *self.args)

    def eval(self) -> tuple[Any, ...]:
        """The ``EVAL`` command of this call, carrying the script's source."""
        return ("EVAL", self.script.source, len(self.keys), *self.keys, *self.args)


class Command(NamedTuple):
    """One plain command: ``name`` and its arguments."""

    name: str
    args: tuple[Any, ...]


class Listing(NamedTuple):
    """Every hold record whose Redis key matches ``pattern``: ``SCAN``, then one pipeline
    of ``HMGET``/``PTTL``/``ZCARD`` per record. The reply is ``(names, replies)``."""

    pattern: bytes


class Confirmed(NamedTuple):
    """Run ``call`` (a grant or a renewal); if it granted, have ``replicas`` replicas confirm it.

    The transport runs ``call``; when ``token_of`` finds a grant in its reply, it sends
    :meth:`confirm` and ``WAIT replicas <ms>`` in one pipeline, so on one connection: WAIT
    counts the replicas that have everything up to that connection's last write, the
    confirm script's write, made after the grant. Fewer replicas within ``timeout`` (or the
    call's deadline): a grant (``revoke`` set) is withdrawn by :meth:`withdraw`, a renewal is
    left as it is, and the call fails with ``BackendUnavailable``.
    """

    call: ScriptCall
    #: The token the call's reply granted or renewed, ``None`` when it granted nothing.
    token_of: Callable[[Any], int | None]
    holder: bytes
    replicas: int
    timeout: float
    #: ``(liveness ms, encoded key)`` to withdraw an unconfirmed grant; ``None`` for a renewal.
    revoke: tuple[int, bytes] | None
    #: What the call does, for the error message (``"the grant of 'k'"``).
    what: str

    def confirm(self, token: int) -> ScriptCall:
        """The write that WAIT then counts from."""
        return ScriptCall(CONFIRM, self.call.keys[:1], [self.holder, str(token)])

    def withdraw(self, token: int) -> ScriptCall:
        """Withdraw the grant ``token`` (a release by token: a later grant is left alone)."""
        assert self.revoke is not None
        return ScriptCall(REVOKE, self.call.keys, [self.holder, str(token), *self.revoke])


def granted_token(reply: Any) -> int | None:
    """The token of an acquire script's reply that granted (``{1, token, ...}``), else ``None``."""
    return int(reply[1]) if reply is not None and reply[0] == 1 else None


Work: TypeAlias = ScriptCall | Command | Listing | Confirmed

#: The fields of a hold record that ``list_locks`` reads.
LIST_FIELDS = ("holder", "token", "at", "ttl", "key")


def hold_ms(seconds: float | None) -> int:
    """A hold timeout in whole milliseconds (at least 1); ``0`` for a process-bound hold."""
    return 0 if seconds is None else max(1, math.ceil(seconds * 1000))


def hold_left(pttl_ms: int, liveness: float) -> float:
    """Seconds until the hold a reply describes runs out (``liveness / 2`` when the server
    gave no time left): when a waiter's look should be repeated if nothing else happens."""
    return liveness / 2 if pttl_ms < 0 else pttl_ms / 1000


def retry_after(pttl_ms: int, liveness: float) -> float:
    """How long a caller that is not queued sleeps before looking again: the time left on
    the hold, at most half the liveness window."""
    return min(hold_left(pttl_ms, liveness), liveness / 2)


def lease_of(key: str, holder: str, ttl: float | None, token: int, now_ms: int, life_ms: int) -> Lease:
    """The lease a script's grant reply describes."""
    expires = None if ttl is None else (now_ms + life_ms) / 1000
    return Lease(key, holder, int(token), expires, ttl)


def lock_info(key: str, reply: Any) -> LockInfo | None:
    """Read the inspect script's reply."""
    if reply is None:
        return None
    holder, token, acquired, ttl, pttl, now, waiters = reply
    expires = None if int(ttl) == 0 else (int(now) + max(int(pttl), 0)) / 1000
    return LockInfo(key, decode(holder), int(token), int(acquired) / 1000, expires, int(waiters))


def glob_escape(data: bytes) -> bytes:
    """``data`` matched literally in a ``SCAN MATCH`` pattern."""
    out = bytearray()
    for byte in data:
        if byte in b"*?[]\\":
            out += b"\\"
        out.append(byte)
    return bytes(out)


def queue_listing(pipe: Any, names: list[bytes]) -> None:
    """Queue the reads of ``names`` (hold records) on ``pipe``."""
    for name in names:
        pipe.hmget(name, LIST_FIELDS)
        pipe.pttl(name)
        pipe.zcard(name[:-1] + b"q")


def listed(names: list[bytes], replies: list[Any], prefix: str | None) -> list[LockInfo]:
    """Read a :class:`Listing`'s reply: the live holds whose key starts with ``prefix``."""
    now = time.time()
    out: list[LockInfo] = []
    for index in range(len(names)):
        (holder, token, acquired, ttl, raw), pttl, waiters = replies[3 * index : 3 * index + 3]
        if holder is None or token is None or raw is None or pttl == -2:
            continue
        key = decode(raw)
        if prefix is not None and not key.startswith(prefix):
            continue
        expires = None if int(ttl or 0) == 0 else now + max(int(pttl), 0) / 1000
        out.append(LockInfo(key, decode(holder), int(token), int(acquired or 0) / 1000, expires, int(waiters)))
    out.sort(key=lambda info: encode(info.key))
    return out
