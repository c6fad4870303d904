"""Brokers fail under a consumer: the leader of a busy partition SIGKILLed mid-stream, and a rolling restart
of all three nodes. Records keep arriving (acks=all, replication factor 3, min.insync.replicas=2) and the
consumer (``KafkaConsumer``, in this process) keeps reading; at the end every acknowledged record was
handled, nothing was dead-lettered (a broker going away is an outage to wait out, never a bad record), and
the group's committed offsets are the log end of every partition.
"""

from __future__ import annotations

import asyncio
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, TopicPartition

from tests.cluster.conftest import Cluster, SteadyProducer
from tests.kafka_checks import records_in
from toolkit.consumer import KafkaConsumer
from toolkit.consumer.testing import committed
from toolkit.registry import LocalFolderRegistry

ROOT = Path(__file__).resolve().parents[2]
PARTITIONS = 3
RATE = 300  # records a second while the brokers fail
SETTLE_TIMEOUT_S = 180.0


def _ends(bootstrap: str, topic: str) -> dict[int, int]:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "epistle-cluster-ends"})
    try:
        return {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in range(PARTITIONS)}
    finally:
        consumer.close()


def _consume_through(
    cluster: Cluster, topic: str, group: str, disrupt: Callable[[Counter[int]], None]
) -> tuple[SteadyProducer, Counter[str]]:
    """Produce and consume ``topic`` while ``disrupt`` (run in a thread, given the count of records handled
    per partition) fails brokers; then stop producing, wait until the group has committed the log end, and
    stop the consumer."""
    handled: Counter[str] = Counter()
    per_partition: Counter[int] = Counter()
    producer = SteadyProducer(cluster.bootstrap, topic, RATE)
    consumer = KafkaConsumer(
        bootstrap_servers=cluster.bootstrap,
        group_id=group,
        topics=[topic],
        registry=LocalFolderRegistry(ROOT / "schemas"),
        max_workers=4,
        commit_interval_s=0.2,
    )

    async def record(message) -> None:
        handled[message.header.message_id] += 1
        per_partition[message.partition] += 1

    consumer.register_handler(topic, record)
    failure: list[BaseException] = []

    def disruption() -> None:
        try:
            disrupt(per_partition)
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            failure.append(exc)

    async def scenario() -> None:
        task = asyncio.create_task(consumer.start())
        producer.start()
        await _until(lambda: sum(handled.values()) >= RATE, task, "the consumer handled nothing")
        thread = threading.Thread(target=disruption, daemon=True)
        thread.start()
        await _until(lambda: not thread.is_alive(), task, "the disruption did not end")
        await asyncio.get_running_loop().run_in_executor(None, producer.finish)
        ends = _ends(cluster.bootstrap, topic)
        await _until(lambda: committed(cluster.bootstrap, group, topic, PARTITIONS) == ends, task, "commits stay short")
        await consumer.stop()
        await asyncio.wait_for(task, 60)

    try:
        asyncio.run(asyncio.wait_for(scenario(), 900))
    finally:
        producer.halt()  # (a no-op after finish): a failed test leaves no producer running
    if failure:
        raise failure[0]
    return producer, handled


async def _until(done: Callable[[], Any], task: asyncio.Task, what: str, timeout_s: float = 600) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if task.done():
            task.result()  # raises what the consumer failed with
            raise AssertionError(f"the consumer stopped early ({what})")
        if await asyncio.get_running_loop().run_in_executor(None, done):
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"{what} after {timeout_s:.0f}s")


def _check(cluster: Cluster, topic: str, group: str, producer: SteadyProducer, handled: Counter[str]) -> None:
    missing = producer.delivered - set(handled)
    assert not missing, f"{len(missing)} acknowledged records never handled, e.g. {sorted(missing)[:5]}"
    assert set(handled) <= producer.delivered
    assert records_in(cluster.bootstrap, f"{topic}.dlq") == 0, "a broker failure was dead-lettered"
    ends = _ends(cluster.bootstrap, topic)
    assert committed(cluster.bootstrap, group, topic, PARTITIONS) == ends
    # The log itself, record by record: it holds what was acknowledged and nothing else, and every copy in it
    # was handled. librdkafka's idempotent producer may write a record twice when it has to start a new
    # producer epoch (a request that timed out while a node stopped): that is the producer's doing, and the
    # consumer must then handle both copies, which is what is checked.
    in_log = _keys_in_log(cluster.bootstrap, topic, ends)
    lost = producer.delivered - set(in_log)
    assert not lost, f"{len(lost)} acknowledged records not in the log, e.g. {sorted(lost)[:5]}"
    unknown = set(in_log) - producer.delivered
    assert not unknown, f"{len(unknown)} records in the log never acknowledged, e.g. {sorted(unknown)[:5]}"
    short = {key: (n, handled[key]) for key, n in in_log.items() if handled[key] < n}
    assert not short, f"copies in the log handled fewer times (in log, handled): {dict(list(short.items())[:5])}"
    twice = sum(1 for n in handled.values() if n > 1)
    written_twice = sum(1 for n in in_log.values() if n > 1)
    print(
        f"\n{len(producer.delivered)} produced and handled; written twice by the producer: {written_twice}; "
        f"handled more than once: {twice}; ends {ends}"
    )


def _keys_in_log(bootstrap: str, topic: str, ends: dict[int, int]) -> Counter[str]:
    """How many times each key is in ``topic``, read from the start of every partition to ``ends``."""
    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": "epistle-cluster-log", "enable.auto.commit": False}
    )
    keys: Counter[str] = Counter()
    try:
        consumer.assign([TopicPartition(topic, p, 0) for p in range(PARTITIONS)])
        left = {p: end for p, end in ends.items() if end > 0}
        deadline = time.monotonic() + 120
        while left:
            assert time.monotonic() < deadline, f"the log could not be read to its end: {left} left"
            for message in consumer.consume(1000, timeout=1):
                assert message.error() is None, message.error()
                keys[message.key().decode()] += 1
                if message.offset() + 1 >= left.get(message.partition(), 0):
                    left.pop(message.partition(), None)
        return keys
    finally:
        consumer.close()


def test_leader_of_a_busy_partition_killed_mid_stream(healthy: Cluster, topic_name: Callable[[str], str]) -> None:
    topic, group = topic_name("leader-kill"), topic_name("group")
    healthy.create_topic(topic, PARTITIONS)
    killed: list[int] = []

    def kill_the_leader(handled: Counter[int]) -> None:
        node = healthy.leader(topic, 0)
        healthy.stop(node, signal.SIGKILL)
        killed.append(node)
        seen = handled[0]
        # The controller fences the node once its heartbeats stop (broker.session.timeout.ms, 9 s), then
        # another replica in sync leads partition 0 and its records flow again.
        deadline = time.monotonic() + 120
        while healthy.leader(topic, 0) in (node, -1) or handled[0] < seen + RATE:
            assert time.monotonic() < deadline, f"partition 0 still stuck after its leader was killed: {handled}"
            time.sleep(0.5)
        healthy.up()  # the node comes back and catches up while records keep flowing
        time.sleep(5)

    producer, handled = _consume_through(healthy, topic, group, kill_the_leader)
    _check(healthy, topic, group, producer, handled)
    print(f"killed node {killed}")


def test_rolling_restart_of_all_three_brokers(healthy: Cluster, topic_name: Callable[[str], str]) -> None:
    topic, group = topic_name("rolling"), topic_name("group")
    healthy.create_topic(topic, PARTITIONS)

    def roll(handled: Counter[int]) -> None:
        for node in (1, 2, 3):
            seen = sum(handled.values())
            marks = [time.monotonic()]
            healthy.stop(node, signal.SIGTERM)  # a controlled shutdown: leadership moves first
            marks.append(time.monotonic())
            healthy.up()
            marks.append(time.monotonic())
            healthy.wait_fully_replicated()  # as an operator would before the next node
            marks.append(time.monotonic())
            stop_s, up_s, sync_s = (b - a for a, b in zip(marks, marks[1:], strict=False))
            print(f"\nnode {node}: stopped in {stop_s:.1f}s, up in {up_s:.1f}s, in sync {sync_s:.1f}s later")
            deadline = time.monotonic() + 120
            while sum(handled.values()) < seen + RATE:
                assert time.monotonic() < deadline, f"no progress across the restart of node {node}"
                time.sleep(0.2)

    producer, handled = _consume_through(healthy, topic, group, roll)
    _check(healthy, topic, group, producer, handled)
