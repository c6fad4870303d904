"""Confluent's wire format on the real broker and the real registry (Apicurio's ccompat API): records written
by confluent-kafka's own serializers (AvroSerializer, JSONSerializer; the default topic-name subject strategy
and the record-name strategy) are read by the pipeline as the repository's generated models; records written
by our producer in the wire format are read by confluent-kafka's AvroDeserializer and JSONDeserializer."""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path

import pytest
from confluent_kafka import DeserializingConsumer, SerializingProducer
from confluent_kafka.schema_registry import SchemaRegistryClient, record_subject_name_strategy
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.schema_registry.json_schema import JSONDeserializer, JSONSerializer
from confluent_kafka.serialization import StringSerializer
from pydantic import BaseModel, ConfigDict, Field

from generated_models.orders.v1 import Order as OrderV1
from generated_models.shipments.v1 import Shipment as ShipmentV1
from toolkit.consumer import KafkaConsumer
from toolkit.consumer.handlers import HandlerRegistry
from toolkit.consumer.pipeline import Pipeline
from toolkit.consumer.testing import produce, read_topic
from toolkit.errors import MessageError
from toolkit.layout import SchemaFormat
from toolkit.producer import EnvelopeProducer
from toolkit.registry import (
    CachedRegistry,
    ConfluentHttpRegistry,
    RegisteredSchema,
    SubjectContext,
    topic_value_strategy,
)
from toolkit.validation import compile_schema

ROOT = Path(__file__).resolve().parents[2]
SCHEMAS = ROOT / "schemas"
SHIPMENT_V1 = json.loads((SCHEMAS / "shipments" / "1.avsc").read_text())
ORDER_V1 = (SCHEMAS / "orders" / "1.json").read_text()


class Models:
    """The generated v1 models, as a model index (listable, so the pipeline can pick the schemaName)."""

    entries = {("shipments", 1): ShipmentV1, ("orders", 1): OrderV1}

    def get(self, name, version):
        return self.entries.get((name, version))

    def __iter__(self):
        return iter(sorted(self.entries))

    def __contains__(self, key):
        return key in self.entries


@pytest.fixture
def registry(registry_url) -> CachedRegistry:
    return CachedRegistry(ConfluentHttpRegistry(registry_url))


@pytest.fixture
def confluent_client(registry_url) -> SchemaRegistryClient:
    return SchemaRegistryClient({"url": registry_url})


def golden(registry: CachedRegistry, schema: str, text: str, fmt: SchemaFormat) -> list:
    """The valid golden samples of version 1 as Python values (Avro: logical types converted)."""
    compiled = compile_schema(RegisteredSchema(schema, 1, fmt, text))
    paths = sorted((SCHEMAS / schema / "samples" / "1" / "valid").glob("*.json"))
    return [compiled.decode(json.loads(path.read_text())) for path in paths]


def serialize(kafka_bootstrap: str, topic: str, serializer, values: list, headers=None) -> None:
    producer = SerializingProducer(
        {"bootstrap.servers": kafka_bootstrap, "key.serializer": StringSerializer(), "value.serializer": serializer}
    )
    for index, value in enumerate(values):
        producer.produce(topic, key=str(index), value=value, headers=headers)
    assert producer.flush(30) == 0


def read_all(pipeline: Pipeline, kafka_bootstrap: str, topic: str, expected: int) -> list:
    out = []
    for record in read_topic(kafka_bootstrap, topic, expected=expected):
        out.append(
            pipeline.prepare(
                topic=record.topic,
                partition=record.partition,
                offset=record.offset,
                key=record.key,
                value=record.value,
                headers=record.headers,
                timestamp=record.timestamp,
            ).message
        )
    return out


def pipeline_for(registry, topics, formats, strategy=topic_value_strategy) -> Pipeline:
    router = HandlerRegistry()
    for topic in topics:
        router.register(topic, lambda message: True)
    return Pipeline(registry, router, Models(), subject_strategy=strategy, value_formats=formats)


def test_avro_serializer_records_are_read_as_the_generated_model(
    kafka_bootstrap, make_topic, registry, confluent_client
) -> None:
    topic = make_topic("avro-wire")
    values = golden(registry, "shipments", json.dumps(SHIPMENT_V1), SchemaFormat.AVRO)
    serialize(kafka_bootstrap, topic, AvroSerializer(confluent_client, json.dumps(SHIPMENT_V1)), values)
    messages = read_all(pipeline_for(registry, [topic], {topic: "confluent"}), kafka_bootstrap, topic, len(values))
    schema_id = confluent_client.get_latest_version(f"{topic}-value").schema_id
    assert [m.body for m in messages] == [ShipmentV1.model_validate(v) for v in values]
    for message in messages:
        assert (message.schema_id, message.subject, message.header.schema_name, message.header.version) == (
            schema_id,
            f"{topic}-value",
            "shipments",
            1,
        )
        assert message.header.message_type == "com.epistle.shipments.Shipment"
        assert message.header.message_id == f"{topic}/0/{message.offset}"
    ConfluentHttpRegistry(registry.registry.url).delete_subject(f"{topic}-value", permanent=True)


def test_json_serializer_records_are_validated_and_read_as_the_generated_model(
    kafka_bootstrap, make_topic, registry, confluent_client
) -> None:
    topic = make_topic("json-wire")
    values = golden(registry, "orders", ORDER_V1, SchemaFormat.JSON)
    serialize(kafka_bootstrap, topic, JSONSerializer(ORDER_V1, confluent_client), values)
    messages = read_all(pipeline_for(registry, [topic], {topic: "auto"}), kafka_bootstrap, topic, len(values))
    assert [m.body for m in messages] == [OrderV1.model_validate(v) for v in values]
    assert {(m.header.schema_name, m.header.message_type, m.subject) for m in messages} == {
        ("orders", "Order", f"{topic}-value")
    }
    ConfluentHttpRegistry(registry.registry.url).delete_subject(f"{topic}-value", permanent=True)


def test_record_name_strategy_and_kafka_headers(kafka_bootstrap, make_topic, registry, confluent_client) -> None:
    topic = make_topic("record-name")
    schema = {**SHIPMENT_V1, "namespace": f"test.wire{uuid.uuid4().hex[:8]}"}  # its own subject: the full name
    values = golden(registry, "shipments", json.dumps(SHIPMENT_V1), SchemaFormat.AVRO)[:2]
    serializer = AvroSerializer(
        confluent_client, json.dumps(schema), conf={"subject.name.strategy": record_subject_name_strategy}
    )
    headers = [("correlationId", b"corr-1"), ("messageId", b"msg-1")]
    serialize(kafka_bootstrap, topic, serializer, values, headers=headers)

    def record_name(ctx: SubjectContext) -> str:
        return ctx.message_type or ctx.schema_name

    pipeline = pipeline_for(registry, [topic], {"*": "confluent"}, strategy=record_name)
    messages = read_all(pipeline, kafka_bootstrap, topic, len(values))
    full_name = f"{schema['namespace']}.Shipment"
    assert [m.body for m in messages] == [ShipmentV1.model_validate(v) for v in values]
    assert {(m.subject, m.header.message_type, m.header.schema_name) for m in messages} == {
        (full_name, full_name, "shipments")
    }  # the model named like the record
    assert {(m.header.correlation_id, m.header.message_id) for m in messages} == {("corr-1", "msg-1")}
    ConfluentHttpRegistry(registry.registry.url).delete_subject(full_name, permanent=True)


def test_hostile_wire_records_fail_at_their_stage(kafka_bootstrap, make_topic, registry, confluent_client) -> None:
    topic = make_topic("hostile-wire")
    values = golden(registry, "shipments", json.dumps(SHIPMENT_V1), SchemaFormat.AVRO)[:1]
    serialize(kafka_bootstrap, topic, AvroSerializer(confluent_client, json.dumps(SHIPMENT_V1)), values)
    (good,) = read_topic(kafka_bootstrap, topic, expected=1)
    unknown_id = (2**31 - 7).to_bytes(4, "big")
    produce(
        kafka_bootstrap,
        topic,
        [
            good.value[:-3],
            good.value + b"\x00",
            b"\x00" + unknown_id + good.value[5:],
            b"\x01" + good.value[1:],
            good.value[:4],
        ],
    )
    pipeline = pipeline_for(registry, [topic], {topic: "confluent"})
    stages = []
    for record in read_topic(kafka_bootstrap, topic, expected=6)[1:]:
        with pytest.raises(MessageError) as info:
            pipeline.prepare(topic=topic, partition=0, offset=record.offset, key=None, value=record.value)
        stages.append((info.value.stage, info.value.reason.split(":")[0]))
    assert [stage for stage, _ in stages] == ["decode", "decode", "schema", "decode", "decode"]
    ConfluentHttpRegistry(registry.registry.url).delete_subject(f"{topic}-value", permanent=True)


@pytest.fixture
def subjects(registry_url, unique_name) -> dict[str, str]:
    """shipments and orders version 1 under fresh subjects, registered by us."""
    http = ConfluentHttpRegistry(registry_url)
    names = {"shipments": unique_name("shipments"), "orders": unique_name("orders")}
    http.register(names["shipments"], json.dumps(SHIPMENT_V1), SchemaFormat.AVRO)
    http.register(names["orders"], ORDER_V1, SchemaFormat.JSON)
    yield names
    for name in names.values():
        http.delete_subject(name, permanent=True)


@pytest.mark.parametrize(
    ("schema", "model", "deserializer"),
    [
        ("shipments", ShipmentV1, lambda client: AvroDeserializer(client)),
        ("orders", OrderV1, lambda client: JSONDeserializer(None, schema_registry_client=client)),
    ],
)
def test_our_producers_wire_format_is_read_by_confluent_deserializers(
    kafka_bootstrap, make_topic, registry, confluent_client, subjects, schema, model, deserializer
) -> None:
    topic = make_topic("ours")
    text, fmt = (json.dumps(SHIPMENT_V1), SchemaFormat.AVRO) if schema == "shipments" else (ORDER_V1, SchemaFormat.JSON)
    models = [model.model_validate(v) for v in golden(registry, schema, text, fmt)]
    with EnvelopeProducer(
        kafka_bootstrap,
        registry=registry,
        confluent_topics=[topic],
        subject_strategy=lambda ctx: subjects[ctx.schema_name],
    ) as producer:
        for sent in models:
            producer.send(topic, sent).result(30)
    consumer = DeserializingConsumer(
        {
            "bootstrap.servers": kafka_bootstrap,
            "group.id": f"g-{uuid.uuid4().hex}",
            "auto.offset.reset": "earliest",
            "value.deserializer": deserializer(confluent_client),
        }
    )
    consumer.subscribe([topic])
    received = []
    try:
        for _ in range(300):
            msg = consumer.poll(0.2)
            if msg is not None and not msg.error():
                received.append(msg.value())
            if len(received) == len(models):
                break
    finally:
        consumer.close()
    assert [model.model_validate(value) for value in received] == models


def test_kafka_consumer_hands_serializer_records_to_the_handler(
    kafka_bootstrap, make_topic, group_id, registry, confluent_client
) -> None:
    topic = make_topic("consumer-wire")
    values = golden(registry, "shipments", json.dumps(SHIPMENT_V1), SchemaFormat.AVRO)
    serialize(kafka_bootstrap, topic, AvroSerializer(confluent_client, json.dumps(SHIPMENT_V1)), values)
    received = []
    consumer = KafkaConsumer(
        bootstrap_servers=kafka_bootstrap,
        group_id=group_id,
        registry=registry,
        models=Models(),
        subject_strategy=topic_value_strategy,
        stop_when_idle=True,
        commit_interval_s=0.2,
        value_formats={topic: "confluent"},
    )
    consumer.register_handler(topic, lambda message: received.append(message) or True)
    asyncio.run(asyncio.wait_for(consumer.start(), 60))
    assert [m.body for m in received] == [ShipmentV1.model_validate(v) for v in values]
    assert {(m.subject, m.header.schema_name) for m in received} == {(f"{topic}-value", "shipments")}
    ConfluentHttpRegistry(registry.registry.url).delete_subject(f"{topic}-value", permanent=True)


# -- keys in the wire format ------------------------------------------------------------------------------
SHIPMENT_KEY = {
    "type": "record",
    "name": "ShipmentKey",
    "namespace": "test.keys",
    "fields": [{"name": "shipmentId", "type": "string"}, {"name": "part", "type": "int"}],
}


class ShipmentKey(BaseModel):
    model_config = ConfigDict(populate_by_name=True, extra="forbid")
    shipment_id: str = Field(alias="shipmentId")
    part: int


class KeyedModels(Models):
    """The v1 models and the key's model, named like the key's record (as codegen names it)."""

    entries = {**Models.entries, ("shipment-key", 1): ShipmentKey}


def test_keys_of_confluents_avro_serializer_are_decoded_by_our_consumer(
    kafka_bootstrap, make_topic, group_id, registry, confluent_client
) -> None:
    topic = make_topic("keyed-wire")
    values = golden(registry, "shipments", json.dumps(SHIPMENT_V1), SchemaFormat.AVRO)
    keys = [{"shipmentId": f"s-{index}", "part": index} for index in range(len(values))]
    producer = SerializingProducer(
        {
            "bootstrap.servers": kafka_bootstrap,
            "key.serializer": AvroSerializer(confluent_client, json.dumps(SHIPMENT_KEY)),  # subject <topic>-key
            "value.serializer": AvroSerializer(confluent_client, json.dumps(SHIPMENT_V1)),
        }
    )
    for key, value in zip(keys, values, strict=True):
        producer.produce(topic, key=key, value=value)
    assert producer.flush(30) == 0
    produced = [record.key for record in read_topic(kafka_bootstrap, topic, expected=len(values))]
    received = []
    consumer = KafkaConsumer(
        bootstrap_servers=kafka_bootstrap,
        group_id=group_id,
        registry=registry,
        models=KeyedModels(),
        subject_strategy=topic_value_strategy,
        stop_when_idle=True,
        commit_interval_s=0.2,
        value_formats={topic: "confluent"},
        key_formats={topic: "confluent"},
    )
    consumer.register_handler(topic, lambda message: received.append(message) or True)
    asyncio.run(asyncio.wait_for(consumer.start(), 60))
    key_id = confluent_client.get_latest_version(f"{topic}-key").schema_id
    assert [m.key_value for m in received] == [ShipmentKey.model_validate(k) for k in keys]
    assert [m.key for m in received] == produced  # the raw bytes kept
    assert {(m.key_schema_id, m.key_subject) for m in received} == {(key_id, f"{topic}-key")}
    assert [m.body for m in received] == [ShipmentV1.model_validate(v) for v in values]
    for subject in (f"{topic}-key", f"{topic}-value"):
        ConfluentHttpRegistry(registry.registry.url).delete_subject(subject, permanent=True)


def test_a_key_of_an_unknown_schema_id_is_dead_lettered_with_its_bytes(
    kafka_bootstrap, make_topic, group_id, registry, confluent_client
) -> None:
    topic = make_topic("bad-key")
    bad_key = b"\x00\x7f\xff\xff\xf0" + b"\x02k"  # magic byte 0, an id the registry never assigned
    value = golden(registry, "shipments", json.dumps(SHIPMENT_V1), SchemaFormat.AVRO)[0]
    producer = SerializingProducer(
        {
            "bootstrap.servers": kafka_bootstrap,
            "key.serializer": lambda key, ctx: key,
            "value.serializer": AvroSerializer(confluent_client, json.dumps(SHIPMENT_V1)),
        }
    )
    producer.produce(topic, key=bad_key, value=value)
    assert producer.flush(30) == 0
    consumer = KafkaConsumer(
        bootstrap_servers=kafka_bootstrap,
        group_id=group_id,
        registry=registry,
        models=KeyedModels(),
        subject_strategy=topic_value_strategy,
        stop_when_idle=True,
        commit_interval_s=0.2,
        unknown_schema_grace_s=0,
        value_formats={topic: "confluent"},
        key_formats={topic: "confluent"},
    )
    handled = []
    consumer.register_handler(topic, lambda message: handled.append(message) or True)
    asyncio.run(asyncio.wait_for(consumer.start(), 60))
    [letter] = read_topic(kafka_bootstrap, f"{topic}.dlq", expected=1)
    assert handled == [] and letter.key == bad_key
    error = json.loads(letter.value)["error"]
    assert error["stage"] == "schema" and "schema id 2147483632" in error["reason"], error
    ConfluentHttpRegistry(registry.registry.url).delete_subject(f"{topic}-value", permanent=True)


def test_our_model_keys_are_read_by_confluents_avro_deserializer(
    kafka_bootstrap, make_topic, registry, confluent_client, registry_url
) -> None:
    topic = make_topic("our-keys")
    http = ConfluentHttpRegistry(registry_url)
    http.register(f"{topic}-key", json.dumps(SHIPMENT_V1), SchemaFormat.AVRO)  # shipments v1 as the key
    http.register(f"{topic}-value", json.dumps(SHIPMENT_V1), SchemaFormat.AVRO)
    models = [
        ShipmentV1.model_validate(v) for v in golden(registry, "shipments", json.dumps(SHIPMENT_V1), SchemaFormat.AVRO)
    ]
    with EnvelopeProducer(
        kafka_bootstrap,
        registry=registry,
        value_formats={topic: "confluent"},
        key_formats={topic: "confluent"},
        subject_strategy=topic_value_strategy,
    ) as producer:
        for sent in models:
            producer.send(topic, sent, key=sent).result(30)
    consumer = DeserializingConsumer(
        {
            "bootstrap.servers": kafka_bootstrap,
            "group.id": f"g-{uuid.uuid4().hex}",
            "auto.offset.reset": "earliest",
            "key.deserializer": AvroDeserializer(confluent_client),
            "value.deserializer": AvroDeserializer(confluent_client),
        }
    )
    consumer.subscribe([topic])
    received = []
    try:
        for _ in range(300):
            msg = consumer.poll(0.2)
            if msg is not None and not msg.error():
                received.append((msg.key(), msg.value()))
            if len(received) == len(models):
                break
    finally:
        consumer.close()
    assert [ShipmentV1.model_validate(key) for key, _ in received] == models
    assert [ShipmentV1.model_validate(value) for _, value in received] == models
    for subject in (f"{topic}-key", f"{topic}-value"):
        http.delete_subject(subject, permanent=True)
