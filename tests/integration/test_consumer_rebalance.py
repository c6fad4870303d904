"""Rebalances mid-stream: a second member joins and the first drains and commits the partitions it gives up, so
every message is handled and none twice; partitions paused by a full window come back fetching."""

from __future__ import annotations

import asyncio
import json
import logging
from collections import Counter
from pathlib import Path

from toolkit.consumer import KafkaConsumer
from toolkit.consumer.testing import committed, envelope_bytes, produce
from toolkit.registry import LocalFolderRegistry

ROOT = Path(__file__).resolve().parents[2]
BODY = json.loads((ROOT / "schemas/orders/samples/1/valid/required-fields-only.json").read_text())
PARTITIONS, PER_PARTITION = 4, 150


def test_revoked_partitions_are_drained_and_committed(kafka_bootstrap, make_topic, group_id):
    topic = make_topic("rebalance", partitions=PARTITIONS)
    for p in range(PARTITIONS):
        produce(
            kafka_bootstrap,
            topic,
            [envelope_bytes("orders", 1, BODY, message_id=f"{p}-{i}") for i in range(PER_PARTITION)],
            partition=p,
        )
    handled: Counter[str] = Counter()
    by_member: dict[str, set[int]] = {"a": set(), "b": set()}

    def member(name: str, **kw) -> KafkaConsumer:
        consumer = KafkaConsumer(
            bootstrap_servers=kafka_bootstrap,
            group_id=group_id,
            registry=LocalFolderRegistry(ROOT / "schemas"),
            max_workers=4,
            commit_interval_s=10.0,
            **kw,
        )  # only revoke/shutdown commits matter here

        async def handler(message):
            # "a" is slow so that it cannot drain the topic alone while "b" joins (on a loaded machine the
            # rebalance can take seconds); "b" is fast.
            await asyncio.sleep(0.03 if name == "a" else 0.002)
            handled[message.header.message_id] += 1
            by_member[name].add(message.partition)

        consumer.register_handler(topic, handler)
        return consumer

    async def scenario():
        a = member("a", kafka_config={"session.timeout.ms": 10000, "heartbeat.interval.ms": 500})
        task_a = asyncio.create_task(a.start())
        while sum(handled.values()) < 100:
            await asyncio.sleep(0.02)
        b = member("b", stop_when_idle=True)
        await asyncio.wait_for(b.start(), 90)  # b ends once its partitions are drained
        while sum(handled.values()) < PARTITIONS * PER_PARTITION:
            await asyncio.sleep(0.1)
            if task_a.done():
                break
        await a.stop()
        await asyncio.wait_for(task_a, 30)

    asyncio.run(asyncio.wait_for(scenario(), 150))
    assert len(handled) == PARTITIONS * PER_PARTITION
    assert max(handled.values()) == 1, [k for k, v in handled.items() if v > 1][:10]
    assert by_member["b"], "the second member never got a partition"
    expected = {p: PER_PARTITION for p in range(PARTITIONS)}
    assert committed(kafka_bootstrap, group_id, topic, PARTITIONS) == expected


def test_partitions_paused_by_a_full_window_resume_after_a_rebalance(kafka_bootstrap, make_topic, group_id, caplog):
    """librdkafka keeps a partition's pause across revoke (or loss, as after a broker outage longer than the
    session) and re-assignment. Member "a" has its whole window in flight (fetching paused) when "b" joins and
    takes a partition; "b" leaves and the partition comes back. "a" must then fetch every partition again:
    before the poll thread resumed what it gave up and what it was assigned, the consumer sat idle forever."""
    topic = make_topic("rebalance-paused", partitions=2)
    per_partition = 120
    for p in range(2):
        produce(
            kafka_bootstrap,
            topic,
            [envelope_bytes("orders", 1, BODY, message_id=f"{p}-{i}") for i in range(per_partition)],
            partition=p,
        )
    handled: Counter[str] = Counter()
    gate = asyncio.Event()  # a's handlers wait here: its in-flight window fills and fetching pauses
    b_got_records = asyncio.Event()

    async def slow(message):
        await gate.wait()
        handled[message.header.message_id] += 1

    async def fast(message):
        handled[message.header.message_id] += 1
        b_got_records.set()

    def member(handler, **kw) -> KafkaConsumer:
        consumer = KafkaConsumer(
            bootstrap_servers=kafka_bootstrap,
            group_id=group_id,
            registry=LocalFolderRegistry(ROOT / "schemas"),
            max_workers=2,
            max_poll_records=10,
            commit_interval_s=0.2,
            **kw,
        )
        consumer.register_handler(topic, handler)
        return consumer

    def window_paused() -> bool:
        return any("in-flight window full: fetching paused" in r.getMessage() for r in caplog.records)

    async def scenario():
        a = member(
            slow,
            max_in_flight=20,
            shutdown_timeout_s=1.0,  # a blocked handler is given up quickly
            kafka_config={"session.timeout.ms": 10000, "heartbeat.interval.ms": 500},
        )
        task_a = asyncio.create_task(a.start())
        while not window_paused():
            assert not task_a.done(), "a stopped"
            await asyncio.sleep(0.05)
        b = member(fast)
        task_b = asyncio.create_task(b.start())
        await asyncio.wait_for(b_got_records.wait(), 60)  # the rebalance gave b a partition
        gate.set()
        await b.stop()  # its partition goes back to a
        await asyncio.wait_for(task_b, 30)
        for _ in range(600):  # a bound for "never", not a speed requirement
            if len(handled) == 2 * per_partition or task_a.done():
                break
            await asyncio.sleep(0.1)
        await a.stop()
        await asyncio.wait_for(task_a, 30)

    caplog.set_level(logging.DEBUG, logger="toolkit.consumer")
    asyncio.run(asyncio.wait_for(scenario(), 150))
    missing = {p: sum(1 for i in range(per_partition) if f"{p}-{i}" not in handled) for p in range(2)}
    assert missing == {0: 0, 1: 0}, f"records never handled, per partition: {missing}"
    assert committed(kafka_bootstrap, group_id, topic, 2) == {0: per_partition, 1: per_partition}
