"""The connection queue Redis and PostgreSQL share (txlock._slots): arrival order, patient
requests first, a deadline that gives up with NotSent, and no slot lost to a cancellation."""

from __future__ import annotations

import asyncio
import threading

import pytest

import txlock
from _support import aeventually, eventually
from txlock._deadline import DeadlineScope, PatientScope
from txlock._slots import Slots, TaskSlots, ThreadSlots


def _slots(size: int) -> Slots:
    return Slots(size, lambda budget: txlock.NotSent(f"no slot within {budget}"))


def test_threads_are_served_in_arrival_order_with_patient_requests_first() -> None:
    slots = _slots(1)
    slots.enter()  # the one slot is taken
    order: list[str] = []
    done = threading.Event()

    def request(name: str, patient: bool) -> None:
        if patient:
            with PatientScope():
                slots.enter()
        else:
            slots.enter()
        order.append(name)
        slots.leave()
        if len(order) == 4:
            done.set()

    threads = []
    for index, (name, patient) in enumerate([("n1", False), ("n2", False), ("p1", True), ("n3", False)]):
        t = threading.Thread(target=request, args=(name, patient))
        t.start()
        threads.append(t)
        eventually(lambda i=index: len(slots.threads.first) + len(slots.threads.normal) == i + 1, what=f"{name} queued")
    slots.leave()
    assert done.wait(20)
    for t in threads:
        t.join(20)
    assert order == ["p1", "n1", "n2", "n3"]
    assert slots.threads.free == 1  # every slot came back


def test_a_thread_with_a_deadline_gives_up_with_not_sent_and_leaves_the_queue() -> None:
    slots = _slots(1)
    slots.enter()
    with DeadlineScope(0.0, margin=0.1), pytest.raises(txlock.NotSent, match="no slot"):
        slots.enter()  # waits half the margin, then gives up
    assert not slots.threads.normal
    slots.leave()
    assert slots.threads.free == 1


def test_a_thread_granted_as_it_gives_up_keeps_the_slot() -> None:
    slots = ThreadSlots(1)
    assert slots.acquire(None, False)
    result: list[bool] = []

    def waiter() -> None:
        result.append(slots.acquire(30.0, False))

    t = threading.Thread(target=waiter)
    t.start()
    eventually(lambda: len(slots.normal) == 1, what="the waiter to queue")
    slots.release()  # handed straight to the waiter
    t.join(20)
    assert result == [True]
    assert slots.free == 0  # the waiter has it; nothing went back to the pool
    slots.release()
    assert slots.free == 1


def test_tasks_are_served_in_arrival_order_with_patient_requests_first() -> None:
    async def scenario() -> None:
        slots = _slots(1)
        await slots.aenter()
        order: list[str] = []

        async def request(name: str, patient: bool) -> None:
            if patient:
                with PatientScope():
                    taken = await slots.aenter()
            else:
                taken = await slots.aenter()
            order.append(name)
            taken.release()

        tasks = []
        for index, (name, patient) in enumerate([("n1", False), ("n2", False), ("p1", True), ("n3", False)]):
            tasks.append(asyncio.create_task(request(name, patient)))
            await aeventually(lambda i=index: len(slots.tasks().first) + len(slots.tasks().normal) == i + 1)
        slots.tasks().release()
        await asyncio.wait_for(asyncio.gather(*tasks), 20)
        assert order == ["p1", "n1", "n2", "n3"]
        assert slots.tasks().free == 1

    asyncio.run(scenario())


def test_a_thousand_cancelled_tasks_lose_no_slot() -> None:
    async def scenario() -> None:
        slots = TaskSlots(2)
        inside = 0
        most = 0

        async def request() -> None:
            nonlocal inside, most
            assert await slots.acquire(None, False)
            try:
                inside += 1
                most = max(most, inside)
                await asyncio.sleep(0)
            finally:
                inside -= 1
                slots.release()

        tasks = [asyncio.create_task(request()) for _ in range(1000)]
        await asyncio.sleep(0)  # let them all queue (a step of the loop, not an ordering)
        for index, task in enumerate(tasks):
            if index % 3 == 0:
                task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        assert most <= 2
        assert slots.free == 2 and not slots.normal and not slots.first

    asyncio.run(scenario())


def test_a_task_with_a_deadline_gives_up_with_not_sent() -> None:
    async def scenario() -> None:
        slots = _slots(1)
        taken = await slots.aenter()
        with DeadlineScope(0.0, margin=0.1), pytest.raises(txlock.NotSent):
            await slots.aenter()
        assert not slots.tasks().normal
        taken.release()
        assert slots.tasks().free == 1

    asyncio.run(scenario())


def test_a_task_that_times_out_after_a_release_skipped_it_leaves_cleanly() -> None:
    # A release drops the futures that are done from the head of the queue, a cancelled
    # one included; the task whose wait was cancelled must not trip over its absence.
    async def scenario() -> None:
        slots = TaskSlots(1)
        assert await slots.acquire(None, False)
        gone = asyncio.create_task(slots.acquire(30.0, False))
        await aeventually(lambda: len(slots.normal) == 1)
        gone.cancel()  # its future is cancelled; the task has not run its cleanup yet
        slots.release()  # skips (and drops) the cancelled future, frees the slot
        with pytest.raises(asyncio.CancelledError):
            await gone
        assert slots.free == 1 and not slots.normal

    asyncio.run(scenario())
