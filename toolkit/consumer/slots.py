"""Handler slots: a counting semaphore for the event loop whose uncontended acquire is a plain call.

``asyncio.Semaphore.acquire`` is a coroutine: every record would pay for creating and running one even
when a slot is free, which is nearly always. Here the free case is :meth:`WorkerSlots.try_acquire`, and
only a caller that finds every slot taken awaits :meth:`WorkerSlots.acquire`. Slots are handed to
waiters first come, first served; a waiter that is cancelled takes no slot (or gives back the one it was
handed)."""

from __future__ import annotations

import asyncio
from collections import deque


class WorkerSlots:
    """``size`` slots, used from one event loop only (not thread-safe, like asyncio's primitives)."""

    __slots__ = ("free", "waiting")

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError(f"size must be at least 1, got {size}")
        self.free = size
        self.waiting: deque[asyncio.Future[None]] = deque()  # (truthy: someone waits for a slot)

    def try_acquire(self) -> bool:
        """Take a slot if one is free and nobody is queued for it (no await, no coroutine)."""
        if self.free > 0 and not self.waiting:
            self.free -= 1
            return True
        return False

    async def acquire(self) -> None:
        """Take a slot, waiting in line for one when none is free."""
        if self.try_acquire():
            return
        waiter = asyncio.get_running_loop().create_future()
        self.waiting.append(waiter)
        try:
            await waiter  # release() hands its slot straight to us
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.release()  # handed a slot, then cancelled before running: pass it on
            elif waiter in self.waiting:  # (a release may have dropped it already)
                self.waiting.remove(waiter)  # only live waiters stay in line
            raise

    def release(self) -> None:
        """Give a slot back: to the first waiter still waiting, else to the pool."""
        waiters = self.waiting
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self.free += 1
