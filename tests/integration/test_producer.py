"""The producer on the real broker and the real registry (Apicurio): models of the repository's JSON Schema
(orders) and Avro (shipments) subjects published, consumed by KafkaConsumer and handed to the handler as
equal models; the correlationId carried over by handlers that publish (async and plain-function ones);
Confluent's wire format carrying the registry's schema id; a refused model sends nothing."""

from __future__ import annotations

import asyncio
import io
import json
from pathlib import Path

import fastavro
import httpx
import pytest

from generated_models.orders.v1 import Order as OrderV1
from generated_models.orders.v2 import Order as OrderV2
from generated_models.shipments.v1 import Shipment as ShipmentV1
from generated_models.shipments.v2 import Shipment as ShipmentV2
from tests.kafka_checks import records_in
from toolkit.consumer import KafkaConsumer
from toolkit.consumer.testing import read_topic
from toolkit.envelope import decode_record
from toolkit.layout import SchemaFormat
from toolkit.producer import DeliveryFailed, EnvelopeProducer, PublishRefused
from toolkit.registry import CachedRegistry, ConfluentHttpRegistry

ROOT = Path(__file__).resolve().parents[2]
SCHEMAS = ROOT / "schemas"
MODELS = {("orders", 1): OrderV1, ("orders", 2): OrderV2, ("shipments", 1): ShipmentV1, ("shipments", 2): ShipmentV2}


@pytest.fixture
def subjects(registry_url, unique_name) -> dict[str, str]:
    """orders (JSON Schema) and shipments (Avro), versions 1 and 2, under fresh subjects in Apicurio."""
    http = ConfluentHttpRegistry(registry_url)
    names = {"orders": unique_name("orders"), "shipments": unique_name("shipments")}
    for schema, suffix, fmt in (("orders", "json", SchemaFormat.JSON), ("shipments", "avsc", SchemaFormat.AVRO)):
        for version in (1, 2):
            registered = http.register(names[schema], (SCHEMAS / schema / f"{version}.{suffix}").read_text(), fmt)
            assert registered.version == version
    return names


@pytest.fixture
def registry(registry_url) -> CachedRegistry:
    return CachedRegistry(ConfluentHttpRegistry(registry_url))


def samples(registry: CachedRegistry, subjects: dict[str, str]) -> list[tuple[str, object]]:
    """(schemaName, model) for every valid golden sample of every version."""
    out = []
    for (schema, version), cls in MODELS.items():
        _, compiled = registry.resolve(subjects[schema], version)
        for path in sorted((SCHEMAS / schema / "samples" / str(version) / "valid").glob("*.json")):
            out.append((schema, cls.model_validate(compiled.decode(json.loads(path.read_text())))))
    return out


def consume(kafka_bootstrap: str, group_id: str, registry, subjects, handlers: dict) -> KafkaConsumer:
    consumer = KafkaConsumer(
        bootstrap_servers=kafka_bootstrap,
        group_id=group_id,
        registry=registry,
        subject_strategy=lambda ctx: subjects[ctx.schema_name],
        stop_when_idle=True,
        commit_interval_s=0.2,
    )
    for topic, handler in handlers.items():
        consumer.register_handler(topic, handler)
    asyncio.run(asyncio.wait_for(consumer.start(), 60))
    return consumer


def test_published_models_reach_the_handler_as_equal_models(
    kafka_bootstrap, make_topic, group_id, registry, subjects
) -> None:
    topic = make_topic("produced")
    published = samples(registry, subjects)

    async def publish_all() -> list:
        async with EnvelopeProducer(
            kafka_bootstrap,
            registry=registry,
            name="producer-test",
            subject_strategy=lambda ctx: subjects[ctx.schema_name],
        ) as producer:
            return await asyncio.gather(*(producer.publish(topic, model, key=schema) for schema, model in published))

    deliveries = asyncio.run(publish_all())
    assert sorted(d.offset for d in deliveries) == list(range(len(published)))
    received = {}

    async def handler(message) -> None:
        received[message.message_id] = message

    consumer = consume(kafka_bootstrap, group_id, registry, subjects, {topic: handler})
    assert consumer.stats[topic].dead_lettered_total == 0
    assert len(received) == len(published)
    for delivery, (schema, model) in zip(deliveries, published, strict=True):
        message = received[delivery.message_id]
        assert type(message.body) is type(model) and message.body == model
        assert message.header.schema_name == schema and message.header.producer == "producer-test"
        assert message.key == schema.encode() and message.offset == delivery.offset
        assert message.correlation_id == delivery.correlation_id == delivery.message_id


def test_handlers_that_publish_carry_the_correlation_id_over(
    kafka_bootstrap, make_topic, group_id, registry, subjects, unique_name
) -> None:
    """orders -> (async handler) -> shipments -> (plain-function handler, a worker thread) -> audit."""
    orders, shipments, audit = make_topic("orders"), make_topic("shipments"), make_topic("audit")
    strategy = {"subject_strategy": lambda ctx: subjects[ctx.schema_name]}
    order = next(model for schema, model in samples(registry, subjects) if isinstance(model, OrderV2))
    shipment = next(model for schema, model in samples(registry, subjects) if isinstance(model, ShipmentV2))

    with EnvelopeProducer(kafka_bootstrap, registry=registry, **strategy) as producer:
        producer.send(orders, order, correlation_id="conversation-1").result(30)
        producer.send(orders, order, correlation_id="conversation-2").result(30)

        async def on_order(message) -> None:
            await producer.publish(shipments, shipment, message_type="ShipmentRequested")

        consume(kafka_bootstrap, group_id, registry, subjects, {orders: on_order})
        assert records_in(kafka_bootstrap, shipments) == 2

        def on_shipment(message) -> None:  # a plain function: runs in the handler thread pool
            producer.send(audit, message.body, message_type="ShipmentAudited").result(30)

        consume(kafka_bootstrap, unique_name("group"), registry, subjects, {shipments: on_shipment})

    shipped = [decode_record(r.value).header for r in read_topic(kafka_bootstrap, shipments, expected=2)]
    audited = [decode_record(r.value).header for r in read_topic(kafka_bootstrap, audit, expected=2)]
    assert sorted(h.correlation_id for h in shipped) == ["conversation-1", "conversation-2"]
    assert sorted(h.correlation_id for h in audited) == ["conversation-1", "conversation-2"]
    assert {h.message_type for h in audited} == {"ShipmentAudited"}
    assert len({h.message_id for h in shipped + audited}) == 4  # each record its own messageId


def test_confluent_wire_format_carries_the_registrys_schema_id(
    kafka_bootstrap, make_topic, registry_url, registry, subjects
) -> None:
    topic = make_topic("wire")
    shipment = next(model for schema, model in samples(registry, subjects) if isinstance(model, ShipmentV2))
    with EnvelopeProducer(
        kafka_bootstrap,
        registry=registry,
        confluent_topics=[topic],
        subject_strategy=lambda ctx: subjects[ctx.schema_name],
    ) as producer:
        producer.send(topic, shipment).result(30)
    expected_id = httpx.get(f"{registry_url}/subjects/{subjects['shipments']}/versions/2").json()["id"]
    (record,) = read_topic(kafka_bootstrap, topic, expected=1)
    assert record.value[0] == 0 and int.from_bytes(record.value[1:5], "big") == expected_id
    parsed = registry.resolve(subjects["shipments"], 2)[1].parsed
    decoded = fastavro.schemaless_reader(io.BytesIO(record.value[5:]), parsed, parsed)
    assert ShipmentV2.model_validate(decoded) == shipment
    assert dict(record.headers)["schemaVersion"] == b"2"


def test_a_refused_model_sends_nothing(kafka_bootstrap, make_topic, registry, subjects) -> None:
    topic = make_topic("refused")
    order = next(model for schema, model in samples(registry, subjects) if isinstance(model, OrderV2))
    with EnvelopeProducer(
        kafka_bootstrap, registry=registry, subject_strategy=lambda ctx: subjects[ctx.schema_name]
    ) as producer:
        with pytest.raises(PublishRefused, match="items"):
            producer.send(topic, order.model_copy(update={"items": []}))
        producer.send(topic, order).result(30)  # the producer still works
    assert records_in(kafka_bootstrap, topic) == 1


def test_close_fails_what_an_unreachable_broker_never_acknowledged(registry, subjects) -> None:
    producer = EnvelopeProducer(
        "127.0.0.1:1", registry=registry, subject_strategy=lambda ctx: subjects[ctx.schema_name]
    )
    order = samples(registry, subjects)[0][1]

    async def run() -> None:
        publishing = asyncio.ensure_future(producer.publish("orders", order))
        await asyncio.sleep(0.5)
        assert await asyncio.to_thread(producer.close, 1) == 1
        with pytest.raises(DeliveryFailed, match="not acknowledged"):
            await asyncio.wait_for(publishing, 10)  # before the fix: pending forever

    asyncio.run(run())
