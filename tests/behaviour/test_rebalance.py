"""Rebalances: a second member of the group joins mid-run and takes partitions; what the first gives up is
drained and committed first, so every record is handled (once) and the commits reach the end."""

from __future__ import annotations

import asyncio
from collections import Counter

from tests.behaviour.backends import Backend, order, scenario, until, until_committed

PARTITIONS = 4


def test_a_member_joining_mid_run_takes_partitions_and_nothing_is_lost(backend: Backend) -> None:
    topic = backend.topic("rebalance", partitions=PARTITIONS)
    produced = Counter[int]()
    handled = Counter[str]()
    by_member: dict[str, set[int]] = {"a": set(), "b": set()}

    def produce_round(per_partition: int) -> None:
        for p in range(PARTITIONS):
            ids = [f"{p}-{produced[p] + i}" for i in range(per_partition)]
            backend.produce(topic, [order(i) for i in ids], partition=p)
            produced[p] += per_partition

    def member(name: str):
        consumer = backend.consumer(stop_when_idle=False, max_workers=4)

        async def handler(message):
            await asyncio.sleep(0.001)
            handled[message.header.message_id] += 1
            by_member[name].add(message.partition)

        consumer.register_handler(topic, handler)
        return consumer

    def all_handled() -> bool:
        return len(handled) == sum(produced.values())

    produce_round(5)
    a, b = member("a"), member("b")

    async def join_mid_run() -> None:
        task_a = asyncio.create_task(a.start())
        task_b = None
        try:
            await until(all_handled, "the first member handling every partition")
            task_b = asyncio.create_task(b.start())
            for _ in range(300):  # a bound for "never": the join takes a rebalance (seconds on Kafka)
                if by_member["b"]:
                    break
                await backend.call(produce_round, 1)
                await asyncio.sleep(0.1)
            assert by_member["b"], "the second member never got a record"
            await backend.call(produce_round, 5)
            await until(all_handled, "every record handled")
            await until_committed(backend, topic, {p: produced[p] for p in range(PARTITIONS)})
        finally:
            for consumer, task in ((b, task_b), (a, task_a)):
                if task is not None:
                    await consumer.stop()
                    await asyncio.wait_for(task, 30)

    scenario(join_mid_run, timeout_s=120)
    expected = {f"{p}-{i}" for p in range(PARTITIONS) for i in range(produced[p])}
    assert set(handled) == expected  # none lost
    assert [k for k, count in handled.items() if count > 1] == []  # drained and committed on revoke
    assert by_member["a"] == set(range(PARTITIONS)) and by_member["b"] < set(range(PARTITIONS))
    assert backend.committed(topic, PARTITIONS) == {p: produced[p] for p in range(PARTITIONS)}
    assert backend.dead_letters(topic) == []
