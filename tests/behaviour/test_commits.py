"""Commits never pass unfinished work: a slow record holds its partition's committed offset while later
records are done, and a dead letter the broker refuses holds only its own partition until it is delivered.

The tests hold records with events they control and read the committed offsets while they are held."""

from __future__ import annotations

import asyncio

from tests.behaviour.backends import Backend, order, run, scenario, until, until_committed
from toolkit.consumer import Middleware, original_record


class DeadLetterLog(Middleware):
    """Records each delivery attempt of a dead letter: ``(source offset, failures, delivered)``, in ``log``
    shared with the handler so the order of the two can be checked."""

    def __init__(self, log: list) -> None:
        self.log = log

    def on_dead_letter(self, record, dead_letter, outcome, error, failures, delay_s):
        self.log.append(("dead letter", record.partition(), record.offset(), failures, error is None))


def test_commits_never_pass_an_unfinished_record(backend: Backend) -> None:
    topic = backend.topic(partitions=2)
    backend.produce(topic, [order(f"p0-{i}") for i in range(5)], partition=0)
    backend.produce(topic, [order("p1-0")], partition=1)
    slow, other = asyncio.Event(), asyncio.Event()
    done: list[tuple[int, int]] = []

    async def handler(message):
        if (message.partition, message.offset) == (0, 0):
            await slow.wait()
        elif message.partition == 1:
            await other.wait()
        done.append((message.partition, message.offset))

    consumer = backend.consumer(ordering="UNORDERED", max_workers=4)
    consumer.register_handler(topic, handler)

    async def run_held() -> None:
        task = asyncio.create_task(consumer.start())
        try:
            await until(lambda: sorted(done) == [(0, 1), (0, 2), (0, 3), (0, 4)], "records 1-4 done before 0")
            # Partition 1's record is done after them: once its commit is seen, a commit was computed with
            # records 1-4 of partition 0 done and record 0 not; it must leave partition 0 uncommitted.
            other.set()
            assert await until_committed(backend, topic, {0: None, 1: 1}) == {0: None, 1: 1}
            slow.set()
            await asyncio.wait_for(task, 30)  # stop_when_idle
        finally:
            slow.set()
            other.set()
            if not task.done():
                await consumer.stop()
                await asyncio.wait_for(task, 30)

    scenario(run_held)
    assert sorted(done) == [(0, i) for i in range(5)] + [(1, 0)]
    assert backend.committed(topic, 2) == {0: 5, 1: 1}


def test_a_dead_letter_refused_three_times_is_delivered_once_and_then_committed(backend: Backend) -> None:
    topic = backend.topic()
    backend.produce(topic, [b"not json", order("m1")])
    backend.refuse_dead_letters(topic, times=3)
    log: list = []
    consumer = backend.consumer(middleware=[DeadLetterLog(log)])
    consumer.register_handler(topic, lambda message: log.append(("handled", message.header.message_id)))
    run(consumer)
    attempts = [entry for entry in log if entry[0] == "dead letter"]
    assert attempts == [
        ("dead letter", 0, 0, 1, False),
        ("dead letter", 0, 0, 2, False),
        ("dead letter", 0, 0, 3, False),
        ("dead letter", 0, 0, 3, True),
    ]
    assert ("handled", "m1") in log
    stats = consumer.stats[topic]
    assert stats.dead_letter_send_failures == 3 and stats.dead_lettered == {"decode": 1}
    (dl,) = backend.dead_letters(topic)
    assert original_record(dl.value).value == b"not json"
    assert backend.committed(topic) == {0: 2}


def test_a_refused_dead_letter_holds_only_its_partition_until_delivered(backend: Backend) -> None:
    topic = backend.topic(partitions=2)
    backend.produce(topic, [b"not json"], partition=0)
    backend.produce(topic, [order("p1-0")], partition=1)
    backend.refuse_dead_letters(topic)  # until healed
    log: list = []

    async def handler(message):
        log.append(("handled", message.header.message_id))

    consumer = backend.consumer(middleware=[DeadLetterLog(log)], stop_when_idle=False)
    consumer.register_handler(topic, handler)

    def refusals() -> int:
        return sum(1 for entry in log if entry[0] == "dead letter" and not entry[4])

    async def refused_then_healed() -> None:
        task = asyncio.create_task(consumer.start())
        try:
            await until(lambda: refusals() >= 1 and ("handled", "p1-0") in log, "a refusal; partition 1 going on")
            # From the first refusal on, partition 0 starts no new record; partition 1 goes on and commits
            await backend.call(backend.produce, topic, [order("p0-after")], partition=0)
            await backend.call(backend.produce, topic, [order("p1-1")], partition=1)
            await until(lambda: ("handled", "p1-1") in log, "partition 1's new record handled")
            assert await until_committed(backend, topic, {0: None, 1: 2}) == {0: None, 1: 2}
            await until(lambda: refusals() >= 2, "a second refusal")  # still refused, still held
            assert ("handled", "p0-after") not in log
            assert await backend.call(backend.dead_letters, topic) == []
            backend.heal()
            await until_committed(backend, topic, {0: 2, 1: 2})
        finally:
            await consumer.stop()
            await asyncio.wait_for(task, 30)

    scenario(refused_then_healed)
    delivered = log.index(("dead letter", 0, 0, refusals(), True))
    assert log.index(("handled", "p0-after")) > delivered
    assert consumer.stats[topic].dead_letter_send_failures == refusals()
    assert consumer.stats[topic].dead_lettered == {"decode": 1}
    (dl,) = backend.dead_letters(topic)
    assert original_record(dl.value).value == b"not json"
    assert backend.committed(topic, 2) == {0: 2, 1: 2}
