"""Reading Confluent's wire format: the prefix, the payload readers, the value formats and their settings,
the synthesized header, and the pipeline end to end over an in-memory registry with real validators."""

from __future__ import annotations

import io
import json
import struct
from datetime import UTC, datetime
from decimal import Decimal

import fastavro
import pytest
from pydantic import BaseModel, ConfigDict

from tests.unit.test_registry_fake import InMemoryRegistry
from toolkit.consumer.handlers import HandlerRegistry
from toolkit.consumer.options import check_consumer_options
from toolkit.consumer.pipeline import Pipeline
from toolkit.errors import ConfigError, MessageError, RegistryUnavailable, SchemaNotFound, SchemaNotYetKnown
from toolkit.layout import SchemaFormat
from toolkit.producer import _write_big_decimal
from toolkit.registry import CachedRegistry, LocalFolderRegistry, topic_value_strategy
from toolkit.settings import load_settings
from toolkit.wire import (
    SchemaIdKey,
    ValueFormat,
    WireRecord,
    WireSchema,
    avro_reader,
    header_fields,
    json_reader,
    parse_value_formats,
    split,
    synthesize_header,
)

PAYMENT = {
    "type": "record",
    "name": "Payment",
    "namespace": "com.acme",
    "fields": [
        {"name": "id", "type": "string"},
        {"name": "amount", "type": {"type": "bytes", "logicalType": "decimal", "precision": 10, "scale": 2}},
        {"name": "at", "type": {"type": "long", "logicalType": "timestamp-millis"}},
        {"name": "note", "type": ["null", "string"], "default": None},
    ],
}
ORDER = {
    "title": "Order",
    "type": "object",
    "properties": {"n": {"type": "integer"}},
    "required": ["n"],
    "additionalProperties": False,
}
AT = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


class Payment(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str
    amount: Decimal
    at: datetime
    note: str | None = None


class Order(BaseModel):
    model_config = ConfigDict(extra="forbid")
    n: int


class Models:
    """A model index that can list its names, like ModelIndex."""

    def __init__(self, entries: dict) -> None:
        self.entries = entries

    def get(self, name, version):
        return self.entries.get((name, version))

    def __iter__(self):
        return iter(sorted(self.entries))

    def __contains__(self, key):
        return key in self.entries


MODELS = Models({("payments", 1): Payment, ("orders", 1): Order})


def avro_bytes(schema, value) -> bytes:
    buffer = io.BytesIO()
    fastavro.schemaless_writer(buffer, fastavro.parse_schema(schema), value)
    return buffer.getvalue()


def wire(schema_id: int, payload: bytes) -> bytes:
    return struct.pack(">bI", 0, schema_id) + payload


PAYMENT_VALUE = {"id": "p-1", "amount": Decimal("12.34"), "at": AT, "note": None}


@pytest.fixture
def registry() -> InMemoryRegistry:
    backend = InMemoryRegistry()
    backend.register("payments", json.dumps(PAYMENT), SchemaFormat.AVRO)  # id 1
    backend.register("orders", json.dumps(ORDER), SchemaFormat.JSON)  # id 2
    backend.calls.clear()
    return backend


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def make(
    registry,
    *,
    formats=None,
    models=MODELS,
    strategy=None,
    grace=0.0,
    clock=None,
    topics=("payments", "orders", "mixed"),
) -> Pipeline:
    router = HandlerRegistry()
    for topic in topics:
        router.register(topic, lambda m: True)
    options = {} if strategy is None else {"subject_strategy": strategy}
    return Pipeline(
        CachedRegistry(registry),
        router,
        models,
        value_formats=formats
        if formats is not None
        else {"payments": "confluent", "orders": "confluent", "mixed": "auto"},
        unknown_schema_grace_s=grace,
        clock=clock or Clock(),
        **options,
    )


def prepare(p: Pipeline, value, topic="payments", headers=None, offset=7):
    return p.prepare(
        topic=topic, partition=3, offset=offset, key=b"k", value=value, headers=headers, timestamp=1714564800000
    )


def stage_of(p: Pipeline, value, topic="payments", headers=None) -> MessageError:
    with pytest.raises(MessageError) as info:
        prepare(p, value, topic, headers)
    return info.value


# -- the prefix ---------------------------------------------------------------------------------------------


def test_split_reads_the_schema_id_big_endian_and_keeps_the_payload():
    record = split(b"\x00\x01\x02\x03\x04rest")
    assert record == WireRecord(0x01020304, b"rest") and record.header is None
    assert split(b"\x00\xff\xff\xff\xff").schema_id == 2**32 - 1  # unsigned
    assert split(bytearray(b"\x00\x00\x00\x00\x05")).payload == b""


@pytest.mark.parametrize(
    ("value", "words"),
    [
        (None, "no value (a tombstone)"),
        ("text", "is a str, not bytes"),
        (b"", "empty"),
        (b"\x01\x00\x00\x00\x05abc", "magic byte is 0x01, not 0"),
        (b'{"header": {}}', "magic byte is 0x7b ('{'), not 0: not Confluent's wire format: the value looks like JSON"),
        (b"\x00", "truncated: 1 byte(s)"),
        (b"\x00\x00\x00\x05", "truncated: 4 byte(s)"),
    ],
)
def test_split_refuses_what_is_not_the_wire_format_at_decode(value, words):
    with pytest.raises(MessageError) as info:
        split(value)
    assert info.value.stage == "decode" and words in info.value.reason


# -- payload readers ----------------------------------------------------------------------------------------


def test_avro_reader_decodes_logical_types_and_unions():
    read = avro_reader(PAYMENT, 1)
    value = read(avro_bytes(PAYMENT, {**PAYMENT_VALUE, "note": "hi"}))
    assert value == {"id": "p-1", "amount": Decimal("12.34"), "at": AT, "note": "hi"}


def test_avro_reader_reads_big_decimal_as_java_writes_it():
    schema = {
        "type": "record",
        "name": "B",
        "fields": [{"name": "d", "type": {"type": "bytes", "logicalType": "big-decimal"}}],
    }
    data = _write_big_decimal(Decimal("-123.4500"))
    payload = bytes([len(data) << 1]) + data  # Avro bytes: zig-zag length, then the bytes
    assert avro_reader(schema, 5)(payload) == {"d": Decimal("-123.4500")}


@pytest.mark.parametrize(
    ("payload", "words"),
    [
        (avro_bytes(PAYMENT, PAYMENT_VALUE)[:-3], "not Avro binary of schema id 1"),
        (avro_bytes(PAYMENT, PAYMENT_VALUE) + b"\x00\x00", "2 byte(s) left over"),
        (b"", "not Avro binary of schema id 1 (0 bytes)"),
        (b"\x06\xff\xfe\xfd", "not Avro binary"),  # a string that is not UTF-8
        (avro_bytes(PAYMENT, PAYMENT_VALUE)[:-1] + b"\x08", "not Avro binary"),  # union index 4 of 2 branches
    ],
)
def test_avro_reader_refuses_undecodable_payloads_at_decode(payload, words):
    with pytest.raises(MessageError) as info:
        avro_reader(PAYMENT, 1)(payload)
    assert info.value.stage == "decode" and words in info.value.reason


def test_avro_reader_names_a_payload_written_with_another_schema():
    other = {"type": "record", "name": "O", "fields": [{"name": "a", "type": "long"}] * 1}
    with pytest.raises(MessageError) as info:
        avro_reader(other, 9)(avro_bytes(PAYMENT, PAYMENT_VALUE))
    assert info.value.stage == "decode" and "written with another schema?" in info.value.reason


@pytest.mark.parametrize(
    ("payload", "words"),
    [
        (b"\xff", "not UTF-8"),
        (b"{", "not JSON"),
        (b'{"n": NaN}', "NaN is not valid JSON"),
        (b"[" * 50 + b"]" * 50, "nested deeper than 10 levels"),
    ],
)
def test_json_reader_refuses_at_decode(payload, words):
    with pytest.raises(MessageError) as info:
        json_reader(2, 10)(payload)
    assert info.value.stage == "decode" and "JSON payload of schema id 2" in info.value.reason
    assert words in info.value.reason


# -- value formats: setting and option ---------------------------------------------------------------------


def test_value_formats_parse_pairs_json_and_mappings():
    assert parse_value_formats(" a=confluent, b=AUTO ,*=envelope,") == {
        "a": ValueFormat.CONFLUENT,
        "b": ValueFormat.AUTO,
        "*": ValueFormat.ENVELOPE,
    }
    assert parse_value_formats('{"a": "confluent"}') == parse_value_formats({"a": ValueFormat.CONFLUENT})
    assert parse_value_formats("") == {}


@pytest.mark.parametrize(
    ("value", "words"),
    [
        ("a=avro", "a='avro': the format must be envelope, confluent or auto"),
        ("a", "'a' is not topic=format"),
        ("a b=auto", "'a b' is not a topic name"),
        ("=auto", "is not a topic name"),
        ('{"a": ', "not a JSON object"),
        (["a"], "is not a topic=format pair"),
        (5, "expected topic=format pairs"),
    ],
)
def test_bad_value_formats_say_the_fix(value, words):
    with pytest.raises(ValueError) as info:
        parse_value_formats(value)
    assert words in str(info.value) and "e.g. payments=confluent,orders=auto" in str(info.value)


def test_the_setting_is_read_and_bad_values_name_it(monkeypatch):
    monkeypatch.setenv("EPISTLE_VALUE_FORMATS", "payments=confluent,orders=auto")
    assert load_settings(None).consumer.value_formats == {"payments": "confluent", "orders": "auto"}
    monkeypatch.setenv("EPISTLE_VALUE_FORMATS", "payments=protobuf")
    with pytest.raises(ConfigError) as info:
        load_settings(None)
    assert info.value.setting == "EPISTLE_VALUE_FORMATS" and "payments='protobuf'" in str(info.value)
    monkeypatch.delenv("EPISTLE_VALUE_FORMATS")
    assert load_settings(None).consumer.value_formats == {}  # the default: every topic an envelope


@pytest.mark.parametrize("value", [{"a": "xml"}, "a=confluent", {"": "auto"}])
def test_the_consumer_option_is_checked_like_the_others(value):
    with pytest.raises(ConfigError) as info:
        check_consumer_options({"value_formats": value})
    assert info.value.setting == "value_formats" and "EPISTLE_VALUE_FORMATS" in str(info.value)


def test_a_registry_without_ids_is_refused_when_the_pipeline_is_built(tmp_path):
    router = HandlerRegistry()
    with pytest.raises(ConfigError) as info:
        Pipeline(CachedRegistry(LocalFolderRegistry(tmp_path)), router, value_formats={"payments": "auto"})
    assert info.value.setting == "SCHEMA_REGISTRY_URL" and "payments" in str(info.value)
    assert "has no schema ids" in str(info.value)
    Pipeline(CachedRegistry(LocalFolderRegistry(tmp_path)), router)  # envelopes only: fine


# -- the synthesized header ---------------------------------------------------------------------------------


def test_header_without_kafka_headers_is_derived_from_the_record():
    header = synthesize_header(
        {},
        message_type="com.acme.Payment",
        schema_name="payments",
        version=2,
        topic="pay",
        partition=1,
        offset=42,
        timestamp=1714564800000,
    )
    assert header.message_id == "pay/1/42" == header.correlation_id
    assert (header.schema_name, header.version, header.message_type) == ("payments", 2, "com.acme.Payment")
    assert header.timestamp == "2024-05-01T12:00:00.000+00:00" and header.producer == ""


def test_header_fields_come_from_kafka_headers_when_valid():
    headers = [
        ("messageId", b"m-1"),
        ("correlationId", b"c-1"),
        ("producer", b"billing"),
        ("timestamp", b"2024-01-02T03:04:05+01:00"),
        ("other", b"x"),
        ("messageId", b"m-2"),
    ]
    fields = header_fields(headers)
    assert fields == {
        "messageId": "m-2",
        "correlationId": "c-1",
        "producer": "billing",
        "timestamp": "2024-01-02T03:04:05+01:00",
    }
    header = synthesize_header(
        fields, message_type="T", schema_name="s", version=1, topic="t", partition=0, offset=0, timestamp=None
    )
    assert (header.message_id, header.correlation_id, header.producer) == ("m-2", "c-1", "billing")
    assert header.timestamp == "2024-01-02T03:04:05+01:00"


def test_unusable_kafka_headers_are_ignored():
    fields = header_fields(
        [("messageId", b"\xff"), ("correlationId", b""), ("timestamp", b"yesterday"), ("producer", None)]
    )
    header = synthesize_header(
        fields, message_type="T", schema_name="s", version=1, topic="t", partition=0, offset=9, timestamp=0
    )
    assert header.message_id == "t/0/9" == header.correlation_id
    assert header.timestamp == "1970-01-01T00:00:00.000+00:00"


# -- the pipeline --------------------------------------------------------------------------------------------


def test_an_avro_record_reaches_the_handler_as_its_model(registry):
    p = make(registry)
    payload = avro_bytes(PAYMENT, PAYMENT_VALUE)
    message = prepare(p, wire(1, payload)).message
    assert message.body == Payment(**PAYMENT_VALUE)
    assert (message.schema_id, message.subject, message.header.schema_name, message.header.version) == (
        1,
        "payments",
        "payments",
        1,
    )
    assert message.header.message_type == "com.acme.Payment"  # the record's full name
    assert message.header.message_id == "payments/3/7" and message.raw == wire(1, payload)
    assert message.timestamp == 1714564800000 and message.key == b"k"


def test_a_json_schema_record_is_validated_then_built(registry):
    p = make(registry)
    message = prepare(p, wire(2, b'{"n": 5}'), topic="orders").message
    assert message.body == Order(n=5) and message.header.message_type == "Order"  # the schema's title
    error = stage_of(p, wire(2, b'{"n": "five"}'), topic="orders")
    assert error.stage == "validation"
    assert stage_of(p, wire(2, b'{"n": 5'), topic="orders").stage == "decode"


def test_every_failure_has_its_stage(registry):
    p = make(registry)
    good = avro_bytes(PAYMENT, PAYMENT_VALUE)
    assert stage_of(p, b"\x01" + wire(1, good)[1:]).stage == "decode"  # magic byte
    assert stage_of(p, b"\x00\x00\x01").stage == "decode"  # short
    assert stage_of(p, wire(1, good[:-2])).stage == "decode"  # undecodable Avro
    assert stage_of(p, None).stage == "decode"  # tombstone
    assert stage_of(p, wire(77, good)).stage == "schema"  # unknown id, grace 0
    p = make(registry, formats={"*": "confluent"})
    assert stage_of(p, wire(1, good), topic="nobody").stage == "routing"
    none = make(registry, models=Models({}))
    error = stage_of(none, wire(1, good))
    assert error.stage == "model" and "no generated model for payments v1 (schema id 1" in error.reason


def test_the_schema_is_resolved_once_per_id(registry):
    p = make(registry)
    for offset in range(5):
        prepare(p, wire(1, avro_bytes(PAYMENT, PAYMENT_VALUE)), offset=offset)
    assert registry.calls["get_by_id"] == 1
    assert isinstance(p.cached(SchemaIdKey(1)), WireSchema)


def test_locate_gives_the_key_then_the_schema_for_the_runtime(registry):
    p = make(registry)
    value = wire(1, avro_bytes(PAYMENT, PAYMENT_VALUE))
    decoded, source = p.locate(value, "payments")
    assert isinstance(decoded, WireRecord) and source == SchemaIdKey(1) and isinstance(source, tuple)
    resolved = p.resolve(source)
    assert p.locate(value, "payments")[1] is resolved
    prepared = p.finish(
        decoded, resolved, topic="payments", partition=0, offset=1, key=None, value=value, headers=None, timestamp=None
    )
    assert prepared.message.schema_id == 1
    # the runtime's current calls, with the topic passed to decode
    decoded = p.decode(value, "payments")
    assert p.plan("payments", decoded.header) is None and p.subject_of("payments", decoded) == SchemaIdKey(1)


def test_an_unknown_id_waits_out_the_grace_then_is_dead_lettered(registry):
    clock = Clock()
    p = make(registry, grace=10.0, clock=clock)
    value = wire(3, avro_bytes(PAYMENT, PAYMENT_VALUE))
    with pytest.raises(SchemaNotYetKnown) as info:
        prepare(p, value)
    assert "schema id 3 not in the registry (yet)" in str(info.value) and info.value.grace_s == 10.0
    clock.now += 11
    error = stage_of(p, value)
    assert error.stage == "schema" and "unknown schema: schema id 3" in error.reason
    assert error.details[0]["path"] == "/schemaId"


def test_an_id_registered_meanwhile_is_found_by_the_retry(registry):
    clock = Clock()
    p = make(registry, grace=10.0, clock=clock, models=Models({("payments", 2): Payment}))
    with pytest.raises(SchemaNotYetKnown):
        prepare(p, wire(3, avro_bytes(PAYMENT, PAYMENT_VALUE)))
    registry.register("payments", json.dumps({**PAYMENT, "doc": "v2"}), SchemaFormat.AVRO)  # id 3
    clock.now += 1  # within the negative cache's TTL: the retry asks again all the same
    message = prepare(p, wire(3, avro_bytes(PAYMENT, PAYMENT_VALUE))).message
    assert (message.schema_id, message.header.version) == (3, 2)


def test_an_unreachable_registry_is_transient(registry):
    registry.down = True
    with pytest.raises(RegistryUnavailable):
        prepare(make(registry), wire(1, avro_bytes(PAYMENT, PAYMENT_VALUE)))


def test_an_id_of_a_subject_the_topic_does_not_read_is_unknown_for_that_topic(registry):
    clock = Clock()
    p = make(registry, strategy=topic_value_strategy, grace=10.0, clock=clock)
    registry.share_id("payments-value", 1)
    value = wire(1, avro_bytes(PAYMENT, PAYMENT_VALUE))
    assert prepare(p, value).message.subject == "payments-value"
    with pytest.raises(SchemaNotYetKnown) as info:
        prepare(p, value, topic="orders")  # registered as payments, payments-value; orders reads orders-value
    assert "none of them a subject topic 'orders' reads" in str(info.value)
    clock.now += 11
    error = stage_of(p, value, topic="orders")
    assert error.stage == "schema" and "'payments-value' v1" in error.reason


def test_the_retry_finds_the_id_registered_under_the_topics_subject_meanwhile(registry):
    p = make(registry, strategy=topic_value_strategy, grace=10.0)
    value = wire(1, avro_bytes(PAYMENT, PAYMENT_VALUE))
    with pytest.raises(SchemaNotYetKnown):
        prepare(p, value)
    registry.share_id("payments-value", 1)
    message = prepare(p, value).message
    assert (message.subject, message.header.schema_name) == ("payments-value", "payments")


def test_topic_value_strategy_picks_the_schema_name_of_the_topic_among_several(registry):
    registry.share_id("payments-value", 1)
    models = Models({("payments", 1): Payment, ("refunds", 1): Payment})
    p = make(registry, models=models, strategy=topic_value_strategy)
    assert prepare(p, wire(1, avro_bytes(PAYMENT, PAYMENT_VALUE))).message.header.schema_name == "payments"
    router = HandlerRegistry()
    router.register("billing", lambda m: True)
    p = Pipeline(
        CachedRegistry(registry),
        router,
        models,
        subject_strategy=topic_value_strategy,
        value_formats={"billing": "confluent"},
    )
    registry.share_id("billing-value", 1)
    error = stage_of(p, wire(1, avro_bytes(PAYMENT, PAYMENT_VALUE)), topic="billing")
    assert (
        error.stage == "schema"
        and "fits several schemaNames with a generated model (payments, refunds)" in error.reason
    )
    headers = [("schemaName", b"refunds")]  # what the toolkit's producer writes
    message = prepare(p, wire(1, avro_bytes(PAYMENT, PAYMENT_VALUE)), topic="billing", headers=headers).message
    assert (message.header.schema_name, message.subject) == ("refunds", "billing-value")


def test_kafka_headers_override_the_message_type_and_ids(registry):
    p = make(registry)
    p.router.register("payments", lambda m: True, message_type="Refund")
    headers = [("messageType", b"Refund"), ("messageId", b"m-9"), ("correlationId", b"c-9")]
    prepared = prepare(p, wire(1, avro_bytes(PAYMENT, PAYMENT_VALUE)), headers=headers)
    header = prepared.message.header
    assert (header.message_type, header.message_id, header.correlation_id) == ("Refund", "m-9", "c-9")
    assert prepared.message.headers == headers


def test_auto_reads_both_kinds_and_envelope_topics_name_the_wire_format(registry):
    p = make(registry, models=None)
    envelope = json.dumps(
        {
            "header": {
                "messageType": "Order",
                "schemaName": "orders",
                "schemaVersion": "1",
                "correlationId": "c",
                "messageId": "m",
                "timestamp": "2024-05-01T12:00:00Z",
                "producer": "p",
            },
            "body": {"n": 1},
        }
    ).encode()
    assert prepare(p, envelope, topic="mixed").message.schema_id is None
    message = prepare(p, wire(2, b'{"n": 1}'), topic="mixed").message
    assert (message.body, message.schema_id, message.subject) == ({"n": 1}, 2, "orders")
    p.router.register("plain", lambda m: True)
    error = stage_of(p, wire(2, b'{"n": 1}'), topic="plain")
    assert error.stage == "decode" and "set its value format to confluent or auto" in error.reason
    assert stage_of(p, envelope, topic="payments").stage == "decode"  # a confluent topic refuses envelopes


def test_a_star_entry_sets_the_format_of_every_other_topic(registry):
    p = make(registry, formats={"*": "confluent", "legacy": "envelope"}, topics=("anything", "legacy"))
    assert p.value_format("anything") is ValueFormat.CONFLUENT and p.value_format("legacy") is ValueFormat.ENVELOPE
    assert isinstance(p.decode(wire(1, b"")), WireRecord)  # no topic: the * format
    assert prepare(p, wire(1, avro_bytes(PAYMENT, PAYMENT_VALUE)), topic="anything").message.schema_id == 1


def test_forgetting_plans_forgets_wire_routes(registry):
    p = make(registry)
    value = wire(1, avro_bytes(PAYMENT, PAYMENT_VALUE))
    first = prepare(p, value).route
    p.router.register("payments", lambda m: False, message_type="com.acme.Payment")
    assert prepare(p, value).route is first  # the plan is remembered ...
    p.forget_plans()
    assert prepare(p, value).route is not first  # ... until the handlers change


def test_a_schema_the_validator_cannot_compile_is_dead_lettered_at_schema(registry):
    registry.store["broken"] = []
    schema = registry.register("broken", '{"type": "nonsense"}', SchemaFormat.AVRO)
    error = stage_of(make(registry), wire(schema.schema_id, b""))
    assert error.stage == "schema" and f"schema id {schema.schema_id} cannot be used" in error.reason


# -- the registry side ---------------------------------------------------------------------------------------


def test_cached_registry_remembers_ids_and_misses(registry):
    cache = CachedRegistry(registry, not_found_ttl_s=60)
    schema, compiled = cache.resolve_id(1)
    assert schema.versions == (("payments", 1),) and cache.resolve_id(1)[1] is compiled
    for _ in range(3):
        with pytest.raises(SchemaNotFound):
            cache.resolve_id(99)
    assert registry.calls["get_by_id"] == 2  # one hit, one miss remembered
    registry.share_id("payments-value", 1)
    fresh, again = cache.resolve_id(1, fresh=True)
    assert fresh.versions == (("payments", 1), ("payments-value", 1)) and again is compiled  # not recompiled
    with pytest.raises(SchemaNotFound):
        cache.resolve_id(99, fresh=True)
    assert registry.calls["get_by_id"] == 5  # share_id asked once too


def test_cached_registry_over_a_backend_without_ids_says_so(tmp_path):
    cache = CachedRegistry(LocalFolderRegistry(tmp_path))
    assert cache.supports_schema_ids is False
    with pytest.raises(ConfigError) as info:
        cache.resolve_id(1)
    assert info.value.setting == "SCHEMA_REGISTRY_URL"
    with pytest.raises(ConfigError):
        LocalFolderRegistry(tmp_path).get_by_id(1)


def test_among_several_schema_names_the_one_whose_model_is_named_like_the_record_is_taken(registry):
    registry.share_id("billing-value", 1)
    router = HandlerRegistry()
    router.register("billing", lambda m: True)
    p = Pipeline(
        CachedRegistry(registry),
        router,
        MODELS,
        subject_strategy=topic_value_strategy,
        value_formats={"billing": "confluent"},
    )  # payments -> Payment, orders -> Order
    message = prepare(p, wire(1, avro_bytes(PAYMENT, PAYMENT_VALUE)), topic="billing").message
    assert (message.header.schema_name, message.subject, type(message.body)) == ("payments", "billing-value", Payment)


def test_a_schema_whose_reference_the_registry_lacks_says_which(registry):
    class WithReferences(InMemoryRegistry):
        def get_by_id(self, schema_id):
            found = super().get_by_id(schema_id)
            return type(found)(
                found.schema_id,
                found.format,
                found.text,
                found.versions,
                ({"name": "com.acme.Money", "subject": "money", "version": 1},),
            )

    backend = WithReferences()
    uses = {"type": "record", "name": "Price", "fields": [{"name": "amount", "type": "com.acme.Money"}]}
    schema = backend.register("prices", json.dumps(uses), SchemaFormat.AVRO)
    router = HandlerRegistry()
    router.register("prices", lambda m: True)
    p = Pipeline(CachedRegistry(backend), router, value_formats={"prices": "confluent"})
    error = stage_of(p, wire(schema.schema_id, b""), topic="prices")
    assert error.stage == "schema"
    assert "reference 'com.acme.Money' names money version 1, which the registry does not have" in error.reason
    assert "register the referenced schema first" in error.reason


def test_a_schema_with_references_is_read_with_the_referenced_types(registry):
    money = {"type": "record", "name": "Money", "namespace": "com.acme", "fields": [{"name": "cents", "type": "long"}]}
    uses = {"type": "record", "name": "Price", "fields": [{"name": "amount", "type": "com.acme.Money"}]}

    class WithReferences(InMemoryRegistry):
        def get_by_id(self, schema_id):
            found = super().get_by_id(schema_id)
            refs = ({"name": "com.acme.Money", "subject": "money", "version": 1},) if "Price" in found.text else ()
            return type(found)(found.schema_id, found.format, found.text, found.versions, refs)

    backend = WithReferences()
    backend.register("money", json.dumps(money), SchemaFormat.AVRO)
    schema = backend.register("prices", json.dumps(uses), SchemaFormat.AVRO)
    router = HandlerRegistry()
    seen = []
    router.register("prices", seen.append)
    p = Pipeline(CachedRegistry(backend), router, value_formats={"prices": "confluent"})
    writer = {**uses, "fields": [{"name": "amount", "type": money}]}
    prepared = prepare(p, wire(schema.schema_id, avro_bytes(writer, {"amount": {"cents": 250}})), topic="prices")
    assert prepared.message.body == {"amount": {"cents": 250}}


@pytest.mark.parametrize(
    ("schema", "repeated"),
    [
        (
            {"type": "record", "name": "R", "fields": [{"name": "xs", "type": {"type": "array", "items": "null"}}]},
            "null",
        ),
        (
            {
                "type": "record",
                "name": "R",
                "fields": [
                    {"name": "e", "type": {"type": "record", "name": "E", "fields": []}},
                    {"name": "m", "type": {"type": "map", "values": "E"}},
                ],
            },
            "E",
        ),
        ({"type": "array", "items": {"type": "fixed", "name": "F", "size": 0}}, "fixed"),
    ],
)
def test_a_schema_repeating_items_of_no_bytes_is_refused_before_fastavro_loops(schema, repeated) -> None:
    from toolkit.wire import avro_reader

    # a block count of 2**62 items of no bytes each: fastavro would loop (and allocate) for ever
    claim = b"\xfe\xff\xff\xff\xff\xff\xff\xff\x7f\x00"
    with pytest.raises(MessageError) as err:
        avro_reader(schema, 7)(claim if schema.get("type") == "array" else b"\x00" + claim)
    assert err.value.stage == "schema" and repeated in str(err.value) and "schema id 7" in str(err.value)


def test_schemas_whose_repeated_items_take_bytes_are_read_as_usual() -> None:
    import json as _json
    from pathlib import Path

    from toolkit.wire import zero_width_repeat

    recursive = {
        "type": "record",
        "name": "Node",
        "fields": [
            {"name": "next", "type": ["null", "Node"]},
            {"name": "kids", "type": {"type": "array", "items": "Node"}},
        ],
    }
    assert zero_width_repeat(recursive) is None
    for path in sorted(Path(__file__).resolve().parents[2].glob("schemas/*/*.avsc")):
        assert zero_width_repeat(_json.loads(path.read_text())) is None, path


def test_the_synthesized_header_is_what_model_construct_makes() -> None:
    from toolkit.envelope import Header
    from toolkit.wire import _check_construct, _construct

    assert _check_construct() is _construct  # this pydantic keeps a model's state as the fast path sets it
    fields = {
        "message_type": "com.acme.Payment",
        "schema_name": "payments",
        "schema_version": "3",
        "correlation_id": "c",
        "message_id": "m",
        "timestamp": "2024-05-01T12:00:00.000+00:00",
        "producer": "",
    }
    made, reference = _construct(dict(fields)), Header.model_construct(**fields)
    assert made == reference and made.model_dump(by_alias=True) == reference.model_dump(by_alias=True)
    assert made.model_fields_set == reference.model_fields_set and made.version == 3
    with pytest.raises(ValueError):  # still frozen
        made.producer = "other"
