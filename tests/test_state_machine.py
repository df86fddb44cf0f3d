"""A Hypothesis state machine comparing each backend with a small reference model.

Rules: acquire (one attempt) / release / re-acquire / force-release / expire. Where the
backend accepts an injected clock, expiry is driven by it; elsewhere holds are untimed or
long and the expire rule is left out.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

import txlock

KEYS = st.sampled_from(["a", "b", "a/b", "\0", "ключ"])
HOLDERS = st.sampled_from(["h1", "h2", "h3"])


@dataclass
class Hold:
    holder: str
    token: int
    expires: float | None


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def machine_for(url: str) -> type[RuleBasedStateMachine]:
    class LockMachine(RuleBasedStateMachine):
        def __init__(self) -> None:
            super().__init__()
            self.manager = txlock.from_url(url)
            self.clock: FakeClock | None = None
            if self.manager.capabilities.injectable_clock:
                self.clock = FakeClock()
                self.manager._set_clock(self.clock)  # type: ignore[attr-defined]
            self.ns = uuid.uuid4().hex[:8] + ":"
            self.model: dict[str, Hold] = {}
            self.last_token: dict[str, int] = {}

        def now(self) -> float:
            return self.clock.now if self.clock else 0.0

        def live(self, key: str) -> Hold | None:
            hold = self.model.get(key)
            if hold is not None and hold.expires is not None and hold.expires <= self.now():
                del self.model[key]
                return None
            return hold

        @initialize()
        def start(self) -> None:
            assert self.manager.list_locks(self.ns) == []

        @rule(key=KEYS, holder=HOLDERS, ttl=st.sampled_from([None, 5.0, 50.0]))
        def acquire(self, key: str, holder: str, ttl: float | None) -> None:
            if self.clock is None and ttl is not None:
                ttl = 3600.0
            lease = self.manager.acquire_lease(self.ns + key, holder, timeout=0, ttl=ttl)
            hold = self.live(key)
            if hold is None or hold.holder == holder:
                assert lease is not None
                if hold is None:
                    assert lease.token > self.last_token.get(key, 0)
                else:
                    assert lease.token == hold.token
                self.last_token[key] = lease.token
                self.model[key] = Hold(holder, lease.token, None if ttl is None else self.now() + ttl)
            else:
                assert lease is None

        @rule(key=KEYS, holder=HOLDERS)
        def release(self, key: str, holder: str) -> None:
            hold = self.live(key)
            if hold is not None and hold.holder != holder:
                with pytest.raises(ValueError, match="No lock held by"):
                    self.manager.release_lock(self.ns + key, holder)
            else:
                self.manager.release_lock(self.ns + key, holder)
                self.model.pop(key, None)

        @rule(key=KEYS)
        def force_release(self, key: str) -> None:
            assert self.manager.force_release(self.ns + key) == (self.live(key) is not None)
            self.model.pop(key, None)

        @precondition(lambda self: self.clock is not None)
        @rule(seconds=st.sampled_from([1.0, 4.9, 5.0, 20.0, 60.0]))
        def advance(self, seconds: float) -> None:
            assert self.clock is not None
            self.clock.now += seconds

        @invariant()
        def agrees_with_model(self) -> None:
            for key in ["a", "b", "a/b", "\0", "ключ"]:
                hold = self.live(key)
                assert self.manager.is_locked(self.ns + key) == (hold is not None), key
                for holder in ["h1", "h2", "h3"]:
                    expected = hold is not None and hold.holder == holder
                    assert self.manager.is_lock_holder(self.ns + key, holder) == expected
            listed = {i.key[len(self.ns):]: (i.holder, i.token) for i in self.manager.list_locks(self.ns)}
            for key in list(self.model):
                self.live(key)
            assert listed == {k: (h.holder, h.token) for k, h in self.model.items()}

        def teardown(self) -> None:
            for info in self.manager.list_locks(self.ns):
                self.manager.force_release(info.key)
            self.manager.close()

    return LockMachine


def test_backend_agrees_with_the_reference_model(url: str, backend: str) -> None:
    examples = 40 if backend == "memory" else 12
    machine = machine_for(url)
    machine.TestCase.settings = settings(
        max_examples=examples,
        stateful_step_count=25,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
        database=None,
    )
    machine.TestCase().runTest()
