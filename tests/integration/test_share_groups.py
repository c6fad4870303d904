"""Share groups (KIP-932, ``mode="share"``) on the real broker (Kafka 4.2 or newer): each row of the outcomes
table as acknowledgements, the broker's delivery count and limit, several consumers on one partition, and a
consumer killed with SIGKILL whose acquired records come back to the others.

The group's delivery limit and acquisition lock are group configurations (``share.delivery.count.limit``,
``share.record.lock.duration.ms``), set here with the admin client before the consumers start; the broker
takes a lock of 15 s at the least.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from toolkit.consumer import BaseHandler, KafkaConsumer, RetryPolicy
from toolkit.consumer.handlers import DeadLetter
from toolkit.consumer.testing import envelope_bytes, produce, read_topic
from toolkit.errors import RegistryUnavailable, RetryableError
from toolkit.registry import LocalFolderRegistry

ROOT = Path(__file__).resolve().parents[2]
SCHEMAS = ROOT / "schemas"
ORDER = json.loads(sorted((SCHEMAS / "orders/samples/1/valid").glob("*.json"))[0].read_text())


# The broker hands out whole record batches (librdkafka 2.16 has no ``share.acquire.mode=record_limit``): records
# produced one a batch spread over the consumers record by record.
ONE_A_BATCH = {"batch.num.messages": 1, "linger.ms": 0}


def order(message_id: str) -> bytes:
    return envelope_bytes("orders", 1, ORDER, message_id=message_id)


def configure_group(admin: Any, group: str, **values: Any) -> None:
    """Set share-group configurations (``delivery_limit``, ``lock_ms``) and start it at the earliest offset."""
    from confluent_kafka.admin import AlterConfigOpType, ConfigEntry, ConfigResource, ResourceType

    names = {"delivery_limit": "share.delivery.count.limit", "lock_ms": "share.record.lock.duration.ms"}
    entries = [ConfigEntry("share.auto.offset.reset", "earliest", incremental_operation=AlterConfigOpType.SET)]
    entries += [
        ConfigEntry(names[name], str(value), incremental_operation=AlterConfigOpType.SET)
        for name, value in values.items()
    ]
    resource = ConfigResource(ResourceType.GROUP, group, incremental_configs=entries)
    admin.incremental_alter_configs([resource])[resource].result(timeout=30)


@pytest.fixture(scope="module", autouse=True)
def share_coordinator_loaded(kafka_bootstrap: str) -> None:
    """On a fresh broker the first share group creates and loads the share coordinator's state topic
    (``__share_group_state``); acknowledgements that arrive while it loads are refused (INVALID_REQUEST) and
    their records delivered again, at least once as the contract says, but these tests count deliveries
    exactly. So first one share group round trip (a record acknowledged and committed) must succeed."""
    from confluent_kafka import AcknowledgeType, Producer, ShareConsumer
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    topic = f"share-warm-up-{uuid.uuid4().hex[:8]}"
    admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])[topic].result(timeout=30)
    producer = Producer({"bootstrap.servers": kafka_bootstrap})
    producer.produce(topic, b"warm-up")
    producer.flush(30)
    deadline, last = time.monotonic() + 120, "nothing delivered"
    try:
        while time.monotonic() < deadline:
            group = f"share-warm-up-{uuid.uuid4().hex[:8]}"
            configure_group(admin, group)
            consumer = ShareConsumer(
                {"bootstrap.servers": kafka_bootstrap, "group.id": group, "share.acknowledgement.mode": "explicit"}
            )
            try:
                consumer.subscribe([topic])
                records: list[Any] = []
                until = time.monotonic() + 20
                while not records and time.monotonic() < until:
                    records = [m for m in consumer.poll(0.5) or [] if m.error() is None]
                for record in records:
                    consumer.acknowledge(record, AcknowledgeType.ACCEPT)
                if records:
                    failed = {tp: err for tp, err in (consumer.commit_sync(10.0) or {}).items() if err is not None}
                    if not failed:
                        return
                    last = f"acknowledgements refused: {failed}"
            finally:
                consumer.close()
            time.sleep(1)
        pytest.fail(f"the broker's share coordinator did not come up within 120 s ({last})")
    finally:
        admin.delete_topics([topic])


def share_consumer(kafka_bootstrap: str, group: str, topic: str, handler: Any, **options: Any) -> KafkaConsumer:
    consumer = KafkaConsumer(
        bootstrap_servers=kafka_bootstrap,
        group_id=group,
        mode="share",
        registry=LocalFolderRegistry(SCHEMAS),
        retry=options.pop("retry", RetryPolicy(max_attempts=10, initial_s=0.05, max_s=0.2)),
        **options,
    )
    consumer.register_handler(topic, handler)
    return consumer


async def run_until(consumers: list[KafkaConsumer], done: Any, timeout_s: float = 90) -> None:
    """Run ``consumers`` until ``done()`` is true (then stop them, which sends the last acknowledgements)."""
    tasks = [asyncio.create_task(consumer.start()) for consumer in consumers]
    deadline = time.monotonic() + timeout_s
    try:
        while not done():
            assert time.monotonic() < deadline, "the share consumers did not finish in time"
            for task in tasks:
                if task.done():
                    task.result()  # a consumer that stopped on its own: its failure
            await asyncio.sleep(0.1)
        await asyncio.sleep(0.5)  # the acknowledgements of the last records
    finally:
        for consumer in consumers:
            consumer.request_stop()
        await asyncio.gather(*tasks)


class Scripted(BaseHandler):
    """Returns (or raises) the scripted results per messageId, True once the script runs out; records every
    call as (messageId, attempt, delivery_count)."""

    def __init__(self, script: dict[str, list]) -> None:
        self.script = script
        self.calls: list[tuple[str, int, int | None]] = []

    async def _process_message(self, message: Any) -> Any:
        self.calls.append((message.header.message_id, message.attempt, message.delivery_count))
        results = self.script.get(message.header.message_id)
        result = results.pop(0) if results else True
        if isinstance(result, BaseException):
            raise result
        return result


def nothing_left(kafka_bootstrap: str, group: str, topic: str) -> list[str]:
    """What another consumer of the group still gets within a few seconds (accepted records: nothing)."""
    got: list[str] = []

    async def main() -> None:
        consumer = share_consumer(kafka_bootstrap, group, topic, lambda m: got.append(m.header.message_id))
        task = asyncio.create_task(consumer.start())
        await asyncio.sleep(10)  # joining takes a few seconds
        consumer.request_stop()
        await task

    asyncio.run(main())
    return got


def test_every_outcome_row_as_acknowledgements(kafka_bootstrap, make_topic, admin, group_id):
    topic = make_topic("orders")
    configure_group(admin, group_id, delivery_limit=3)
    ids = ["done", "retry-then-done", "always-retry", "dead-letter", "crash", "outage"]
    produce(kafka_bootstrap, topic, [order(i) for i in ids] + [b"not json"])
    handler = Scripted(
        {
            "retry-then-done": [False],
            "always-retry": [RetryableError("down")] * 10,
            "dead-letter": [DeadLetter("refused order")],
            "crash": [ValueError("bug")],
            "outage": [RegistryUnavailable("registry down")],
        }
    )
    consumer = share_consumer(kafka_bootstrap, group_id, topic, handler)
    stats = consumer.stats

    def finished() -> bool:
        return stats[topic].processed == 3 and stats[topic].dead_lettered_total == 4

    asyncio.run(run_until([consumer], finished))
    by_id: dict[str, list[tuple[int, int | None]]] = {}
    for message_id, attempt, count in handler.calls:
        by_id.setdefault(message_id, []).append((attempt, count))
    assert by_id["done"] == [(1, 1)]
    assert by_id["retry-then-done"] == [(1, 1), (2, 2)]  # released, delivered again by the broker
    assert by_id["always-retry"] == [(1, 1), (2, 2), (3, 3)]  # the group's delivery limit
    assert by_id["dead-letter"] == [(1, 1)] and by_id["crash"] == [(1, 1)]
    assert by_id["outage"] == [(1, 1), (1, 1)]  # held and retried in place: not an attempt, not a delivery

    letters = read_topic(kafka_bootstrap, f"{topic}.dlq", expected=4)
    summary = sorted((letter.json()["error"]["stage"], letter.json()["source"]["attempts"]) for letter in letters)
    assert summary == [("decode", 1), ("handler", 1), ("handler", 1), ("retries_exhausted", 3)]
    assert {letter.json()["source"]["consumerGroup"] for letter in letters} == {group_id}
    stats = subprocess.run(  # `epistle dlq` reads them as it reads a consumer group's
        [sys.executable, "-m", "toolkit.cli", "dlq", "stats", f"{topic}.dlq", "--json"],
        cwd=ROOT,
        env={**os.environ, "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap, "KAFKA_STARTUP_TIMEOUT_S": "10"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert stats.returncode == 0, stats.stderr
    assert json.loads(stats.stdout)["by_stage"] == {"decode": 1, "handler": 2, "retries_exhausted": 1}
    assert nothing_left(kafka_bootstrap, group_id, topic) == []  # every record accepted, none rejected


def test_a_record_released_twice_then_accepted(kafka_bootstrap, make_topic, admin, group_id):
    topic = make_topic("orders")
    configure_group(admin, group_id)  # the broker's delivery limit (5 by default)
    produce(kafka_bootstrap, topic, [order("twice")])
    handler = Scripted({"twice": [False, RetryableError("again")]})
    consumer = share_consumer(kafka_bootstrap, group_id, topic, handler)
    asyncio.run(run_until([consumer], lambda: consumer.stats[topic].processed == 1))
    assert handler.calls == [("twice", 1, 1), ("twice", 2, 2), ("twice", 3, 3)]
    assert nothing_left(kafka_bootstrap, group_id, topic) == []


def test_a_handler_that_always_fails_ends_in_the_dlq_after_the_delivery_limit(
    kafka_bootstrap, make_topic, admin, group_id
):
    topic = make_topic("orders")
    configure_group(admin, group_id, delivery_limit=4)
    produce(kafka_bootstrap, topic, [order(f"m{i}") for i in range(3)])
    calls: list[tuple[str, int]] = []

    def fails(message: Any) -> bool:
        calls.append((message.header.message_id, message.delivery_count))
        return False

    consumer = share_consumer(kafka_bootstrap, group_id, topic, fails)
    asyncio.run(run_until([consumer], lambda: consumer.stats[topic].dead_lettered_total == 3))
    assert sorted(calls) == sorted((f"m{i}", n) for i in range(3) for n in (1, 2, 3, 4))
    letters = [record.json() for record in read_topic(kafka_bootstrap, f"{topic}.dlq", expected=3)]
    assert [(letter["error"]["stage"], letter["source"]["attempts"]) for letter in letters] == [
        ("retries_exhausted", 4)
    ] * 3
    assert nothing_left(kafka_bootstrap, group_id, topic) == []


def test_until_idle_stops_every_share_consumer_also_one_never_given_a_record(
    kafka_bootstrap, make_topic, admin, group_id
):
    # (``epistle run --mode share --until-idle --workers 2``: one worker may get nothing at all)
    topic = make_topic("orders", partitions=1)
    configure_group(admin, group_id)
    produce(kafka_bootstrap, topic, [order("only")])
    consumers = [
        share_consumer(kafka_bootstrap, group_id, topic, lambda m: None, stop_when_idle=True) for _ in range(2)
    ]

    async def main() -> None:
        await asyncio.wait_for(asyncio.gather(*(consumer.start() for consumer in consumers)), 90)

    asyncio.run(main())
    assert sorted(consumer.stats[topic].processed for consumer in consumers) == [0, 1]


def test_three_share_consumers_on_one_partition_all_get_work(kafka_bootstrap, make_topic, admin, group_id):
    topic = make_topic("orders", partitions=1)
    configure_group(admin, group_id)
    total = 300
    produce(kafka_bootstrap, topic, [order(f"m{i}") for i in range(total)], config=ONE_A_BATCH)
    seen: list[list[str]] = [[], [], []]

    def handler_for(index: int) -> Any:
        async def handle(message: Any) -> None:
            await asyncio.sleep(0.05)
            seen[index].append(message.header.message_id)

        return handle

    consumers = [
        share_consumer(kafka_bootstrap, group_id, topic, handler_for(i), max_workers=2, max_poll_records=2)
        for i in range(3)
    ]
    asyncio.run(run_until(consumers, lambda: sum(map(len, seen)) >= total, timeout_s=120))
    assert all(seen), [len(s) for s in seen]  # every consumer got work from the one partition
    everything = [message_id for s in seen for message_id in s]
    assert sorted(set(everything)) == sorted(f"m{i}" for i in range(total))


_CONSUMER = """
import asyncio, os, sys, time
from toolkit.consumer import KafkaConsumer
from toolkit.registry import LocalFolderRegistry

bootstrap, group, topic, out = sys.argv[1:5]
log = open(out, "a", buffering=1)

async def handle(message):
    await asyncio.sleep(0.05)
    log.write(f"{message.header.message_id} {message.delivery_count}\\n")

consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=group, mode="share",
                         registry=LocalFolderRegistry("schemas"), max_workers=2, max_poll_records=5)
consumer.register_handler(topic, handle)
from toolkit.consumer.runtime import run
sys.exit(run(consumer))
"""


def test_a_consumer_killed_with_sigkill_leaves_its_records_to_the_others(
    kafka_bootstrap, make_topic, admin, group_id, tmp_path
):
    topic = make_topic("orders", partitions=1)
    configure_group(admin, group_id, lock_ms=15_000)  # the broker's least: the killed one's records return then
    total = 200
    produce(kafka_bootstrap, topic, [order(f"m{i}") for i in range(total)], config=ONE_A_BATCH)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    logs = [tmp_path / f"consumer{i}.log" for i in range(3)]
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _CONSUMER, kafka_bootstrap, group_id, topic, str(log)],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for log in logs
    ]

    def lines(path: Path) -> list[tuple[str, int]]:
        if not path.exists():
            return []
        return [(line.split()[0], int(line.split()[1])) for line in path.read_text().splitlines() if " " in line]

    victim = None
    try:
        deadline = time.monotonic() + 90
        while victim is None:  # mid-stream: the victim holds records it acquired and did not finish
            for index, proc in enumerate(procs):
                assert proc.poll() is None, proc.communicate()
                if len(lines(logs[index])) >= 5:
                    victim = index
                    break
            assert time.monotonic() < deadline, "no consumer got work"
            time.sleep(0.05)
        procs[victim].send_signal(signal.SIGKILL)
        procs[victim].wait(timeout=30)
        handled_by_victim = {message_id for message_id, _ in lines(logs[victim])}
        others = [index for index in range(3) if index != victim]
        deadline = time.monotonic() + 150
        while True:
            survivors = {message_id for index in others for message_id, _ in lines(logs[index])}
            if survivors | handled_by_victim >= {f"m{i}" for i in range(total)}:
                break
            for index in others:
                assert procs[index].poll() is None, procs[index].communicate()
            assert time.monotonic() < deadline, f"{total - len(survivors | handled_by_victim)} records never came back"
            time.sleep(0.2)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
    survivors_procs = [procs[index] for index in others]
    assert all(proc.returncode == 0 for proc in survivors_procs), [p.stderr.read() for p in survivors_procs if p.stderr]
    redelivered = [(message_id, count) for index in others for message_id, count in lines(logs[index]) if count > 1]
    # The victim's acquired records, their lock expired, came to the survivors as second deliveries
    assert redelivered, "no record of the killed consumer came back to the others"
