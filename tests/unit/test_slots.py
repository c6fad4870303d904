"""WorkerSlots: free slots are taken without awaiting; waiters are served in order; cancellation never
leaks or loses a slot."""

from __future__ import annotations

import asyncio

import pytest

from toolkit.consumer.slots import WorkerSlots


def test_free_slots_are_taken_without_awaiting_and_given_back():
    slots = WorkerSlots(2)
    assert slots.try_acquire() and slots.try_acquire()
    assert not slots.try_acquire() and slots.free == 0
    slots.release()
    assert slots.free == 1 and slots.try_acquire()


def test_size_must_be_positive():
    with pytest.raises(ValueError, match="at least 1"):
        WorkerSlots(0)


def test_waiters_get_released_slots_first_come_first_served():
    async def scenario():
        slots = WorkerSlots(1)
        assert slots.try_acquire()
        order: list[str] = []

        async def worker(name):
            await slots.acquire()
            order.append(name)

        tasks = [asyncio.create_task(worker(name)) for name in "abc"]
        await asyncio.sleep(0)
        assert order == [] and not slots.try_acquire()  # queued waiters come before newcomers
        for _ in "abc":
            slots.release()
            await asyncio.sleep(0)
        await asyncio.gather(*tasks)
        return order, slots.free

    order, free = asyncio.run(scenario())
    assert order == ["a", "b", "c"] and free == 0  # each release went to a waiter, none to the pool


def test_a_cancelled_waiter_takes_no_slot():
    async def scenario():
        slots = WorkerSlots(1)
        assert slots.try_acquire()
        waiter = asyncio.create_task(slots.acquire())
        await asyncio.sleep(0)
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        slots.release()
        return slots.free, slots.try_acquire()

    assert asyncio.run(scenario()) == (1, True)


def test_a_waiter_cancelled_after_being_handed_a_slot_passes_it_on():
    async def scenario():
        slots = WorkerSlots(1)
        assert slots.try_acquire()
        first = asyncio.create_task(slots.acquire())
        second = asyncio.create_task(slots.acquire())
        await asyncio.sleep(0)
        slots.release()  # handed to `first` ...
        first.cancel()  # ... which is cancelled before it runs
        with pytest.raises(asyncio.CancelledError):
            await first
        await asyncio.wait_for(second, 1)  # the slot went on to `second`
        slots.release()
        return slots.free

    assert asyncio.run(scenario()) == 1
