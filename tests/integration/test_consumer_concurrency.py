"""max_workers across partitions, slow and fast handlers mixed: order within a partition holds and the
committed offset never passes an unfinished message; retries of one partition do not block another."""

from __future__ import annotations

import asyncio
import itertools
import json
from pathlib import Path

from toolkit.consumer import KafkaConsumer, OrderingMode, RetryPolicy
from toolkit.consumer.testing import committed, envelope_bytes, produce
from toolkit.registry import LocalFolderRegistry

ROOT = Path(__file__).resolve().parents[2]
BODY = json.loads((ROOT / "schemas/orders/samples/1/valid/required-fields-only.json").read_text())
PARTITIONS = 4
PER_PARTITION = 40


def order(message_id: str) -> bytes:
    return envelope_bytes("orders", 1, BODY, message_id=message_id)


def fill(kafka_bootstrap, topic):
    for p in range(PARTITIONS):
        produce(
            kafka_bootstrap,
            topic,
            [envelope_bytes("orders", 1, BODY, message_id=f"{p}-{i}") for i in range(PER_PARTITION)],
            partition=p,
        )


def consumer_for(kafka_bootstrap, group_id, **kw):
    return KafkaConsumer(
        bootstrap_servers=kafka_bootstrap,
        group_id=group_id,
        registry=LocalFolderRegistry(ROOT / "schemas"),
        stop_when_idle=kw.pop("idle", True),
        commit_interval_s=0.05,
        retry=kw.pop("retry", RetryPolicy(3, 0.05, 0.1)),
        **kw,
    )


def test_commits_never_pass_unfinished_with_slow_and_fast_handlers(kafka_bootstrap, make_topic, group_id):
    topic = make_topic("conc", partitions=PARTITIONS)
    fill(kafka_bootstrap, topic)
    finished: set[tuple[int, int]] = set()
    running = 0
    peak = 0
    violations = []
    order: dict[int, list[int]] = {p: [] for p in range(PARTITIONS)}

    async def handler(message):
        nonlocal running, peak
        key = (message.partition, message.offset)
        order[message.partition].append(message.offset)
        running += 1
        peak = max(peak, running)
        # partition 0 is slow, others fast; every 7th message is extra slow
        await asyncio.sleep(0.05 if message.partition == 0 else (0.03 if message.offset % 7 == 0 else 0.001))
        running -= 1
        finished.add(key)

    consumer = consumer_for(kafka_bootstrap, group_id, max_workers=PARTITIONS)
    consumer.register_handler(topic, handler)

    async def watch_commits():
        # The committed offset of a partition must never be above an unfinished offset.
        while True:
            offsets = await asyncio.to_thread(committed, kafka_bootstrap, group_id, topic, PARTITIONS)
            snapshot = set(finished)
            for p, offset in offsets.items():
                if offset > 0 and any((p, o) not in snapshot for o in range(offset)):
                    violations.append((p, offset))
            await asyncio.sleep(0.05)

    async def scenario():
        watcher = asyncio.create_task(watch_commits())
        try:
            await asyncio.wait_for(consumer.start(), 120)
        finally:
            watcher.cancel()

    asyncio.run(scenario())
    assert violations == []
    assert all(order[p] == list(range(PER_PARTITION)) for p in range(PARTITIONS))  # PARTITION ordering
    assert peak > 1  # partitions really ran concurrently
    expected = {p: PER_PARTITION for p in range(PARTITIONS)}
    assert committed(kafka_bootstrap, group_id, topic, PARTITIONS) == expected


def test_retry_backoff_of_one_partition_does_not_block_others(kafka_bootstrap, make_topic, group_id):
    topic = make_topic("conc", partitions=2)
    produce(kafka_bootstrap, topic, [order(f"a{i}") for i in range(5)], partition=0)
    produce(kafka_bootstrap, topic, [order(f"b{i}") for i in range(20)], partition=1)
    done_at: dict[str, int] = {}  # completion order (a counter), not wall time
    completions = itertools.count()
    attempts: dict[str, int] = {}

    def handler(message):  # a plain function, run in the worker pool
        mid = message.header.message_id
        attempts[mid] = message.attempt
        if mid == "a0" and message.attempt < 3:
            return False  # retried with backoff 1s, 1s
        done_at[mid] = next(completions)
        return True

    consumer = consumer_for(
        kafka_bootstrap, group_id, max_workers=2, retry=RetryPolicy(max_attempts=3, initial_s=1.0, max_s=1.0)
    )
    consumer.register_handler(topic, handler)
    asyncio.run(asyncio.wait_for(consumer.start(), 60))
    assert attempts["a0"] == 3
    # partition 1 finished while a0 waited for its backoff
    assert max(done_at[f"b{i}"] for i in range(20)) < done_at["a0"]
    assert all(done_at[f"a{i}"] >= done_at["a0"] for i in range(1, 5))  # order within partition 0 kept
    assert committed(kafka_bootstrap, group_id, topic, 2) == {0: 5, 1: 20}


def test_unordered_and_key_modes_finish_everything(kafka_bootstrap, make_topic, group_id):
    topic = make_topic("conc", partitions=1)
    produce(kafka_bootstrap, topic, [(f"k{i % 3}".encode(), order(f"m{i}")) for i in range(30)])
    for mode in (OrderingMode.KEY, OrderingMode.UNORDERED):
        seen: dict[bytes, list[int]] = {}

        async def handler(message, seen=seen):
            seen.setdefault(message.key, []).append(message.offset)
            await asyncio.sleep(0.01 if message.offset % 2 else 0.03)

        group = f"{group_id}-{mode.value}"
        consumer = consumer_for(kafka_bootstrap, group, max_workers=8, ordering=mode)
        consumer.register_handler(topic, handler)
        asyncio.run(asyncio.wait_for(consumer.start(), 60))
        assert sum(len(v) for v in seen.values()) == 30
        if mode is OrderingMode.KEY:
            assert all(offsets == sorted(offsets) for offsets in seen.values())
        assert committed(kafka_bootstrap, group, topic) == {0: 30}


def test_bounded_in_flight_window_pauses_fetching(kafka_bootstrap, make_topic, group_id):
    topic = make_topic("conc", partitions=1)
    produce(kafka_bootstrap, topic, [order(f"m{i}") for i in range(300)])
    peak_in_flight = 0
    consumer = consumer_for(kafka_bootstrap, group_id, max_in_flight=20, max_poll_records=10)

    async def handler(message):
        nonlocal peak_in_flight
        peak_in_flight = max(peak_in_flight, consumer.in_flight)

    consumer.register_handler(topic, handler)
    asyncio.run(asyncio.wait_for(consumer.start(), 60))
    assert consumer.stats[topic].processed == 300
    # a fetch already in progress can add one more batch after the window closes
    assert peak_in_flight <= 20 + 10
    assert committed(kafka_bootstrap, group_id, topic) == {0: 300}
