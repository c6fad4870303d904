"""A second member joins mid-stream: the first drains and commits the partitions it gives up, so every
message is handled and none twice."""

from __future__ import annotations

import asyncio
import json
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
        produce(kafka_bootstrap, topic, [envelope_bytes("orders", 1, BODY, message_id=f"{p}-{i}")
                                         for i in range(PER_PARTITION)], partition=p)
    handled: Counter[str] = Counter()
    by_member: dict[str, set[int]] = {"a": set(), "b": set()}

    def member(name: str, **kw) -> KafkaConsumer:
        consumer = KafkaConsumer(bootstrap_servers=kafka_bootstrap, group_id=group_id,
                                 registry=LocalFolderRegistry(ROOT / "schemas"), max_workers=4,
                                 commit_interval_s=10.0, **kw)  # only revoke/shutdown commits matter here

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
