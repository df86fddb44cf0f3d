"""``lock()`` / ``alock()`` blocks: hold a key for a ``with`` block, renew it, report its loss.

Blocks are reentrant per holder: the blocks of one (manager, key, holder) share one
:class:`_Hold`, which takes the lock when the first block enters and releases it when the
last one leaves. A background job of the process-wide scheduler renews a hold with a
``ttl``; a renewal that finds the grant gone marks every block of the hold lost.

A hold with a ``ttl`` is also valid only until a time this process can know without asking
the store: the moment the request that granted (or last renewed) it was sent, plus the ttl,
on the monotonic clock (``valid_until``). The store cannot have ended the hold before then,
and may end it any time after. If no renewal has moved that time on by
``valid_until - loss_margin(ttl)``, the lease watch declares the hold lost, whether or not
the renewal in flight ever returns (a network partition, a paused server): the owner learns
of the loss before anyone else can be granted the key.
"""

from __future__ import annotations

import functools
import os
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from txlock import _scheduler
from txlock._deadline import DeadlineScope
from txlock._errors import BackendError, LockLost, LockTimeout
from txlock._types import Lease
from txlock._validate import check_hold_timeout, check_timeout

if TYPE_CHECKING:
    from txlock._manager import BaseLockManager

__all__ = ["LOSS_MARGIN_FRACTION", "LOSS_MARGIN_MAX", "LockContext", "default_holder", "loss_margin"]

#: A ``lock()`` block's hold is declared lost this fraction of its ttl before the end of its
#: validity as this process knows it (``valid_until``), and at most :data:`LOSS_MARGIN_MAX`
#: seconds before. The margin covers the lease watch's own lateness (a busy process, a
#: callback that runs long) and the drift between this host's and the store's clocks over
#: one ttl (parts per million); it must stay well under the time between two renewals
#: (a third of the ttl).
LOSS_MARGIN_FRACTION = 0.1
LOSS_MARGIN_MAX = 1.0


def loss_margin(ttl: float) -> float:
    """Seconds before the end of its validity at which a hold of ``ttl`` is declared lost."""
    return min(ttl * LOSS_MARGIN_FRACTION, LOSS_MARGIN_MAX)


def default_holder() -> str:
    """A holder name unique to this call: ``host:pid:random``."""
    import socket
    import uuid

    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:12]}"


class _Hold:
    """One hold shared by the nested (or concurrent) blocks of one holder on one key.

    ``blocks`` are the blocks inside it or entering it; the store is released when the last
    leaves. A lost hold marks them all.
    """

    __slots__ = ("blocks", "guard", "job", "lease", "lost", "valid_until", "watch")

    def __init__(self) -> None:
        self.lease: Lease | None = None
        self.lost = False
        self.job: _scheduler.Job | None = None
        self.watch: _scheduler.Job | None = None
        #: For a hold with a ttl: the monotonic time until which it is surely valid.
        self.valid_until: float | None = None
        self.blocks: list[LockContext] = []
        # Held by a renewal in flight; the lease watch never takes it (it must not wait for
        # a renewal stuck in a partition): its transitions happen under ``_holds_mutex``.
        self.guard = threading.Lock()

    def gone(self) -> bool:
        """``True`` once the hold is lost (read again: another thread may have changed it)."""
        return self.lost

    def lose(self) -> tuple[Lease, list[LockContext]] | None:
        """Mark the hold lost (call with ``_holds_mutex`` held); the lease and the blocks to
        tell, or ``None`` when it was already lost or is over."""
        if self.lost or self.lease is None or not self.blocks:
            return None
        self.lost = True
        return self.lease, list(self.blocks)


#: The holds of the ``lock()`` / ``alock()`` blocks running in this process, by manager
#: object, key and holder. An entry lives only while one of its blocks does (the blocks
#: reference the manager, so its ``id`` cannot be reused meanwhile).
_holds: dict[tuple[int, str, str], _Hold] = {}
_holds_mutex = threading.Lock()


def _reset_holds_mutex() -> None:
    global _holds_mutex
    _holds_mutex = threading.Lock()  # another thread may have held it at fork time


os.register_at_fork(after_in_child=_reset_holds_mutex)


class LockContext:
    """What :meth:`BaseLockManager.lock` and :meth:`~BaseLockManager.alock` return.

    Use it with ``with`` (sync) or ``async with`` (async). Inside the block:

    * ``lease`` is the current :class:`~txlock.Lease` (its ``token`` is the fencing token);
    * ``lost`` turns ``True`` if the hold ends before the block does;
    * ``check()`` raises :class:`~txlock.LockLost` if it has;
    * ``nested`` is ``True`` when the block joined a hold another block already had.

    Blocks are reentrant per holder: a block for a key and holder that this manager already
    holds through another running block (nested in it, or in another thread or task) joins
    that hold instead of acquiring again. Such a block takes no time, shares the outer
    lease and token, and its ``timeout`` and ``ttl`` are not used; the store is released
    when the last of the blocks exits.
    """

    def __init__(
        self,
        manager: BaseLockManager,
        key: str,
        holder: str | None,
        timeout: float | None,
        ttl: float | None,
        on_lost: Callable[[Lease], object] | None,
    ) -> None:
        self.manager = manager
        self.key = manager._valid_key(key)
        self.holder = default_holder() if holder is None else manager._valid_holder(holder)
        self.timeout = check_timeout(timeout, "timeout")
        self.ttl = check_hold_timeout(ttl, "ttl")
        self.on_lost = on_lost
        self.lost = False
        self.nested = False
        self._hold: _Hold | None = None

    def __repr__(self) -> str:
        if self._hold is None:
            state = "not entered"
        elif self.lost:
            state = "lost"
        elif self._hold.lease is None:
            state = "acquiring"
        else:
            state = f"held, token {self._hold.lease.token}" + (", nested" if self.nested else "")
        return f"<LockContext key={self.key!r} holder={self.holder!r} {state} on {self.manager!r}>"

    @property
    def lease(self) -> Lease:
        """The lease held by the block (raises ``RuntimeError`` outside the block)."""
        hold = self._hold
        if hold is None or hold.lease is None:
            raise RuntimeError(f"lock {self.key!r} is not held by this context")
        return hold.lease

    @property
    def token(self) -> int:
        """The fencing token of the current grant."""
        return self.lease.token

    @property
    def valid_until(self) -> float | None:
        """Until when the hold is surely valid, as a ``time.monotonic()`` reading: when the
        request that granted or last renewed it was sent, plus the ttl. For a hold without a
        ttl on a store that keeps it alive by a heartbeat (Redis, PostgreSQL): the later of its
        grant and the last heartbeat that went through, plus the store's ``liveness``. ``None``
        for a hold that lasts as long as this process whatever the store does (memory, file,
        SQLite) and outside the block. The block is reported lost ``loss_margin`` seconds
        (a tenth of the window, at most 1 s) before this time unless it moved on."""
        hold = self._hold
        return None if hold is None else hold.valid_until

    def check(self) -> None:
        """Raise :class:`~txlock.LockLost` if the hold has been lost."""
        if self.lost:
            raise LockLost(self.key, self.holder, "it expired or was released while the block ran")

    # The shared halves of enter and exit; the four dunders below only do the I/O.

    def _join(self) -> bool:
        """Take part in this holder's hold on the key; ``True`` if it is already held."""
        if self._hold is not None:
            raise RuntimeError(
                f"this lock({self.key!r}) context is already in use; call lock() again for a nested block"
            )
        ident = (id(self.manager), self.key, self.holder)
        with _holds_mutex:
            hold = _holds.get(ident)
            if hold is None or hold.lost:
                hold = _holds[ident] = _Hold()
            hold.blocks.append(self)
            self._hold = hold
            self.lost = False
            self.nested = hold.lease is not None
            return self.nested

    def _stale(self, sent: float) -> bool:
        """``True`` when an acquire sent at ``sent`` took so long (it waited) that its grant
        must be renewed before the block starts, to know until when it is valid."""
        return self.ttl is not None and time.monotonic() - sent > self.ttl / 3

    def _anchored(self, new: Lease | None) -> Lease:
        """The lease of a renewal made right after a long acquire (see :meth:`_stale`)."""
        if new is None:
            raise LockLost(self.key, self.holder, "it expired before the block could start")
        return new

    def _entered(self, lease: Lease, sent: float) -> LockContext:
        hold = self._hold
        assert hold is not None
        if self.ttl is None:
            hold.lease = lease  # no renewal job to race with (unless another block started one)
            if hold.watch is None:
                self._watch_process_hold(hold, sent)
            if hold.job is None:
                return self
        with hold.guard:
            hold.lease = lease
            if self.ttl is not None and hold.job is None:
                ttl = self.ttl
                hold.valid_until = sent + ttl
                renew = functools.partial(self._renew, self.manager, hold, ttl)
                hold.job = _scheduler.schedule(renew, ttl / 3, name=f"renew {self.key!r}")
                watch = functools.partial(self._watch, self.manager, hold, loss_margin(ttl), None)
                first = max(hold.valid_until - loss_margin(ttl) - time.monotonic(), 0.0)
                hold.watch = _scheduler.watch(watch, first, name=f"lease watch {self.key!r}")
        return self

    def _watch_process_hold(self, hold: _Hold, sent: float) -> None:
        """Watch a hold without ttl on a store that keeps it alive by a heartbeat: it is
        lost if no heartbeat gets through for the store's liveness window."""
        valid_until = self.manager._process_hold_valid_until(sent)
        if valid_until is None:
            return  # it lasts as long as this process
        margin = loss_margin(valid_until - sent)
        hold.valid_until = valid_until
        watch = functools.partial(self._watch, self.manager, hold, margin, sent)
        first = max(valid_until - margin - time.monotonic(), 0.0)
        hold.watch = _scheduler.watch(watch, first, name=f"liveness watch {self.key!r}")

    def _timeout_error(self) -> LockTimeout:
        return LockTimeout(self.key, self.timeout if self.timeout is not None else self.manager._default_timeout)

    def _drop(self, hold: _Hold) -> bool:
        """Leave the hold; ``True`` if this was its last block (then the store is released)."""
        with _holds_mutex:
            hold.blocks.remove(self)
            if hold.blocks:
                return False
            ident = (id(self.manager), self.key, self.holder)
            if _holds.get(ident) is hold:
                del _holds[ident]
            return hold.lease is not None

    @staticmethod
    def _renew(manager: BaseLockManager, hold: _Hold, ttl: float) -> bool:
        with hold.guard:
            lease, valid_until = hold.lease, hold.valid_until
            if lease is None or valid_until is None or hold.lost or not hold.blocks:
                return False
            sent = time.monotonic()
            left = valid_until - loss_margin(ttl) - sent
            if left <= 0:
                return False  # too late: the lease watch declares the loss
            try:
                # A renewal must end by the time the hold is declared lost, not run into the
                # next owner's lease: a hard deadline, no margin.
                with DeadlineScope(left, margin=0.0):
                    new = manager._call(manager._extend(lease.key, lease.holder, lease.token, ttl))
            except BackendError as exc:  # the scheduler logs it; the next round tries again
                manager._emitter.simple("renewal_failed", lease.key, lease.holder, lease.token, error=exc)
                raise
            late = False
            lost: tuple[Lease, list[LockContext]] | None = None
            with _holds_mutex:
                if new is None:
                    lost = hold.lose()
                else:
                    late = hold.gone()  # given up by the lease watch meanwhile
                    if not late:
                        hold.lease, hold.valid_until = new, sent + ttl
            if late:
                # The lease watch gave the hold up while this renewal was in flight; it went
                # through after all, so end it now rather than leave it to its ttl.
                manager._call(manager._release(lease.key, lease.holder))
                return False
            if new is not None:
                manager._emitter.simple("renewed", lease.key, lease.holder, new.token)
                return True
        if lost is not None:
            LockContext._report_lost(manager, *lost)
        return False

    @staticmethod
    def _watch(manager: BaseLockManager, hold: _Hold, margin: float, granted: float | None) -> float | bool:
        """The lease watch of a hold: the seconds until its next look, or ``False`` when done.

        ``granted`` is when the request that granted a hold without ttl was sent (its validity
        then follows the store's heartbeats); ``None`` for a hold with a ttl (its renewals move
        ``valid_until``)."""
        with _holds_mutex:
            if granted is not None and not hold.lost:
                hold.valid_until = manager._process_hold_valid_until(granted)
            if hold.lost or not hold.blocks or hold.valid_until is None:
                return False
            left = hold.valid_until - margin - time.monotonic()
            if left > 0:
                return left
            lost = hold.lose()
        if lost is not None:
            LockContext._report_lost(manager, *lost)
        return False

    @staticmethod
    def _report_lost(manager: BaseLockManager, lease: Lease, blocks: list[LockContext]) -> None:
        manager._emitter.simple("lost", lease.key, lease.holder, lease.token)
        for block in blocks:
            block.lost = True
        for block in blocks:
            if block.on_lost is not None:
                block.on_lost(lease)

    def _leaving(self) -> bool:
        """Leave the hold; ``True`` if the store must be released (the last block, not lost)."""
        hold = self._hold
        assert hold is not None
        if not self._drop(hold):
            return False
        if hold.watch is not None:
            hold.watch.cancel()
            hold.watch = None
        job = hold.job
        if job is None:
            return not hold.lost  # nothing renews it, so nothing else can change it
        job.cancel()
        hold.job = None
        with hold.guard:  # a renewal in flight finishes first
            return not hold.lost

    def _left(self, other: str | None, failed: bool, released: bool) -> None:
        """After the block: ``released`` when it released the store (the last block), and
        ``other`` the holder found there instead (the hold was lost)."""
        hold, self._hold = self._hold, None
        if released:
            self.manager._block_released(self.key, self.holder, other)
        if other is not None or (hold is not None and hold.lost):
            self.lost = True
        if self.lost and not failed:
            self.check()

    def __enter__(self) -> LockContext:
        if self._join():
            return self
        manager = self.manager
        granted = False
        try:
            sent = time.monotonic()
            lease = manager.acquire_lease(self.key, self.holder, self.timeout, self.ttl)
            if lease is None:
                raise self._timeout_error()
            granted = True
            if self._stale(sent):
                sent = time.monotonic()
                lease = self._anchored(manager._call(manager._extend(self.key, self.holder, lease.token, self.ttl)))
        except BaseException:
            # Another block of this holder may have been granted meanwhile and left.
            release = self._leaving() or granted
            other = manager._call(manager._release(self.key, self.holder)) if release else None
            self._left(other, True, release)
            raise
        return self._entered(lease, sent)

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        release = self._leaving()
        other = self.manager._call(self.manager._release(self.key, self.holder)) if release else None
        self._left(other, exc_type is not None, release)

    async def __aenter__(self) -> LockContext:
        if self._join():
            return self
        manager = self.manager
        granted = False
        try:
            sent = time.monotonic()
            lease = await manager.aacquire_lease(self.key, self.holder, self.timeout, self.ttl)
            if lease is None:
                raise self._timeout_error()
            granted = True
            if self._stale(sent):
                sent = time.monotonic()
                renewal = manager._extend(self.key, self.holder, lease.token, self.ttl)
                lease = self._anchored(await manager._acall(renewal))
        except BaseException:
            release = self._leaving() or granted
            other = await manager._acall(manager._release(self.key, self.holder)) if release else None
            self._left(other, True, release)
            raise
        return self._entered(lease, sent)

    async def __aexit__(self, exc_type: object, exc: object, tb: object) -> None:
        release = self._leaving()
        other = await self.manager._acall(self.manager._release(self.key, self.holder)) if release else None
        self._left(other, exc_type is not None, release)
