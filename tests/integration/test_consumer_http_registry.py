"""The consumer with the Confluent-compatible HTTP registry (Apicurio): Avro bodies (shipments) resolved
over HTTP, unknown versions dead-lettered with stage "schema"; an unreachable registry pauses."""

from __future__ import annotations

import asyncio
import json
import socket
from pathlib import Path

from tests.kafka_checks import records_in
from toolkit.consumer import KafkaConsumer, RetryPolicy
from toolkit.consumer.testing import committed, envelope_bytes, produce, read_topic
from toolkit.layout import SchemaFormat
from toolkit.registry import CachedRegistry, ConfluentHttpRegistry

ROOT = Path(__file__).resolve().parents[2]
SHIPMENTS = ROOT / "schemas" / "shipments"


def sample(version: int, kind: str = "valid", index: int = 0) -> dict:
    return json.loads(sorted((SHIPMENTS / "samples" / str(version) / kind).glob("*.json"))[index].read_text())


def test_avro_bodies_resolved_over_http(kafka_bootstrap, registry_url, make_topic, group_id, unique_name):
    subject = unique_name("shipments")
    http = ConfluentHttpRegistry(registry_url)
    for version in (1, 2):
        registered = http.register(subject, (SHIPMENTS / f"{version}.avsc").read_text(), SchemaFormat.AVRO)
        assert registered.version == version
    topic = make_topic("shipments")
    produce(
        kafka_bootstrap,
        topic,
        [
            envelope_bytes("shipments", 1, sample(1), message_id="v1"),
            envelope_bytes("shipments", 2, sample(2, index=2), message_id="v2"),
            envelope_bytes("shipments", 3, sample(2), message_id="v3-unknown"),
            envelope_bytes("shipments", 2, sample(2, "invalid"), message_id="invalid"),
        ],
    )
    seen = {}

    async def handler(message):
        seen[message.header.message_id] = message.body

    consumer = KafkaConsumer(
        bootstrap_servers=kafka_bootstrap,
        group_id=group_id,
        registry=CachedRegistry(http),
        subject_strategy=lambda ctx: subject,
        stop_when_idle=True,
        commit_interval_s=0.2,
        retry=RetryPolicy(2, 0.05, 0.1),
        unknown_schema_grace_s=0,
    )
    consumer.register_handler(topic, handler)
    asyncio.run(asyncio.wait_for(consumer.start(), 60))
    assert sorted(seen) == ["v1", "v2"]
    assert type(seen["v2"]).__module__ == "generated_models.shipments.v2"
    dead = read_topic(kafka_bootstrap, f"{topic}.dlq", expected=2)
    values = [json.loads(d.value) for d in dead]
    stages = {v["original_message"]["header"]["messageId"]: v["error"]["stage"] for v in values}
    assert stages == {"v3-unknown": "schema", "invalid": "validation"}
    assert committed(kafka_bootstrap, group_id, topic) == {0: 4}


def test_unreachable_http_registry_pauses_and_commits_nothing(kafka_bootstrap, make_topic, group_id):
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    http = ConfluentHttpRegistry(f"http://127.0.0.1:{port}/apis/ccompat/v7", max_attempts=1, timeout_s=0.5)
    topic = make_topic("shipments")
    produce(kafka_bootstrap, topic, [envelope_bytes("shipments", 1, sample(1), message_id="m0")])
    called = []
    consumer = KafkaConsumer(
        bootstrap_servers=kafka_bootstrap,
        group_id=group_id,
        registry=CachedRegistry(http),
        commit_interval_s=0.1,
        retry=RetryPolicy(2, 0.05, 0.2),
    )
    consumer.register_handler(topic, called.append)

    async def scenario():
        task = asyncio.create_task(consumer.start())
        for _ in range(100):
            await asyncio.sleep(0.1)
            if consumer.stats[topic].paused >= 3:
                break
        await consumer.stop()
        await asyncio.wait_for(task, 30)

    asyncio.run(scenario())
    stats = consumer.stats[topic]
    assert stats.paused >= 3 and stats.dead_lettered_total == 0 and called == []
    assert committed(kafka_bootstrap, group_id, topic)[0] < 0
    assert records_in(kafka_bootstrap, f"{topic}.dlq") == 0
