"""The producer without a broker: the reverse model index, bodies the consumer's validator reads (JSON and
Avro's JSON encoding), header filling, the correlationId carry-over, refusals that send nothing, Confluent's
wire format, delivery futures and the producer's settings.

The registry and the Kafka client are in-memory doubles implementing the toolkit's protocols
(:class:`~toolkit.registry.base.SchemaRegistry`, :class:`~toolkit.producer.KafkaProducerClient`).
"""

from __future__ import annotations

import asyncio
import contextvars
import io
import json
import threading
import time
import uuid
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import fastavro
import pytest
from pydantic import BaseModel

from generated_models.orders.v1 import Order as OrderV1
from generated_models.orders.v2 import Address, Order
from generated_models.shipments.v2 import Shipment
from toolkit.codegen.index import load_model_index
from toolkit.consumer.context import current_message, handling
from toolkit.consumer.pipeline import Message
from toolkit.envelope import Header, decode_record
from toolkit.errors import ConfigError, EpistleError, SchemaNotFound
from toolkit.layout import SchemaFormat
from toolkit.producer import DeliveryFailed, EnvelopeProducer, PublishRefused, WireFormat
from toolkit.registry import CachedRegistry, CompatibilityResult, RegisteredSchema
from toolkit.settings import load_producer_settings

ROOT = Path(__file__).resolve().parents[2]
SCHEMAS = ROOT / "schemas"


class SchemasFolderDouble:
    """The repository's schema files as an in-memory registry that assigns ids (schema id = 100 * version
    + subject number), like a Confluent-compatible one; ``with_ids=False`` behaves like the local folder."""

    def __init__(self, with_ids: bool = True) -> None:
        self.with_ids = with_ids
        self.store: dict[tuple[str, int], RegisteredSchema] = {}
        for number, subject in enumerate(("orders", "shipments"), start=1):
            for path in sorted((SCHEMAS / subject).glob("[0-9]*.*")):
                version = int(path.stem)
                fmt = SchemaFormat.AVRO if path.suffix == ".avsc" else SchemaFormat.JSON
                self.store[(subject, version)] = RegisteredSchema(
                    subject, version, fmt, path.read_text(), 100 * version + number if with_ids else None
                )

    def get(self, subject: str, version: int) -> RegisteredSchema:
        try:
            return self.store[(subject, version)]
        except KeyError:
            raise SchemaNotFound(
                f"subject {subject!r} version {version} not found", subject=subject, version=version
            ) from None

    def latest(self, subject: str) -> RegisteredSchema:
        return self.get(subject, max(self.versions(subject)))

    def subjects(self) -> list[str]:
        return sorted({s for s, _ in self.store})

    def versions(self, subject: str) -> list[int]:
        return sorted(v for s, v in self.store if s == subject)

    def register(self, subject: str, text: str, schema_format: SchemaFormat) -> RegisteredSchema:
        raise NotImplementedError

    def check_compatibility(
        self, subject: str, text: str, schema_format: SchemaFormat, version: int | str = "latest"
    ) -> CompatibilityResult:
        return CompatibilityResult(True)

    def close(self) -> None:
        pass


class _Err:
    def __init__(self, text: str) -> None:
        self.text = text

    def str(self) -> str:
        return self.text

    def name(self) -> str:
        return "_MSG_TIMED_OUT"

    def retriable(self) -> bool:
        return True


class _Msg:
    def __init__(self, topic: str, offset: int) -> None:
        self._topic, self._offset = topic, offset

    def topic(self) -> str:
        return self._topic

    def partition(self) -> int:
        return 0

    def offset(self) -> int:
        return self._offset

    def timestamp(self) -> tuple[int, int]:
        return 1, 1_700_000_000_000


class KafkaDouble:
    """A :class:`~toolkit.producer.KafkaProducerClient`: records what is produced, reports deliveries on
    poll (or fails them with ``fail``)."""

    def __init__(self, fail: str | None = None) -> None:
        self.produced: list[dict[str, Any]] = []
        self._pending: list[tuple[Any, Any]] = []
        self._lock = threading.Lock()
        self.fail = fail
        self.flushed = 0

    def produce(self, topic, value=None, key=None, *, headers=None, on_delivery=None) -> None:
        with self._lock:
            self.produced.append({"topic": topic, "value": value, "key": key, "headers": headers})
            self._pending.append((on_delivery, _Msg(topic, len(self.produced) - 1)))

    def poll(self, timeout: float) -> int:
        with self._lock:
            pending, self._pending = self._pending, []
        for callback, msg in pending:
            callback(_Err(self.fail) if self.fail else None, msg)
        if not pending:
            time.sleep(min(timeout, 0.005))
        return len(pending)

    def flush(self, timeout: float) -> int:
        self.flushed += 1
        self.poll(0)
        return 0


def sample(schema: str, version: int, name: str) -> dict:
    return json.loads((SCHEMAS / schema / "samples" / str(version) / "valid" / f"{name}.json").read_text())


@pytest.fixture
def registry() -> CachedRegistry:
    return CachedRegistry(SchemasFolderDouble())


@pytest.fixture
def kafka() -> KafkaDouble:
    return KafkaDouble()


@pytest.fixture
def producer(registry, kafka):
    with EnvelopeProducer(registry=registry, client=kafka, name="orders-service") as producer:
        yield producer


def model_of(registry: CachedRegistry, cls: type[BaseModel], schema: str, version: int, name: str) -> Any:
    _, compiled = registry.resolve(schema, version)
    return cls.model_validate(compiled.decode(sample(schema, version, name)))


# -- the reverse index ------------------------------------------------------------------------------------
def test_reverse_index_gives_schema_name_and_version_of_each_generated_root_model() -> None:
    index = load_model_index()
    for key in index:
        assert index.key_of(index.get(*key)) == key
    assert index.key_of(OrderV1) == ("orders", 1)


def test_reverse_index_refuses_nested_classes_subclasses_and_foreign_models() -> None:
    class MyOrder(Order):
        pass

    class Foreign(BaseModel):
        x: int

    index = load_model_index()
    assert index.key_of(Address) is None
    assert index.key_of(MyOrder) is None
    assert index.key_of(Foreign) is None


def test_a_model_outside_the_index_is_refused_before_anything_is_sent(producer, kafka) -> None:
    address = Address(line1="1 Main St", city="Springfield", postalCode="12345", country="US")
    with pytest.raises(PublishRefused, match="not a generated root model") as caught:
        producer.send("orders", address)
    assert caught.value.topic == "orders"
    with pytest.raises(PublishRefused, match="generated pydantic model instance"):
        producer.send("orders", {"orderId": "x"})  # type: ignore[arg-type]
    assert kafka.produced == []


# -- bodies and headers -----------------------------------------------------------------------------------
def test_json_schema_body_round_trips_through_the_consumers_validator_and_model(producer, registry) -> None:
    order = model_of(registry, Order, "orders", 2, "full-with-discount-and-channel")
    record = producer.build("orders", order, key="k-1", headers={"trace": "abc", "raw": b"\x00"})
    decoded = decode_record(record.value)
    _, compiled = registry.resolve("orders", 2)
    assert Order.model_validate(compiled.decode(decoded.body)) == order
    original = sample("orders", 2, "full-with-discount-and-channel")
    assert decoded.body.keys() == original.keys()  # fields left unset in the model are left out
    assert datetime.fromisoformat(decoded.body.pop("createdAt")) == datetime.fromisoformat(original.pop("createdAt"))
    assert decoded.body == original
    assert record.key == b"k-1"
    assert record.headers == [("trace", b"abc"), ("raw", b"\x00")]
    assert record.wire_format is WireFormat.ENVELOPE


def test_header_is_filled(producer, registry) -> None:
    order = model_of(registry, OrderV1, "orders", 1, "required-fields-only")
    header = decode_record(producer.build("orders", order).value).header
    assert (header.schema_name, header.schema_version, header.message_type) == ("orders", "1", "Order")
    assert header.producer == "orders-service"
    assert uuid.UUID(header.message_id).version == 4
    assert header.correlation_id == header.message_id  # outside a handler a message starts a conversation
    assert header.sent_at.tzinfo is not None
    assert abs(header.sent_at.timestamp() - time.time()) < 3600
    other = decode_record(producer.build("orders", order).value).header
    assert other.message_id != header.message_id


def test_explicit_header_fields_win(producer, registry) -> None:
    order = model_of(registry, OrderV1, "orders", 1, "required-fields-only")
    header = decode_record(
        producer.build("orders", order, message_type="OrderPlaced", correlation_id="corr-1", message_id="msg-1").value
    ).header
    assert (header.message_type, header.correlation_id, header.message_id) == ("OrderPlaced", "corr-1", "msg-1")


def test_the_producer_and_the_test_helper_write_the_same_envelope(producer, registry) -> None:
    from toolkit.consumer.testing import envelope_bytes

    order = model_of(registry, OrderV1, "orders", 1, "required-fields-only")
    record = producer.build("orders", order, message_id="msg-1")
    header, body = record.header, json.loads(record.value)["body"]
    assert record.value == envelope_bytes(
        "orders",
        1,
        body,
        message_type=header.message_type,
        message_id="msg-1",
        producer=header.producer,
        timestamp=header.timestamp,
    )


def test_avro_body_is_avros_json_encoding(producer, registry) -> None:
    shipment = model_of(registry, Shipment, "shipments", 2, "full-two-parcels")
    body = decode_record(producer.build("shipments", shipment).value).body
    original = sample("shipments", 2, "full-two-parcels")
    assert body["destination"]["line2"] == {"string": "3. OG"}  # unions wrapped
    assert body["createdAt"] == original["createdAt"] == 1715938215123  # timestamp-millis as epoch ms
    assert body["parcels"][0]["declaredValue"] == original["parcels"][0]["declaredValue"]  # decimal bytes
    assert isinstance(body["parcels"][0]["declaredValue"], str)
    assert body["parcels"][0]["dimensions"] == original["parcels"][0]["dimensions"]  # full name of a record
    _, compiled = registry.resolve("shipments", 2)
    assert Shipment.model_validate(compiled.decode(body)) == shipment
    # fastavro's own JSON reader agrees on what was written
    read = next(fastavro.json_reader(io.StringIO(json.dumps(body)), compiled.parsed))
    assert read["shippingCost"] == shipment.shipping_cost


@pytest.mark.parametrize(("schema", "cls_name"), [("orders", "Order"), ("shipments", "Shipment")])
def test_every_golden_sample_round_trips(producer, registry, schema, cls_name) -> None:
    index = load_model_index()
    for version in (1, 2):
        cls = index.get(schema, version)
        assert cls is not None and cls.__name__ == cls_name
        _, compiled = registry.resolve(schema, version)
        for path in sorted((SCHEMAS / schema / "samples" / str(version) / "valid").glob("*.json")):
            model = cls.model_validate(compiled.decode(json.loads(path.read_text())))
            decoded = decode_record(producer.build(schema, model).value)
            assert cls.model_validate(compiled.decode(decoded.body)) == model, path.name


# -- refusals ---------------------------------------------------------------------------------------------
def test_a_json_body_failing_its_schema_is_refused_and_nothing_is_sent(producer, registry, kafka) -> None:
    order = model_of(registry, Order, "orders", 2, "required-fields-only").model_copy(update={"items": []})
    with pytest.raises(PublishRefused) as caught:
        producer.send("orders", order)
    error = caught.value
    assert isinstance(error, EpistleError)
    assert (error.topic, error.schema_name, error.version) == ("orders", "orders", 2)
    assert "nothing was sent" in str(error) and "$.items" in str(error)
    assert error.details[0]["path"] == "$.items"
    assert kafka.produced == []


def test_an_avro_body_failing_its_schema_is_refused_and_nothing_is_sent(producer, registry, kafka) -> None:
    shipment = model_of(registry, Shipment, "shipments", 2, "full-two-parcels")
    too_heavy = shipment.parcels[0].model_copy(update={"weight_grams": 2**40})  # not an Avro int
    with pytest.raises(PublishRefused, match="weightGrams") as caught:
        producer.send("shipments", shipment.model_copy(update={"parcels": [too_heavy]}))
    assert caught.value.schema_name == "shipments"
    no_signature = shipment.model_copy(update={"signature_required": None})  # the model allows None, Avro not
    with pytest.raises(PublishRefused, match="signatureRequired"):
        producer.send("shipments", no_signature)
    assert kafka.produced == []


def test_a_schema_version_missing_from_the_registry_is_refused_with_the_fix(kafka) -> None:
    double = SchemasFolderDouble()
    del double.store[("orders", 2)]
    producer = EnvelopeProducer(registry=CachedRegistry(double), client=kafka)
    order = Order.model_validate(sample("orders", 2, "required-fields-only"))
    with pytest.raises(PublishRefused, match="epistle register"):
        producer.send("orders", order)
    assert kafka.produced == []


# -- correlationId carry-over -----------------------------------------------------------------------------
def handled(correlation_id: str) -> Message:
    header = Header(
        message_type="OrderPlaced",
        schema_name="orders",
        schema_version="1",
        correlation_id=correlation_id,
        message_id="incoming",
        timestamp="2024-05-01T12:00:00Z",
        producer="upstream",
    )
    return Message(header, None, "orders", 0, 0, None)


def test_inside_a_handler_the_handled_messages_correlation_id_is_carried_over(producer, registry) -> None:
    order = model_of(registry, OrderV1, "orders", 1, "required-fields-only")
    assert current_message() is None
    token = handling.set(handled("conversation-7"))
    try:
        carried = decode_record(producer.build("orders", order).value).header
        explicit = decode_record(producer.build("orders", order, correlation_id="mine").value).header
        # a plain-function handler runs in a worker thread with a copy of the context
        in_thread: list[Header] = []
        ctx = contextvars.copy_context()
        worker = threading.Thread(
            target=ctx.run,
            args=(lambda: in_thread.append(decode_record(producer.build("orders", order).value).header),),
        )
        worker.start()
        worker.join()
    finally:
        handling.reset(token)
    assert carried.correlation_id == "conversation-7" and carried.message_id != "incoming"
    assert explicit.correlation_id == "mine"
    assert in_thread[0].correlation_id == "conversation-7"
    after = decode_record(producer.build("orders", order).value).header
    assert after.correlation_id == after.message_id


def test_async_publish_carries_the_correlation_id_over(producer, registry, kafka) -> None:
    order = model_of(registry, OrderV1, "orders", 1, "required-fields-only")

    async def handler() -> Any:
        handling.set(handled("conversation-9"))
        first = await producer.publish("orders", order)  # first of its kind: built in a thread
        second = await producer.publish("orders", order)  # known schema: built on the loop
        return first, second

    first, second = asyncio.run(handler())
    assert first.correlation_id == second.correlation_id == "conversation-9"
    headers = [decode_record(p["value"]).header for p in kafka.produced]
    assert [h.correlation_id for h in headers] == ["conversation-9", "conversation-9"]


# -- delivery ---------------------------------------------------------------------------------------------
def test_send_returns_a_future_resolved_on_the_delivery_report(producer, registry, kafka) -> None:
    order = model_of(registry, OrderV1, "orders", 1, "required-fields-only")
    delivery = producer.send("orders", order, key=b"k").result(timeout=10)
    assert (delivery.topic, delivery.partition, delivery.offset) == ("orders", 0, 0)
    assert delivery.timestamp == 1_700_000_000_000
    assert delivery.message_id == decode_record(kafka.produced[0]["value"]).header.message_id
    assert kafka.produced[0]["key"] == b"k"


def test_a_delivery_the_broker_refuses_fails_the_future(registry) -> None:
    kafka = KafkaDouble(fail="Local: Message timed out")
    producer = EnvelopeProducer(registry=registry, client=kafka)
    order = model_of(registry, OrderV1, "orders", 1, "required-fields-only")
    with pytest.raises(DeliveryFailed, match="Message timed out") as caught:
        producer.send("orders", order).result(timeout=10)
    assert caught.value.retriable and caught.value.code == "_MSG_TIMED_OUT"
    with pytest.raises(DeliveryFailed):
        asyncio.run(producer.publish("orders", order))
    producer.close()


def test_close_flushes_and_a_closed_producer_refuses_to_send(registry, kafka) -> None:
    order = model_of(registry, OrderV1, "orders", 1, "required-fields-only")
    producer = EnvelopeProducer(registry=registry, client=kafka)
    producer.send("orders", order)
    assert producer.close() == 0
    assert kafka.flushed == 1
    with pytest.raises(EpistleError, match="closed"):
        producer.send("orders", order)


class UnreachableKafka(KafkaDouble):
    """A broker that never acknowledges: flush times out with every record left; purge (when ``purge``)
    fails them on the next poll, as librdkafka does."""

    def __init__(self, purge: bool = True) -> None:
        super().__init__()
        if not purge:
            self.purge = None  # type: ignore[assignment]

    def poll(self, timeout: float) -> int:
        time.sleep(min(timeout, 0.005))
        return 0

    def flush(self, timeout: float) -> int:
        self.flushed += 1
        return len(self._pending)

    def purge(self) -> None:
        with self._lock:
            pending, self._pending = self._pending, []
        for callback, msg in pending:
            callback(_Err("Local: Purged in queue"), msg)


@pytest.mark.parametrize("purge", [True, False])
def test_close_fails_the_records_the_broker_never_acknowledged(registry, purge: bool) -> None:
    order = model_of(registry, OrderV1, "orders", 1, "required-fields-only")
    kafka = UnreachableKafka(purge)
    producer = EnvelopeProducer(registry=registry, client=kafka)

    async def run() -> None:
        publishing = asyncio.ensure_future(producer.publish("orders", order))
        while not kafka.produced:
            await asyncio.sleep(0.01)
        assert await asyncio.to_thread(producer.close, 0.1) == 1
        with pytest.raises(DeliveryFailed):
            await asyncio.wait_for(publishing, 5)  # before the fix: pending forever

    asyncio.run(run())
    future = None
    with pytest.raises(EpistleError, match="closed"):
        future = producer.send("orders", order)
    assert future is None


def test_a_send_racing_with_close_is_delivered_or_refused_never_left_pending(registry) -> None:
    order = model_of(registry, OrderV1, "orders", 1, "required-fields-only")
    for _ in range(20):
        producer = EnvelopeProducer(registry=registry, client=UnreachableKafka())
        record = producer.build("orders", order)
        futures, refused = [], []
        started = threading.Event()

        def sender(producer=producer, record=record, futures=futures, refused=refused, started=started) -> None:
            started.set()
            for _ in range(200):
                try:
                    futures.append(producer.send_record(record))
                except EpistleError:
                    refused.append(1)
                    return

        thread = threading.Thread(target=sender)
        thread.start()
        started.wait()
        producer.close(0)
        thread.join(10)
        assert all(f.done() for f in futures), "a record produced during close was left pending"


def test_async_context_manager_flushes_on_exit(registry, kafka) -> None:
    order = model_of(registry, OrderV1, "orders", 1, "required-fields-only")

    async def run() -> None:
        async with EnvelopeProducer(registry=registry, client=kafka) as producer:
            await producer.publish("orders", order)

    asyncio.run(run())
    assert kafka.flushed == 1 and len(kafka.produced) == 1


# -- Confluent's wire format ------------------------------------------------------------------------------
def test_confluent_wire_format_for_an_avro_topic(registry, kafka) -> None:
    producer = EnvelopeProducer(registry=registry, client=kafka, confluent_topics=["shipments-cf"])
    shipment = model_of(registry, Shipment, "shipments", 2, "full-two-parcels")
    record = producer.build("shipments-cf", shipment, headers=[("trace", "t")])
    assert record.wire_format is WireFormat.CONFLUENT
    assert record.value[0] == 0 and int.from_bytes(record.value[1:5], "big") == 202 == record.schema_id
    _, compiled = registry.resolve("shipments", 2)
    read = fastavro.schemaless_reader(io.BytesIO(record.value[5:]), compiled.parsed, compiled.parsed)
    assert read["shippingCost"] == shipment.shipping_cost == Decimal(read["shippingCost"])
    assert isinstance(read["createdAt"], datetime) and read["createdAt"] == shipment.created_at
    headers = dict(record.headers)
    assert headers["trace"] == b"t" and headers["schemaName"] == b"shipments" and headers["schemaVersion"] == b"2"
    assert producer.build("shipments", shipment).wire_format is WireFormat.ENVELOPE  # per topic


def test_confluent_wire_format_for_a_json_schema_topic(registry, kafka) -> None:
    producer = EnvelopeProducer(registry=registry, client=kafka, confluent_topics=["orders-cf"])
    order = model_of(registry, Order, "orders", 2, "required-fields-only")
    record = producer.build("orders-cf", order)
    assert record.value[:5] == b"\x00" + (201).to_bytes(4, "big")
    assert json.loads(record.value[5:]).keys() == sample("orders", 2, "required-fields-only").keys()


def test_confluent_wire_format_needs_schema_ids(kafka) -> None:
    producer = EnvelopeProducer(
        registry=CachedRegistry(SchemasFolderDouble(with_ids=False)), client=kafka, confluent_topics=["orders"]
    )
    order = Order.model_validate(sample("orders", 2, "required-fields-only"))
    with pytest.raises(PublishRefused, match="SCHEMA_REGISTRY_URL"):
        producer.send("orders", order)
    assert kafka.produced == []


# -- configuration ----------------------------------------------------------------------------------------
def test_acks_all_and_idempotence_cannot_be_weakened(registry) -> None:
    producer = EnvelopeProducer("broker:9092", registry=registry, kafka_config={"linger.ms": 20})
    assert producer.config["acks"] == "all" and producer.config["enable.idempotence"] is True
    assert producer.config["bootstrap.servers"] == "broker:9092" and producer.config["linger.ms"] == 20
    assert producer.config["logger"].name == "toolkit.kafka"
    for bad in ({"acks": 1}, {"enable.idempotence": False}):
        with pytest.raises(ConfigError, match="acks=all and idempotence"):
            EnvelopeProducer(registry=registry, kafka_config=bad)


def test_producer_settings_from_the_environment(monkeypatch) -> None:
    monkeypatch.setenv("EPISTLE_PRODUCER_NAME", "billing")
    monkeypatch.setenv("EPISTLE_PRODUCER_CONFLUENT_TOPICS", "payments, refunds")
    settings = load_producer_settings(env_file=None)
    assert settings.name == "billing" and settings.confluent_topics == ["payments", "refunds"]
    producer = EnvelopeProducer(producer_settings=settings)
    assert producer.name == "billing" and producer.confluent_topics == {"payments", "refunds"}
    monkeypatch.setenv("EPISTLE_PRODUCER_FLUSH_TIMEOUT_S", "0")
    with pytest.raises(ConfigError, match="EPISTLE_PRODUCER_FLUSH_TIMEOUT_S"):
        load_producer_settings(env_file=None)


def test_producer_settings_from_a_dotenv_file_and_the_example(tmp_path, monkeypatch) -> None:
    for name in ("EPISTLE_PRODUCER_NAME", "EPISTLE_PRODUCER_CONFLUENT_TOPICS", "EPISTLE_PRODUCER_FLUSH_TIMEOUT_S"):
        monkeypatch.delenv(name, raising=False)
    example = load_producer_settings(env_file=ROOT / ".env.example")
    assert (example.name, example.confluent_topics, example.flush_timeout_s) == ("epistle-producer", [], 30.0)
    env = tmp_path / ".env"
    env.write_text("EPISTLE_PRODUCER_NAME=from-file\nEPISTLE_PRODUCER_CONFLUENT_TOPICS=a\n")
    settings = load_producer_settings(env_file=env)
    assert settings.name == "from-file" and settings.confluent_topics == ["a"]


# -- Avro big-decimal (fastavro has no writer for it) ------------------------------------------------------
BIG_DECIMAL = {
    "type": "record",
    "name": "Amount",
    "fields": [
        {"name": "value", "type": {"type": "bytes", "logicalType": "big-decimal"}},
        {"name": "maybe", "type": ["null", {"type": "bytes", "logicalType": "big-decimal"}], "default": None},
    ],
}


@pytest.mark.parametrize("text", ["0", "-1.50", "123456789012345678901234567890.123", "1E+5", "-128", "128"])
def test_big_decimals_round_trip_through_the_consumers_validator(text: str) -> None:
    from decimal import Decimal

    from toolkit.layout import SchemaFormat
    from toolkit.producer import avro_binary_body, avro_json_body
    from toolkit.registry.base import RegisteredSchema
    from toolkit.validation import compile_schema
    from toolkit.validation.avro import _read_big_decimal

    compiled = compile_schema(RegisteredSchema("amount", 1, SchemaFormat.AVRO, json.dumps(BIG_DECIMAL)))
    value = {"value": Decimal(text), "maybe": Decimal(text)}
    decoded = compiled.decode(avro_json_body(compiled.parsed, value))
    assert decoded == value and str(decoded["value"]) == text
    binary = fastavro.schemaless_reader(io.BytesIO(avro_binary_body(compiled.parsed, value)), compiled.parsed)
    # Raw bytes, unless toolkit.wire registered its big-decimal reader with fastavro in this process already
    # (fastavro's documented hook for custom logical types is process-wide): either way the same Decimal.
    raw = binary["value"]
    assert (raw if isinstance(raw, Decimal) else _read_big_decimal(raw)) == Decimal(text)


def test_avro_bodies_refuse_bad_values_with_epistle_errors() -> None:
    from toolkit.errors import InvalidArgument
    from toolkit.producer import avro_binary_body, avro_json_body

    parsed = fastavro.parse_schema(BIG_DECIMAL)
    for function in (avro_json_body, avro_binary_body):
        for value in ({"value": "x"}, "x", {"value": float("nan")}):
            with pytest.raises(InvalidArgument):
                function(parsed, value)
        with pytest.raises(InvalidArgument):
            function("not a schema", {"value": 1})


# -- per-topic formats as settings, and keys in the wire format -------------------------------------------
def test_value_and_key_formats_from_the_environment_parse_like_the_consumers(monkeypatch) -> None:
    monkeypatch.setenv("EPISTLE_PRODUCER_VALUE_FORMATS", "payments=confluent, *=envelope")
    monkeypatch.setenv("EPISTLE_PRODUCER_KEY_FORMATS", "payments=confluent")
    producer = EnvelopeProducer(producer_settings=load_producer_settings(env_file=None))
    assert producer.value_format("payments") == "confluent" and producer.value_format("other") == "envelope"
    assert producer.key_format("payments") == "confluent" and producer.key_format("other") == "raw"
    assert producer.confluent_topics == {"payments"}
    for variable, value, words in (
        ("EPISTLE_PRODUCER_VALUE_FORMATS", "payments=auto", "the format must be envelope or confluent; use e.g."),
        ("EPISTLE_PRODUCER_VALUE_FORMATS", "payments", "'payments' is not topic=format; use e.g."),
        ("EPISTLE_PRODUCER_KEY_FORMATS", "payments=envelope", "the format must be raw or confluent"),
    ):
        monkeypatch.setenv(variable, value)
        with pytest.raises(ConfigError) as info:
            load_producer_settings(env_file=None)
        assert info.value.setting == variable and words in str(info.value)
        monkeypatch.delenv(variable)


def test_formats_given_as_arguments_are_checked_and_agree_with_confluent_topics(registry) -> None:
    producer = EnvelopeProducer(registry=registry, value_formats={"*": "confluent"}, confluent_topics=["a"])
    assert producer.value_format("anything") == "confluent"
    with pytest.raises(ConfigError) as info:
        EnvelopeProducer(registry=registry, value_formats={"a": "envelope"}, confluent_topics=["a"])
    assert info.value.setting == "value_formats" and "list it in one of them" in str(info.value)
    for name, value in (("value_formats", {"a": "auto"}), ("key_formats", ["a"]), ("key_formats", {"a": "json"})):
        with pytest.raises(ConfigError) as info:
            EnvelopeProducer(registry=registry, **{name: value})
        assert info.value.setting == name


def test_a_model_key_is_written_in_the_wire_format_with_its_schema(registry, kafka) -> None:
    producer = EnvelopeProducer(registry=registry, client=kafka, key_formats={"payments": "confluent"})
    key = model_of(registry, OrderV1, "orders", 1, "required-fields-only")  # its subject: "orders" v1, id 101
    shipment = model_of(registry, Shipment, "shipments", 2, "full-two-parcels")
    record = producer.build("payments", shipment, key=key)
    assert record.key[:5] == b"\x00" + (101).to_bytes(4, "big")
    assert json.loads(record.key[5:]).keys() == sample("orders", 1, "required-fields-only").keys()
    assert record.wire_format is WireFormat.ENVELOPE  # the value's format is its own


def test_keys_that_do_not_fit_the_topics_key_format_are_refused(registry, kafka) -> None:
    producer = EnvelopeProducer(registry=registry, client=kafka, key_formats={"payments": "confluent"})
    shipment = model_of(registry, Shipment, "shipments", 2, "full-two-parcels")
    key = model_of(registry, OrderV1, "orders", 1, "required-fields-only")
    with pytest.raises(PublishRefused, match="the key must be a generated model, got a str"):
        producer.build("payments", shipment, key="k-1")
    with pytest.raises(PublishRefused, match="EPISTLE_PRODUCER_KEY_FORMATS=refunds=confluent"):
        producer.build("refunds", shipment, key=key)
    bad = OrderV1.model_construct(**{**key.__dict__, "order_id": 42})
    with pytest.raises(PublishRefused, match="key OrderV1|key Order") as info:
        producer.build("payments", shipment, key=bad)
    assert "fails its schema" in str(info.value)
    assert producer.build("refunds", shipment, key="k-1").key == b"k-1"
    assert kafka.produced == []
