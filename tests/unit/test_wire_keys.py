"""Record keys in Confluent's wire format: the key formats and their settings, the key decoded with the
schema of its id into ``Message.key_value`` (the raw bytes kept in ``Message.key``), and every failure at
its stage with a reason that says it is the key."""

from __future__ import annotations

import json
import struct

import pytest
from pydantic import BaseModel, ConfigDict

from tests.unit.test_registry_fake import InMemoryRegistry
from tests.unit.test_wire import ORDER, PAYMENT, PAYMENT_VALUE, Clock, Models, Order, Payment, avro_bytes, wire
from toolkit.consumer.handlers import HandlerRegistry
from toolkit.consumer.options import check_consumer_options
from toolkit.consumer.pipeline import Pipeline
from toolkit.envelope import encode_envelope, header_fields
from toolkit.errors import ConfigError, MessageError, SchemaNotYetKnown
from toolkit.layout import SchemaFormat
from toolkit.registry import CachedRegistry, LocalFolderRegistry, topic_key_strategy, topic_value_strategy
from toolkit.registry.base import SubjectContext, key_strategy_for, schema_name_strategy
from toolkit.settings import load_settings
from toolkit.wire import KeyFormat, SchemaIdKey, parse_formats

PAYMENT_KEY = {
    "type": "record",
    "name": "PaymentKey",
    "namespace": "com.acme",
    "fields": [{"name": "id", "type": "string"}, {"name": "region", "type": "int"}],
}


class PaymentKey(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str
    region: int


MODELS = Models({("payments", 1): Payment, ("payment-key", 1): PaymentKey, ("orders", 1): Order})


@pytest.fixture
def registry() -> InMemoryRegistry:
    backend = InMemoryRegistry()
    backend.register("payments-value", json.dumps(PAYMENT), SchemaFormat.AVRO)  # id 1
    backend.register("payments-key", json.dumps(PAYMENT_KEY), SchemaFormat.AVRO)  # id 2
    backend.register("orders-key", json.dumps("string"), SchemaFormat.AVRO)  # id 3: no model
    backend.calls.clear()
    return backend


def make(registry, keys=None, *, grace=0.0) -> Pipeline:
    router = HandlerRegistry()
    for topic in ("payments", "orders"):
        router.register(topic, lambda m: True)
    return Pipeline(
        CachedRegistry(registry),
        router,
        MODELS,
        subject_strategy=topic_value_strategy,
        value_formats={"payments": "confluent"},
        key_formats=keys if keys is not None else {"payments": "confluent", "orders": "auto"},
        unknown_schema_grace_s=grace,
        clock=Clock(),
    )


VALUE = wire(1, avro_bytes(PAYMENT, PAYMENT_VALUE))
KEY = wire(2, avro_bytes(PAYMENT_KEY, {"id": "p-1", "region": 7}))


def envelope() -> bytes:
    return encode_envelope(header_fields("orders", 1, message_type="Order", producer="test"), {"n": 1})


def prepare(p: Pipeline, key, value=VALUE, topic="payments"):
    return p.prepare(topic=topic, partition=0, offset=5, key=key, value=value, timestamp=1714564800000).message


def failure(p: Pipeline, key, value=VALUE, topic="payments") -> MessageError:
    with pytest.raises(MessageError) as info:
        prepare(p, key, value, topic)
    return info.value


def test_a_key_in_the_wire_format_is_decoded_into_its_model_and_the_raw_bytes_kept(registry):
    message = prepare(make(registry), KEY)
    assert message.key_value == PaymentKey(id="p-1", region=7)
    assert (message.key, message.key_schema_id, message.key_subject) == (KEY, 2, "payments-key")
    assert message.body == Payment(**PAYMENT_VALUE) and message.schema_id == 1


def test_a_key_schema_without_a_model_gives_the_decoded_value(registry):
    registry.register("orders-value", json.dumps(ORDER), SchemaFormat.JSON)  # an envelope's value, by version
    orders = Pipeline(
        CachedRegistry(registry),
        _router("orders"),
        MODELS,
        subject_strategy=topic_value_strategy,
        key_formats={"orders": "confluent"},
    )
    message = prepare(orders, wire(3, avro_bytes("string", "o-9")), envelope(), topic="orders")
    assert (message.key_value, message.key_schema_id, message.key_subject) == ("o-9", 3, "orders-key")
    assert message.body == Order(n=1) and message.schema_id is None  # the envelope value read as before


def _router(topic: str) -> HandlerRegistry:
    router = HandlerRegistry()
    router.register(topic, lambda m: True)
    return router


def test_keys_are_raw_by_default_and_auto_decodes_only_the_wire_format(registry):
    raw = make(registry, keys={})
    assert not raw.reads_keys and raw.key_to_resolve("payments", KEY) is None
    message = prepare(raw, KEY)
    assert (message.key, message.key_value, message.key_schema_id) == (KEY, None, None)
    auto = make(registry, keys={"payments": "auto"})
    assert prepare(auto, b"plain-key").key_value is None
    assert prepare(auto, KEY).key_value == PaymentKey(id="p-1", region=7)
    assert prepare(auto, None).key is None  # no key: nothing to decode


def test_auto_leaves_keys_of_kafkas_integer_and_long_serializers_raw(registry):
    """Small numbers written by Kafka's IntegerSerializer (4 bytes) and LongSerializer (8 bytes) start with
    zero bytes: under auto they are keys, not a wire-format prefix (too short, or schema id 0)."""
    auto = make(registry, keys={"payments": "auto"})
    for key in (struct.pack(">i", 5), struct.pack(">q", 7), b"\x00\x00\x00\x00\x00"):
        assert auto.key_to_resolve("payments", key) is None
        message = prepare(auto, key)
        assert (message.key, message.key_value, message.key_schema_id) == (key, None, None)
    assert prepare(auto, KEY).key_value == PaymentKey(id="p-1", region=7)  # a real prefix is still read


def test_the_keys_schema_id_is_resolved_before_finish_and_once(registry):
    p = make(registry)
    assert p.key_to_resolve("payments", KEY) == SchemaIdKey(2)
    assert p.key_to_resolve("payments", b"raw") is None  # not the wire format: finish says why
    p.resolve(SchemaIdKey(2))
    assert p.key_to_resolve("payments", KEY) is None
    prepare(p, KEY)
    prepare(p, KEY)
    assert registry.calls["get_by_id"] == 2  # the key's id and the value's, each once


@pytest.mark.parametrize(
    ("key", "stage", "words"),
    [
        (b"plain", "decode", "key magic byte is 0x70 ('p'), not 0"),
        (b"\x00\x00\x00", "decode", "truncated key: 3 byte(s)"),
        (wire(2, b"\x02"), "decode", "key (schema id 2): the payload is not Avro binary of schema id 2"),
        (wire(2, avro_bytes(PAYMENT_KEY, {"id": "p", "region": 1}) + b"!"), "decode", "1 byte(s) left over"),
        (wire(99, b"\x00"), "schema", "key (schema id 99): unknown schema: schema id 99"),
        (wire(1, avro_bytes(PAYMENT, PAYMENT_VALUE)), "schema", "the keys of topic 'payments' are read as"),
    ],
)
def test_a_bad_key_fails_at_its_stage_with_the_reason(registry, key, stage, words):
    error = failure(make(registry), key)
    assert error.stage == stage and words in error.reason, error.reason
    if stage == "schema" and "read as" in words:
        assert "'payments-key' for keys" in error.reason


def test_an_unknown_key_id_waits_out_the_grace_like_a_values(registry):
    with pytest.raises(SchemaNotYetKnown):
        prepare(make(registry, grace=30.0), wire(42, b"\x00"))


def test_a_key_that_does_not_fit_its_model_fails_at_model_with_key_paths(registry):
    class PaymentKey(BaseModel):  # named like the key's record, as codegen names it
        model_config = ConfigDict(extra="forbid")
        id: str
        region: bool

    p = make(registry)
    p.models = Models({("payments", 1): Payment, ("payment-key", 1): PaymentKey})
    error = failure(p, wire(2, avro_bytes(PAYMENT_KEY, {"id": "p", "region": 7})))
    assert error.stage == "model" and error.reason.startswith("key (schema id 2): ")
    assert error.details[0]["path"] == "/key/region"


def test_key_strategies_pair_with_the_value_strategy():
    ctx = SubjectContext("payments", "payment-key")
    assert key_strategy_for(topic_value_strategy)(ctx) == topic_key_strategy(ctx) == "payments-key"
    assert key_strategy_for(schema_name_strategy)(ctx) == "payment-key"


def test_key_formats_parse_like_value_formats_and_bad_ones_say_the_fix(monkeypatch):
    assert parse_formats("payments=confluent, *=auto", KeyFormat) == {
        "payments": KeyFormat.CONFLUENT,
        "*": KeyFormat.AUTO,
    }
    with pytest.raises(ValueError, match="the format must be raw, confluent or auto; use e.g. payments=confluent"):
        parse_formats("payments=envelope", KeyFormat)
    monkeypatch.setenv("EPISTLE_KEY_FORMATS", "payments=confluent")
    assert load_settings(env_file=None).consumer.key_formats == {"payments": KeyFormat.CONFLUENT}
    monkeypatch.setenv("EPISTLE_KEY_FORMATS", "payments")
    with pytest.raises(ConfigError) as info:
        load_settings(env_file=None)
    assert info.value.setting == "EPISTLE_KEY_FORMATS" and "is not topic=format" in str(info.value)


@pytest.mark.parametrize("value", [["payments"], {"payments": "json"}])
def test_the_key_formats_option_is_checked(value):
    with pytest.raises(ConfigError) as info:
        check_consumer_options({"key_formats": value})
    assert info.value.setting == "key_formats" and "EPISTLE_KEY_FORMATS" in str(info.value)


def test_keys_in_the_wire_format_need_a_registry_with_ids(tmp_path):
    with pytest.raises(ConfigError) as info:
        Pipeline(CachedRegistry(LocalFolderRegistry(tmp_path)), HandlerRegistry(), key_formats={"payments": "auto"})
    assert info.value.setting == "SCHEMA_REGISTRY_URL" and "EPISTLE_KEY_FORMATS" in str(info.value)
