"""``lock_many()`` / ``alock_many()`` blocks: hold several keys at once, all or nothing.

A :class:`MultiLockContext` is a row of :class:`~txlock.LockContext` blocks, one per key,
all for one holder. It enters them one after the other in the *canonical order* of the
keys and leaves them in the reverse order, so every renewal, lease watch and lost-lock
report is the one a single ``lock()`` block has. What it adds:

* **one order for everyone**: the keys are deduplicated and sorted by code point, which is
  also the byte order of their UTF-8 encoding (``surrogatepass`` for lone surrogates), so a
  client in another language that sorts encoded keys agrees. Two blocks whose key sets
  overlap take their common keys in the same order, so neither can hold a key the other
  waits for while it waits for one the other holds: they cannot deadlock;
* **one deadline for all the keys**: ``timeout`` bounds the whole acquisition, not each
  key; a key reached when the deadline has passed still gets one attempt (so ``timeout=0``
  tries every key once);
* **all or nothing**: when a key cannot be had in time, or the acquisition is cancelled,
  interrupted or fails, every key already taken is released before the exception leaves
  the ``with`` / ``async with`` statement.

It is not atomic across keys: between the first grant and the last, another process can
see some of the keys held and others free. See docs/multi-key.md.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from txlock._context import LockContext, default_holder
from txlock._errors import ConfigurationError, LockTimeout
from txlock._flows import _complete
from txlock._types import Lease
from txlock._validate import check_hold_timeout, check_timeout

if TYPE_CHECKING:
    from txlock._manager import BaseLockManager

__all__ = ["MultiLockContext", "canonical_keys"]

_log = logging.getLogger("txlock.multi")


def canonical_keys(keys: object, manager: BaseLockManager) -> tuple[str, ...]:
    """The distinct keys of ``keys`` in the order every ``lock_many()`` block takes them.

    The order is that of code points (Python's ``str`` order), which is also the byte order
    of the keys' UTF-8 encoding with ``surrogatepass``. Raises ``TypeError`` for a single
    ``str`` (``lock_many("abc")`` would lock ``a``, ``b`` and ``c``), for bytes and for
    anything that is not an iterable of ``str``; :class:`~txlock.ConfigurationError` (a
    ``ValueError``) when there is no key at all; and what ``manager`` raises for a key it
    refuses (too long).
    """
    if isinstance(keys, str):
        raise TypeError(
            f"lock_many() takes a collection of keys, not a single str: {keys!r} would be read as its "
            f"characters; use lock({keys!r}) for one key, or lock_many([{keys!r}, ...])"
        )
    if isinstance(keys, (bytes, bytearray, memoryview)):
        raise TypeError(
            f"lock_many() takes a collection of str keys, not {type(keys).__name__}; decode the keys first"
        )
    try:
        items = iter(keys)  # type: ignore[call-overload]
    except TypeError:
        raise TypeError(
            f"lock_many() takes an iterable of str keys (a list, tuple or set), not {type(keys).__name__}: {keys!r}"
        ) from None
    unique = dict.fromkeys(manager._valid_key(key) for key in items)
    if not unique:
        raise ConfigurationError("lock_many() needs at least one key; it was given an empty collection")
    return tuple(sorted(unique))


class MultiLockContext:
    """What :meth:`BaseLockManager.lock_many` and :meth:`~BaseLockManager.alock_many` return.

    Use it with ``with`` (sync) or ``async with`` (async). It holds every key in ``keys``
    for one ``holder`` while the block runs. Inside the block:

    * ``leases`` maps each key to its current :class:`~txlock.Lease`, ``tokens`` each key to
      its fencing token, ``contexts`` each key to the :class:`~txlock.LockContext` that
      holds it;
    * ``lost`` turns ``True`` if the hold of any key ends before the block does
      (``lost_keys`` says which), and ``on_lost(lease)`` is called for each such key;
    * ``check()`` raises :class:`~txlock.LockLost` (naming a lost key) if one is lost;
    * ``valid_until`` is the earliest ``valid_until`` of the keys.

    Guarantees and limits:

    * The keys are deduplicated and taken one by one in their canonical order (``keys``,
      sorted by code point, the same as the byte order of their UTF-8 encoding), and
      released in the reverse order. Blocks whose key sets overlap never deadlock each
      other, whatever order their callers listed the keys in.
    * ``timeout`` is one deadline for the whole set: ``None`` waits forever (or the
      manager's ``acquire_timeout``), ``0`` tries each key once, ``T`` gives up T seconds
      after the block started; a key reached once the deadline has passed still gets one
      attempt. Giving up raises :class:`~txlock.LockTimeout` naming the key that could not
      be had.
    * All or nothing: on a timeout, a cancellation, ``KeyboardInterrupt`` or an error while
      acquiring, every key already taken is released before the exception propagates.
    * Not atomic: another process can see the keys being taken one by one (some held,
      others still free) and, on a timeout, released one by one.
    * With a ``ttl``, each key's lease is renewed in the background as in a ``lock()``
      block; if any key's hold is lost, :class:`~txlock.LockLost` is raised when the block
      exits (unless the body raised), after every key has been released.
    * Reentrant per holder, key by key, as ``lock()`` is: a key this holder already holds
      through another running block of this manager is joined, not acquired again.
    * One block at a time: the object can be used again after it exits, not while it runs.
    """

    def __init__(
        self,
        manager: BaseLockManager,
        keys: object,
        holder: str | None,
        timeout: float | None,
        ttl: float | None,
        on_lost: Callable[[Lease], object] | None,
    ) -> None:
        self.manager = manager
        #: The distinct keys, in the order they are taken.
        self.keys = canonical_keys(keys, manager)
        self.holder = default_holder() if holder is None else manager._valid_holder(holder)
        self.timeout = check_timeout(timeout, "timeout")
        self.ttl = check_hold_timeout(ttl, "ttl")
        self.on_lost = on_lost
        #: The key whose acquisition is under way; after an acquisition that failed (timed
        #: out, cancelled, interrupted), the key it failed on; ``None`` once every key is held.
        self.waiting_for: str | None = None
        self._blocks: list[LockContext] = []
        self._pending: LockContext | None = None
        self._busy = False
        self._inside = False
        self._wait: float | None = None

    def __repr__(self) -> str:
        if self._inside:
            state = "held, tokens " + ", ".join(str(block.token) for block in self._blocks)
            state += ", lost" if self.lost else ""
        elif self._busy:
            state = f"acquiring {self.waiting_for!r}" if self.waiting_for is not None else "releasing"
        elif self._blocks:
            state = "released" + (", lost" if self.lost else "")
        else:
            state = "not entered"
        keys = ", ".join(map(repr, self.keys))
        return f"<MultiLockContext keys=[{keys}] holder={self.holder!r} {state} on {self.manager!r}>"

    # ------------------------------------------------------------------ inside the block

    def _held(self) -> list[LockContext]:
        if not self._inside:
            raise RuntimeError(f"locks {list(self.keys)!r} are not held by this context")
        return self._blocks

    @property
    def contexts(self) -> dict[str, LockContext]:
        """The block holding each key, in canonical order (raises ``RuntimeError`` outside)."""
        return {block.key: block for block in self._held()}

    @property
    def leases(self) -> dict[str, Lease]:
        """The current lease of each key, in canonical order (raises ``RuntimeError`` outside)."""
        return {block.key: block.lease for block in self._held()}

    @property
    def tokens(self) -> dict[str, int]:
        """The fencing token of each key's current grant, in canonical order."""
        return {block.key: block.token for block in self._held()}

    @property
    def lost(self) -> bool:
        """``True`` once the hold of any key has ended before the block did (it stays set
        after the block exits)."""
        return any(block.lost for block in self._blocks)

    @property
    def lost_keys(self) -> tuple[str, ...]:
        """The keys whose hold ended before the block did, in canonical order."""
        return tuple(block.key for block in self._blocks if block.lost)

    @property
    def valid_until(self) -> float | None:
        """The earliest ``valid_until`` of the keys (see :attr:`txlock.LockContext.valid_until`):
        until when, on the ``time.monotonic()`` clock, every hold is surely valid; ``None``
        when every hold lasts as long as this process, and outside the block."""
        times = [block.valid_until for block in self._blocks if block.valid_until is not None]
        return min(times) if times and self._inside else None

    def check(self) -> None:
        """Raise :class:`~txlock.LockLost`, naming the first lost key, if any hold is lost."""
        for block in self._blocks:
            block.check()

    # The shared halves of enter and exit; the four dunders below only do the I/O.

    def _begin(self) -> float | None:
        """Start an acquisition; the deadline of the whole set (``time.monotonic()``)."""
        if self._busy:
            raise RuntimeError(
                "this lock_many() context is already in use; call lock_many() again for another block"
            )
        self._busy = True
        self._blocks = []
        self._pending = None
        self._wait = self.manager._default_timeout if self.timeout is None else self.timeout
        return None if self._wait is None else time.monotonic() + self._wait

    def _next(self, key: str, deadline: float | None) -> LockContext:
        """The block for ``key``, with what is left of the deadline (at least one attempt)."""
        left = None if deadline is None else max(deadline - time.monotonic(), 0.0)
        block = LockContext(self.manager, key, self.holder, left, self.ttl, self._report)
        self._pending = block
        self.waiting_for = key
        return block

    def _took(self, block: LockContext) -> None:
        self._blocks.append(block)
        self._pending = None

    def _timed_out(self, key: str, error: LockTimeout) -> LockTimeout:
        return LockTimeout(key, self._wait, error.holder)

    def _entered(self) -> MultiLockContext:
        self.waiting_for = None
        self._inside = True
        return self

    def _report(self, lease: Lease) -> None:
        """A key's hold was lost (called by its block, from the background thread)."""
        if self.on_lost is not None:
            self.on_lost(lease)

    def _taken(self) -> list[LockContext]:
        """The blocks to leave after a failed enter, last taken first. The block being
        entered counts when its own enter completed (the exception came after it)."""
        blocks = list(self._blocks)
        pending, self._pending = self._pending, None
        if pending is not None and pending._hold is not None and pending not in blocks:
            blocks.append(pending)
        self._blocks = blocks
        return blocks[::-1]

    def _leaving(self) -> list[LockContext]:
        """The blocks to leave at exit, last taken first."""
        self._inside = False
        return self._blocks[::-1]

    def _end(self) -> None:
        self._inside = False
        self._busy = False

    def _unwound(self, cause: BaseException, errors: list[BaseException]) -> None:
        """After a failed enter left every block: raise what must replace ``cause`` (a
        cancellation or interrupt that came while releasing), log the rest."""
        self._end()
        for error in errors:
            if isinstance(error, Exception):
                _log.warning(
                    "lock_many(): releasing a key after a failed acquisition failed (its hold ends with "
                    "its ttl or this process): %s", error, exc_info=error,
                )
        for error in errors:
            if not isinstance(error, Exception):
                raise error from cause

    def _exited(self, errors: list[BaseException]) -> None:
        """After the exit left every block: raise the first error, a cancellation or interrupt
        first (a lost lock, a release that failed)."""
        self._end()
        for error in errors:
            if not isinstance(error, Exception):
                raise error
        if errors:
            raise errors[0]

    # ------------------------------------------------------------------ sync

    def __enter__(self) -> MultiLockContext:
        deadline = self._begin()
        try:
            for key in self.keys:
                block = self._next(key, deadline)
                try:
                    block.__enter__()
                except LockTimeout as error:
                    raise self._timed_out(key, error) from None
                self._took(block)
        except BaseException as cause:
            errors: list[BaseException] = []
            for block in self._taken():
                try:
                    block.__exit__(type(cause), cause, cause.__traceback__)
                except BaseException as error:  # release the others all the same
                    errors.append(error)
            self._unwound(cause, errors)
            raise
        return self._entered()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        errors: list[BaseException] = []
        for block in self._leaving():
            try:
                block.__exit__(exc_type, exc, tb)
            except BaseException as error:  # release the others all the same
                errors.append(error)
        self._exited(errors)

    # ------------------------------------------------------------------ async

    async def __aenter__(self) -> MultiLockContext:
        deadline = self._begin()
        try:
            for key in self.keys:
                block = self._next(key, deadline)
                try:
                    await block.__aenter__()
                except LockTimeout as error:
                    raise self._timed_out(key, error) from None
                self._took(block)
        except BaseException as cause:
            errors: list[BaseException] = []
            for block in self._taken():
                await self._aleave(block, type(cause), cause, cause.__traceback__, errors)
            self._unwound(cause, errors)
            raise
        return self._entered()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object
    ) -> None:
        errors: list[BaseException] = []
        for block in self._leaving():
            await self._aleave(block, exc_type, exc, tb, errors)
        self._exited(errors)

    async def _aleave(
        self,
        block: LockContext,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: object,
        errors: list[BaseException],
    ) -> None:
        """Leave ``block``, adding what it raised to ``errors``. Where a release can suspend
        (a store with I/O), it runs to the end even if the task is cancelled meanwhile, and
        the cancellation is added after it: a key is never left held because the task was
        cancelled while the keys before it were being released."""
        try:
            if self.manager._local_attempts:  # the release never suspends: nothing can interrupt it
                await block.__aexit__(exc_type, exc, tb)
            else:
                _, deferred = await _complete(block.__aexit__(exc_type, exc, tb))
                if deferred is not None:
                    errors.append(deferred)
        except BaseException as error:  # release the others all the same
            errors.append(error)
