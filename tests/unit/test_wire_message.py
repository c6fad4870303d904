"""The engine's fast lane for Confluent's wire format (``Pipeline.planned_wire``) and the message it makes,
whose header is synthesized when first read: the same message as the full path (``Pipeline.prepare``),
field for field, and a Message in every way a handler or a test can tell (equality, copy, pickle, replace,
repr)."""

from __future__ import annotations

import copy
import dataclasses
import pickle

import pytest

import toolkit.consumer.pipeline as pipeline_module
from tests.unit.test_wire import PAYMENT, PAYMENT_VALUE, Payment, avro_bytes, make, registry, wire  # noqa: F401
from toolkit.consumer.pipeline import Message, message_labels
from toolkit.errors import MessageError
from toolkit.testing import InMemoryRecord
from toolkit.wire import SchemaIdKey, header_fields, synthesize_header

STAMP = 1714564800000


def record(value: bytes, topic: str = "payments", offset: int = 7, headers=None, timestamp: int = STAMP):
    return InMemoryRecord(topic, 3, offset, b"k", value, headers, timestamp)


def fast(p, rec):
    """The fast lane's calls: locate, resolve on a miss (the runtime does it off the loop), planned_wire."""
    decoded, source = p.locate(rec.value(), rec.topic())
    if isinstance(source, SchemaIdKey):
        source = p.resolve(source)
        decoded, source = p.locate(rec.value(), rec.topic())
    return p.planned_wire(decoded, source, rec)


def full(p, rec):
    prepared = p.prepare(
        topic=rec.topic(),
        partition=rec.partition(),
        offset=rec.offset(),
        key=rec.key(),
        value=rec.value(),
        headers=rec.headers(),
        timestamp=rec.timestamp()[1],
    )
    return prepared.message, prepared.route


HEADERS = [
    ("messageId", b"m-9"),
    ("correlationId", b"c-9"),
    ("timestamp", b"2024-05-01T12:00:00+02:00"),
    ("traceparent", b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
]


TYPED = [*HEADERS, ("messageType", b"Refund"), ("schemaName", b"payments")]


@pytest.mark.parametrize(
    "headers, message_type",
    [(None, "com.acme.Payment"), (HEADERS, "com.acme.Payment"), (TYPED, "Refund")],
    ids=["no Kafka headers", "header fields as Kafka headers", "messageType and schemaName as Kafka headers"],
)
def test_the_fast_lane_makes_the_message_the_full_path_makes(registry, monkeypatch, headers, message_type) -> None:  # noqa: F811
    p = make(registry)
    p.router.register("payments", lambda m: True, message_type="Refund")
    value = wire(1, avro_bytes(PAYMENT, PAYMENT_VALUE))
    general = p._finish_wire
    through: list[int] = []

    def counted(decoded, wire_, topic, partition, offset, *rest):
        through.append(offset)
        return general(decoded, wire_, topic, partition, offset, *rest)

    monkeypatch.setattr(p, "_finish_wire", counted)
    for offset in (7, 8):  # the first record plans (the general path), the second takes the plan
        message, route = fast(p, record(value, offset=offset, headers=headers))
        expected, expected_route = full(p, record(value, offset=offset, headers=headers))
        assert route is expected_route
        assert message == expected and expected == message
        assert isinstance(message, Message) and repr(message).startswith("Message(")
        # the header made as synthesize_header makes it from the record, not only as the full path does
        assert message.header == synthesize_header(
            header_fields(headers),
            message_type=message_type,
            schema_name="payments",
            version=1,
            topic="payments",
            partition=3,
            offset=offset,
            timestamp=STAMP,
        )
        assert message.body == Payment(**PAYMENT_VALUE)
        assert (message.schema_id, message.subject, message.attempt, message.key_value) == (1, "payments", 1, None)
    assert through == [7, 7, 8]  # (7: the fast lane's and the full path's first record; 8: the full path only)


def test_a_json_payload_is_validated_on_the_fast_lane_too(registry) -> None:  # noqa: F811
    p = make(registry)
    fast(p, record(wire(2, b'{"n": 5}'), topic="orders"))  # planned
    with pytest.raises(MessageError) as info:
        fast(p, record(wire(2, b'{"n": "five"}'), topic="orders", offset=8))
    assert info.value.stage == "validation"


def test_the_header_is_made_once_when_first_read(registry, monkeypatch) -> None:  # noqa: F811
    made: list[str] = []
    synthesize = pipeline_module.synthesize_header

    def counted(fields, **context):
        made.append(context["topic"])
        return synthesize(fields, **context)

    monkeypatch.setattr(pipeline_module, "synthesize_header", counted)
    p = make(registry)
    value = wire(1, avro_bytes(PAYMENT, PAYMENT_VALUE))
    fast(p, record(value))
    message, _ = fast(p, record(value, offset=8))
    made.clear()
    assert message.body == Payment(**PAYMENT_VALUE) and message.offset == 8
    assert made == []  # not read: not made
    header = message.header
    assert message.header is header and made == ["payments"]
    assert (header.message_id, header.correlation_id) == ("payments/3/8", "payments/3/8")
    assert header.timestamp == "2024-05-01T12:00:00.000+00:00"  # the broker's time, whenever it is read


def test_a_record_without_a_broker_time_gets_its_header_at_once(registry, monkeypatch) -> None:  # noqa: F811
    p = make(registry)
    value = wire(1, avro_bytes(PAYMENT, PAYMENT_VALUE))
    fast(p, record(value))
    rec = InMemoryRecord("payments", 3, 8, None, value, None, 0)
    rec._timestamp = None  # (a record with no timestamp, as librdkafka's TIMESTAMP_NOT_AVAILABLE)
    message, _ = fast(p, rec)
    monkeypatch.setattr(pipeline_module, "synthesize_header", None)  # (made now, it would raise)
    assert message.timestamp is None and message.header.timestamp.endswith("+00:00")


def test_copy_pickle_replace_and_repr_are_a_messages(registry) -> None:  # noqa: F811
    p = make(registry)
    value = wire(1, avro_bytes(PAYMENT, PAYMENT_VALUE))
    fast(p, record(value))
    message, _ = fast(p, record(value, offset=8))

    copied = copy.copy(message)  # (the engine's copy for a retry under a time limit)
    assert copied == message and message_labels(copied) == ("com.acme.Payment", "1")
    copied.attempt = 2
    assert message.attempt == 1 and copied.header == message.header and copied.body is message.body
    deep = copy.deepcopy(message)
    assert type(deep) is Message and deep == message

    unpickled = pickle.loads(pickle.dumps(message))
    assert type(unpickled) is Message and unpickled == message

    replaced = dataclasses.replace(message, attempt=3)
    assert replaced.attempt == 3 and replaced.header == message.header and replaced.offset == 8
    assert copy.copy(replaced) == replaced  # (replace sets the header: nothing left to make)

    assert "header=Header(" in repr(message) and "offset=8" in repr(message)
    assert [f.name for f in dataclasses.fields(message)] == [f.name for f in dataclasses.fields(Message)]

    other = dataclasses.replace(message, header=message.header.model_copy(update={"producer": "me"}))
    message.header = other.header  # a handler (or a middleware) may set it
    assert message.header.producer == "me" and message == other
    assert message != dataclasses.replace(message, offset=9)


def test_metrics_labels_come_without_making_the_header(registry, monkeypatch) -> None:  # noqa: F811
    p = make(registry)
    value = wire(1, avro_bytes(PAYMENT, PAYMENT_VALUE))
    fast(p, record(value))
    message, _ = fast(p, record(value, offset=8))
    monkeypatch.setattr(pipeline_module, "synthesize_header", None)  # (made now, it would raise)
    assert message_labels(message) == ("com.acme.Payment", "1")
    monkeypatch.undo()
    message.header = message.header.model_copy(update={"message_type": "Refund"})
    assert message_labels(message) == ("Refund", "1")  # a header set is the one read


@pytest.mark.parametrize("stamp", [253402300800000, 2**62], ids=["year 10000", "far beyond"])
def test_a_broker_time_datetime_cannot_hold_makes_the_header_at_once(registry, monkeypatch, stamp) -> None:  # noqa: F811
    p = make(registry)
    value = wire(1, avro_bytes(PAYMENT, PAYMENT_VALUE))
    fast(p, record(value))
    message, _ = fast(p, record(value, offset=8, timestamp=stamp))
    monkeypatch.setattr(pipeline_module, "synthesize_header", None)  # (made now, it would raise)
    assert message.timestamp == stamp and message.header.timestamp.endswith("+00:00")  # (the time it was read)
