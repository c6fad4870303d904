"""The malformed corpus on the real broker: nothing crashes the consumer, every record is dead-lettered
with its stage, and the dead letter gives back the original bytes exactly."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from tests.malformed_corpus import corpus
from toolkit.consumer import KafkaConsumer, RetryPolicy
from toolkit.consumer.deadletter import original_record
from toolkit.consumer.testing import committed, envelope_bytes, produce, read_topic
from toolkit.registry import LocalFolderRegistry

ROOT = Path(__file__).resolve().parents[2]


def test_malformed_corpus_is_dead_lettered_with_exact_bytes(kafka_bootstrap, make_topic, group_id):
    entries = corpus()
    assert len(entries) >= 25
    topic = make_topic("malformed")
    valid_body = json.loads((ROOT / "schemas/orders/samples/1/valid/full-card-payment.json").read_text())
    records = []
    for i, entry in enumerate(entries):
        records.append((f"valid-{i}".encode(), envelope_bytes("orders", 1, valid_body, message_id=f"v{i}")))
        records.append((entry.name.encode(), entry.value))
    produce(kafka_bootstrap, topic, records, headers=[("origin", b"corpus")], config={"message.max.bytes": 2_000_000})
    handled = []

    async def handler(message):
        handled.append(message.header.message_id)

    consumer = KafkaConsumer(
        bootstrap_servers=kafka_bootstrap,
        group_id=group_id,
        registry=LocalFolderRegistry(ROOT / "schemas"),
        stop_when_idle=True,
        retry=RetryPolicy(max_attempts=2, initial_s=0.05),
        commit_interval_s=0.2,
        unknown_schema_grace_s=0,
    )  # the corpus's unknown schema and version at once
    consumer.register_handler(topic, handler)
    asyncio.run(asyncio.wait_for(consumer.start(), 120))

    assert sorted(handled) == sorted(f"v{i}" for i in range(len(entries)))
    dead = read_topic(kafka_bootstrap, f"{topic}.dlq", expected=len(entries), timeout_s=30)
    by_key = {dl.key.decode(): dl for dl in dead}
    assert sorted(by_key) == sorted(entry.name for entry in entries)
    wrong = {}
    for entry in entries:
        dl = by_key[entry.name]
        value = json.loads(dl.value)
        if value["error"]["stage"] != entry.stage:
            wrong[entry.name] = (value["error"]["stage"], entry.stage, value["error"]["reason"][:200])
        original = original_record(dl.value, dl.key, dl.headers)
        assert original.value == entry.value, entry.name
        assert original.key == entry.name.encode() and original.headers == [("origin", b"corpus")]
        assert original.topic == topic and value["source"]["attempts"] == 1
    assert wrong == {}
    assert consumer.stats[topic].processed == len(entries)
    assert consumer.stats[topic].dead_lettered_total == len(entries)
    assert committed(kafka_bootstrap, group_id, topic) == {0: 2 * len(entries)}
