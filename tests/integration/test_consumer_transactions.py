"""Topics written by transactional producers (Kafka Streams, exactly-once producers) on the real broker.

The consumer reads committed transactions only (librdkafka's default ``isolation.level=read_committed``):
an aborted transaction's records are never handled. Each transaction ends with a marker that takes an offset
and is never handed out, so committing "last record + 1" would leave the group one offset behind the log end
for good (a lag of 1 on every drained partition, in the metrics and in ``kafka-consumer-groups``). At the
partition's end the consumer commits librdkafka's position instead, past the markers, once every record is
done: the lag of a drained transactional topic is 0.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from confluent_kafka import Consumer, Producer, TopicPartition

from toolkit.consumer import KafkaConsumer
from toolkit.consumer.testing import committed, envelope_bytes
from toolkit.registry import LocalFolderRegistry

ROOT = Path(__file__).resolve().parents[2]
BODY = json.loads((ROOT / "schemas/orders/samples/1/valid/required-fields-only.json").read_text())
PARTITIONS = 2


def _transactions(bootstrap: str, topic: str, plan: list[bool], per_transaction: int) -> list[str]:
    """One transaction per entry of ``plan`` (True: committed, False: aborted, after its records reached the
    broker), ``per_transaction`` records each, spread over the partitions; the message ids committed."""
    producer = Producer({"bootstrap.servers": bootstrap, "transactional.id": f"{topic}-tx"})
    producer.init_transactions(30)
    kept = []
    for n, commit in enumerate(plan):
        producer.begin_transaction()
        for i in range(per_transaction):
            message_id = f"tx{n}-{i}"
            producer.produce(topic, envelope_bytes("orders", 1, BODY, message_id=message_id), partition=i % PARTITIONS)
            if commit:
                kept.append(message_id)
        producer.flush(30)  # (the aborted ones too are in the log, behind their abort marker)
        if commit:
            producer.commit_transaction(30)
        else:
            producer.abort_transaction(30)
    return kept


def _log_ends(bootstrap: str, topic: str) -> dict[int, int]:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "log-ends"})
    try:
        return {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=15)[1] for p in range(PARTITIONS)}
    finally:
        consumer.close()


def test_committed_transactions_are_handled_aborted_ones_never_and_the_group_ends_at_the_log_end(
    kafka_bootstrap, make_topic, group_id
):
    topic = make_topic("transactions", partitions=PARTITIONS)
    kept = _transactions(kafka_bootstrap, topic, [True, False, True, True, False, True], per_transaction=6)
    handled: list[str] = []

    async def handler(message) -> None:
        await asyncio.sleep(0.005)  # records still in flight when the partition's end arrives
        handled.append(message.header.message_id)

    consumer = KafkaConsumer(
        bootstrap_servers=kafka_bootstrap,
        group_id=group_id,
        registry=LocalFolderRegistry(ROOT / "schemas"),
        topics=[topic],
        stop_when_idle=True,
        commit_interval_s=0.2,
        max_workers=4,
    )
    consumer.register_handler(topic, handler)
    asyncio.run(asyncio.wait_for(consumer.start(), 90))

    assert sorted(handled) == sorted(kept)  # every committed record once, no aborted one
    ends = _log_ends(kafka_bootstrap, topic)
    # Each partition's log ends with a marker (the last transaction's commit), past its last record; the
    # group's offsets are the log ends.
    assert committed(kafka_bootstrap, group_id, topic, PARTITIONS) == ends

    # A consumer started again from those offsets finds nothing left to handle.
    again: list[str] = []

    async def second(message) -> None:
        again.append(message.header.message_id)

    restarted = KafkaConsumer(
        bootstrap_servers=kafka_bootstrap,
        group_id=group_id,
        registry=LocalFolderRegistry(ROOT / "schemas"),
        topics=[topic],
        stop_when_idle=True,
    )
    restarted.register_handler(topic, second)
    asyncio.run(asyncio.wait_for(restarted.start(), 60))
    assert again == []
