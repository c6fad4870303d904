"""Order and concurrency: PARTITION keeps each partition's order while partitions run at once, KEY keeps each
key's order while keys run at once, and a record waiting out a retry backoff holds back only its own
partition.

"Run at once" is proven, not timed: the first records of the lanes meet at a barrier that only concurrent
handlers can pass (a lane run after the other breaks it, and its record is dead-lettered)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections import defaultdict
from collections.abc import Hashable

from tests.behaviour.backends import Backend, order, run, scenario, until, until_committed
from toolkit.consumer import Retry


class Lanes:
    """A plain ``def`` handler (so it runs in the handler threads) that records the order of the records of
    each lane and how many of one lane ran at once; the first record of each lane waits at ``barrier``."""

    def __init__(self, lane_of, barrier: threading.Barrier) -> None:
        self.lane_of = lane_of
        self.barrier = barrier
        self.lock = threading.Lock()
        self.order: dict[Hashable, list[int]] = defaultdict(list)
        self.running: dict[Hashable, int] = defaultdict(int)
        self.most_at_once: dict[Hashable, int] = defaultdict(int)

    def __call__(self, message) -> None:
        lane = self.lane_of(message)
        with self.lock:
            first = not self.order[lane]
            self.order[lane].append(message.offset)
            self.running[lane] += 1
            self.most_at_once[lane] = max(self.most_at_once[lane], self.running[lane])
        try:
            if first:
                self.barrier.wait()  # BrokenBarrierError (a dead letter) unless the lanes run at once
            time.sleep(0.002 * (message.offset % 3))  # later records of a lane are often quicker
        finally:
            with self.lock:
                self.running[lane] -= 1


def test_partition_ordering_keeps_each_partition_in_order_with_several_workers(backend: Backend) -> None:
    topic = backend.topic(partitions=2)
    for p in range(2):
        backend.produce(topic, [order(f"{p}-{i}") for i in range(8)], partition=p)
    handler = Lanes(lambda m: m.partition, threading.Barrier(2, timeout=10))
    consumer = backend.consumer(max_workers=4, ordering="PARTITION")
    consumer.register_handler(topic, handler)
    run(consumer)
    assert dict(handler.order) == {0: list(range(8)), 1: list(range(8))}
    assert dict(handler.most_at_once) == {0: 1, 1: 1}
    assert backend.dead_letters(topic) == []
    assert backend.committed(topic, 2) == {0: 8, 1: 8}


def test_key_ordering_keeps_each_key_in_order_and_runs_keys_at_once(backend: Backend) -> None:
    topic = backend.topic()
    keys = [b"a", b"b", b"c"]
    backend.produce(topic, [(keys[i % 3], order(f"m{i}")) for i in range(12)], partition=0)
    handler = Lanes(lambda m: m.key, threading.Barrier(3, timeout=10))
    consumer = backend.consumer(max_workers=3, ordering="KEY")
    consumer.register_handler(topic, handler)
    run(consumer)
    assert dict(handler.order) == {key: list(range(k, 12, 3)) for k, key in enumerate(keys)}
    assert dict(handler.most_at_once) == {key: 1 for key in keys}
    assert backend.dead_letters(topic) == []
    assert backend.committed(topic) == {0: 12}


def test_a_retry_backoff_holds_back_only_its_own_partition(backend: Backend) -> None:
    topic = backend.topic(partitions=2)
    backend.produce(topic, [order(f"p0-{i}") for i in range(3)], partition=0)
    backend.produce(topic, [order(f"p1-{i}") for i in range(4)], partition=1)
    seen: list[tuple[str, int]] = []

    async def handler(message):
        seen.append((message.header.message_id, message.attempt))
        if message.header.message_id == "p0-0":
            raise Retry("not before tomorrow", delay_s=3600)  # waits until the consumer stops

    consumer = backend.consumer(stop_when_idle=False)
    consumer.register_handler(topic, handler)

    async def first_run() -> None:
        task = asyncio.create_task(consumer.start())
        try:
            await until(
                lambda: ("p0-0", 1) in seen and len([s for s in seen if s[0].startswith("p1")]) == 4,
                "partition 1 handled while partition 0 waits",
            )
            await until_committed(backend, topic, {0: None, 1: 4})
        finally:
            await consumer.stop()
            await asyncio.wait_for(task, 30)

    scenario(first_run)
    # Partition 0 waited behind its first record: nothing after it was handled, nothing committed
    assert [s for s in seen if s[0].startswith("p0")] == [("p0-0", 1)]
    assert consumer.stats[topic].retried == 1
    assert backend.committed(topic, 2) == {0: None, 1: 4}

    # The next run (the record redelivered, attempt 1 again) finishes partition 0
    seen.clear()
    again = backend.consumer()
    again.register_handler(topic, lambda message: seen.append((message.header.message_id, message.attempt)))
    run(again)
    assert seen == [("p0-0", 1), ("p0-1", 1), ("p0-2", 1)]
    assert backend.committed(topic, 2) == {0: 3, 1: 4}
    assert backend.dead_letters(topic) == []
