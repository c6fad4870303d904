import base64
import json
import struct
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from toolkit.consumer.deadletter import (
    H_CAUSE_FQCN,
    H_FQCN,
    H_GROUP,
    H_MESSAGE,
    H_OFFSET,
    H_PARTITION,
    H_STACKTRACE,
    H_TIMESTAMP,
    H_TIMESTAMP_TYPE,
    H_TOPIC,
    DeadLetterRecord,
    SourceRecord,
    build_dead_letter,
    minimal_dead_letter,
    original_record,
    record_size,
)


def source(value, key=b"k1", headers=None):
    return SourceRecord("orders", 2, 41, key, value, headers or [("trace", b"\x00\x01")], 1714564800000, 1)


def build(src, **kw):
    try:
        raise ValueError("boom")
    except ValueError as exc:
        err = exc
    return build_dead_letter(
        src,
        stage="handler",
        reason="ValueError: boom",
        error=err,
        details=[{"path": "/x", "message": "m"}],
        consumer_group="g",
        attempts=1,
        **kw,
    )


def test_json_original_kept_as_json_and_exact_bytes():
    raw = b'{"header": {"a": "1"},   "body": {"n": 1.50}}'
    dl = build(source(raw))
    value = json.loads(dl.value)
    assert dl.topic == "orders.dlq" and dl.key == b"k1"
    assert value["original_encoding"] == "json"
    assert value["original_message"] == {"header": {"a": "1"}, "body": {"n": 1.5}}
    assert value["error"]["stage"] == "handler" and value["error"]["type"] == "builtins.ValueError"
    assert value["error"]["details"] == [{"path": "/x", "message": "m"}]
    assert value["error"]["timestamp"].endswith("Z")
    assert value["source"] == {
        "topic": "orders",
        "partition": 2,
        "offset": 41,
        "key": "k1",
        "keyEncoding": "utf-8",
        "timestamp": 1714564800000,
        "timestampType": "CreateTime",
        "consumerGroup": "g",
        "attempts": 1,
        "headers": [["trace", "AAE="]],
    }
    headers = dict(dl.headers)
    assert headers["trace"] == b"\x00\x01"
    assert headers[H_TOPIC] == b"orders"
    assert struct.unpack(">i", headers[H_PARTITION]) == (2,)
    assert struct.unpack(">q", headers[H_OFFSET]) == (41,)
    assert headers[H_GROUP] == b"g" and headers[H_FQCN] == b"builtins.ValueError"
    assert b"Traceback" in headers[H_STACKTRACE]
    back = original_record(dl.value, dl.key, dl.headers)
    assert back.value == raw and back.key == b"k1" and back.headers == [("trace", b"\x00\x01")]
    assert (back.topic, back.partition, back.offset) == ("orders", 2, 41)


@pytest.mark.parametrize("raw", [b"\xff\xfe not utf8", b"[" * 5000, b"NaN", b"{" * 100_000])
def test_non_json_kept_as_base64(raw):
    dl = build(source(raw, key=b"\xff"))
    value = json.loads(dl.value)
    assert value["original_encoding"] == "base64"
    assert base64.b64decode(value["original_message"]) == raw
    assert value["source"]["keyEncoding"] == "base64"
    assert original_record(dl.value, dl.key, dl.headers).value == raw


def test_large_json_not_embedded_twice():
    raw = json.dumps({"pad": "x" * 400_000}).encode()
    dl = build(source(raw))
    assert json.loads(dl.value)["original_encoding"] == "base64"
    assert len(dl.value) < len(raw) * 1.4
    assert original_record(dl.value).value == raw


def test_tombstone_and_no_key():
    dl = build(source(None, key=None))
    value = json.loads(dl.value)
    assert value["original_encoding"] == "null" and value["source"]["key"] is None
    assert original_record(dl.value).value is None


def test_not_a_dead_letter():
    with pytest.raises(ValueError):
        original_record(b"{}")


@given(st.binary(max_size=300))
def test_any_bytes_round_trip(raw):
    dl = build(source(raw))
    assert original_record(dl.value, dl.key, dl.headers).value == raw


# -- total and exact: any record and any exception give a dead letter, and the original comes back --


def strict_json(data: bytes):
    """The dead-letter value as a strict reader sees it: UTF-8, no NaN/Infinity."""
    return json.loads(data.decode("utf-8"), parse_constant=lambda name: pytest.fail(f"{name} in the value"))


class StrFails(Exception):
    def __str__(self):
        raise RuntimeError("str() of this exception raises")


class StrNotAString(Exception):
    def __str__(self):
        return 42  # type: ignore[return-value]


def chained(outer: BaseException, inner: BaseException, explicit: bool = True) -> BaseException:
    try:
        try:
            raise inner
        except BaseException as exc:
            if explicit:
                raise outer from exc
            raise outer  # noqa: B904 - the implicit __context__ is what this tests
    except BaseException as exc:
        return exc


texts = st.text(alphabet=st.characters(codec=None), max_size=40)  # lone surrogates included
plain_errors = st.builds(lambda cls, msg: cls(msg), st.sampled_from([ValueError, KeyError, RuntimeError]), texts)
errors = st.one_of(
    st.none(),
    plain_errors,
    st.builds(StrFails),
    st.builds(StrNotAString),
    st.builds(chained, plain_errors, plain_errors, st.booleans()),
)
header_names = st.one_of(
    texts,
    st.sampled_from(["kafka_dlt-original-topic", "kafka_dlt-exception-fqcn", "kafka_dlt-exception-message", "trace"]),
)
json_like = st.recursive(
    st.one_of(st.none(), st.booleans(), st.floats(), st.integers(), texts),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(texts, inner, max_size=3),
    max_leaves=10,
)
values = st.one_of(
    st.none(),
    st.binary(max_size=300),
    json_like.map(lambda doc: json.dumps(doc, ensure_ascii=True).encode()),  # \ud800 escapes, NaN, Infinity
    st.sampled_from(
        [
            b'{"s": "\\ud800"}',
            b'{"n": 1e400}',
            b"[NaN, -Infinity]",
            b"[" * 300 + b"]" * 300,
            b"\x00\x00\x00\x00\x11\x02hi",
            b"\xef\xbb\xbf{}",
        ]
    ),
)


@given(
    value=values,
    key=st.none() | st.binary(max_size=40),
    headers=st.lists(st.tuples(header_names, st.none() | st.binary(max_size=40)), max_size=6),
    timestamp=st.none() | st.integers(min_value=0, max_value=2**62),
    timestamp_type=st.sampled_from([0, 1, 2]),
    error=errors,
    reason=texts,
    details=json_like,
    group=texts,
)
def test_building_is_total_and_the_original_comes_back_exactly(
    value, key, headers, timestamp, timestamp_type, error, reason, details, group
):
    src = SourceRecord("orders", 3, 7, key, value, headers, timestamp, timestamp_type)
    dl = build_dead_letter(
        src, stage="handler", reason=reason, error=error, details=details, consumer_group=group, attempts=2
    )
    body = strict_json(dl.value)
    back = original_record(dl.value)
    assert (back.key, back.value, back.headers, back.timestamp) == (key, value, headers, timestamp)
    assert (back.topic, back.partition, back.offset) == ("orders", 3, 7)
    assert body["error"]["reason"] == reason and body["source"]["consumerGroup"] == group
    assert dl.key == key
    names = [name for name, _ in dl.headers]
    for name in (H_TOPIC, H_PARTITION, H_OFFSET, H_TIMESTAMP, H_TIMESTAMP_TYPE, H_GROUP, H_FQCN, H_MESSAGE):
        assert names.count(name) == 1, name
    assert names.count(H_CAUSE_FQCN) == (1 if error is not None and error.__context__ is not None else 0)
    for name, data in dl.headers:
        name.encode("utf-8")  # every header the producer gets is writable
        assert data is None or isinstance(data, bytes)
    escaped = [
        (n.encode("utf-8", "backslashreplace").decode(), v) for n, v in headers if not n.startswith("kafka_dlt-")
    ]
    assert [(n, v) for n, v in dl.headers if not n.startswith("kafka_dlt-")] == escaped


def test_lone_surrogate_json_is_embedded_and_kept_exactly():
    raw = b'{"header": {"messageId": "\\ud800"}, "body": {"s": "caf\\u00e9 \\udfff"}}'
    dl = build(source(raw))
    value = strict_json(dl.value)
    assert value["original_encoding"] == "json"
    assert value["original_message"]["header"]["messageId"] == "\ud800"
    assert original_record(dl.value).value == raw


def test_reason_and_exception_with_lone_surrogates():
    err = ValueError("bad \udc80 input")
    dl = build_dead_letter(
        source(b"{}"),
        stage="envelope",
        reason="invalid header: '\ud800'",
        error=err,
        details=[{"path": "/header", "message": "'\ud800' is not valid"}],
        consumer_group="g",
        attempts=1,
    )
    value = strict_json(dl.value)
    assert value["error"]["reason"] == "invalid header: '\ud800'"
    assert value["error"]["message"] == "bad \udc80 input"
    assert dict(dl.headers)[H_MESSAGE] == b"envelope: invalid header: '\\ud800'"


@pytest.mark.parametrize("raw", [b"[NaN]", b'{"x": Infinity}', b'{"n": 1e400}', b"1" * 5000])
def test_non_standard_numbers_are_kept_as_base64(raw):
    dl = build(source(raw))
    value = strict_json(dl.value)
    assert value["original_encoding"] == "base64"
    assert original_record(dl.value).value == raw


def test_details_that_strict_json_cannot_write():
    deep: list = []
    for _ in range(100_000):
        deep = [deep]
    for details in (float("nan"), {"x": object()}, deep, {1, 2}):
        dl = build_dead_letter(
            source(b"x"), stage="validation", reason="r", details=details, consumer_group="g", attempts=1
        )
        assert isinstance(strict_json(dl.value)["error"]["details"], str)


def test_exception_whose_str_fails():
    dl = build_dead_letter(source(b"x"), stage="handler", reason="r", error=StrFails(), consumer_group="g", attempts=1)
    value = strict_json(dl.value)
    assert value["error"]["message"] == "<StrFails str() failed>"
    assert dict(dl.headers)[H_FQCN] == f"{__name__}.StrFails".encode()


def test_cause_fqcn_header_and_cause_in_the_value():
    err = chained(RuntimeError("wrapper"), KeyError("customer 7"))
    dl = build_dead_letter(
        source(b"x"), stage="handler", reason="RuntimeError: wrapper", error=err, consumer_group="g", attempts=1
    )
    headers = dict(dl.headers)
    assert headers[H_FQCN] == b"builtins.RuntimeError"
    assert headers[H_CAUSE_FQCN] == b"builtins.KeyError"
    assert strict_json(dl.value)["error"]["cause"] == {"type": "builtins.KeyError", "message": "'customer 7'"}
    assert b"KeyError" in headers[H_STACKTRACE] and b"RuntimeError" in headers[H_STACKTRACE]
    without = build(source(b"x"))
    assert H_CAUSE_FQCN not in dict(without.headers)
    assert strict_json(without.value)["error"]["cause"] is None


def test_existing_dead_letter_headers_are_replaced_and_kept_in_the_value():
    earlier = [
        ("kafka_dlt-original-topic", b"first-topic"),
        ("kafka_dlt-exception-fqcn", b"java.lang.X"),
        ("trace", b"t"),
        ("kafka_dlt-original-offset", struct.pack(">q", 3)),
    ]
    dl = build(source(b"x", headers=earlier))
    names = [name for name, _ in dl.headers]
    assert all(names.count(name) == 1 for name in names if name.startswith("kafka_dlt-"))
    headers = dict(dl.headers)
    assert headers[H_TOPIC] == b"orders" and headers[H_FQCN] == b"builtins.ValueError"
    assert struct.unpack(">q", headers[H_OFFSET]) == (41,)
    assert names[0] == "trace"
    assert original_record(dl.value, dl.key, dl.headers).headers == earlier


def test_null_header_values_survive():
    headers = [("n", None), ("e", b""), ("n", b"second")]
    dl = build(source(b"x", headers=headers))
    assert dl.headers[:3] == headers  # the dead letter carries the null header as null
    assert original_record(dl.value).headers == headers


def test_no_timestamp_is_no_timestamp_type():
    dl = build(SourceRecord("orders", 0, 1, None, b"x", [], None, 0))
    headers = dict(dl.headers)
    assert headers[H_TIMESTAMP_TYPE] == b"NoTimestampType"
    assert struct.unpack(">q", headers[H_TIMESTAMP]) == (-1,)
    assert strict_json(dl.value)["source"]["timestampType"] == "NoTimestampType"
    assert original_record(dl.value).timestamp is None
    log_append = build(SourceRecord("orders", 0, 1, None, b"x", [], 0, 2))
    assert dict(log_append.headers)[H_TIMESTAMP_TYPE] == b"LogAppendTime"
    assert original_record(log_append.value).timestamp == 0


def test_huge_texts_are_cut_and_say_so():
    dl = build_dead_letter(
        source(b"x"),
        stage="handler",
        reason="r" * 1_000_000,
        error=ValueError("m" * 1_000_000),
        consumer_group="g",
        attempts=1,
    )
    assert len(dl.value) < 400_000
    assert strict_json(dl.value)["error"]["reason"].endswith("(934464 more characters)")


def test_minimal_dead_letter_keeps_the_exact_record():
    headers = [("n", None), ("kafka_dlt-original-topic", b"\xff")]
    dl = minimal_dead_letter(
        "orders", 1, 9, b"\xffk", b"\x00\xff raw", headers, stage="decode", reason="why \ud800", consumer_group="g"
    )
    assert dl.topic == "orders.dlq" and dl.key == b"\xffk"
    dl.value.decode("ascii")
    back = original_record(dl.value)
    assert (back.key, back.value, back.headers, back.offset) == (b"\xffk", b"\x00\xff raw", headers, 9)
    assert strict_json(dl.value)["error"]["reason"] == "why \ud800"


def test_minimal_dead_letter_without_the_headers_the_client_could_not_read():
    dl = minimal_dead_letter("orders", 1, 9, None, b"\xff raw", None, stage="decode", reason="r", consumer_group="g")
    assert "headers" not in strict_json(dl.value)["source"]
    back = original_record(dl.value, dl.key, dl.headers)
    assert (back.key, back.value, back.headers) == (None, b"\xff raw", [])  # none of its own kafka_dlt-* ones


def test_dead_letters_written_before_the_value_kept_headers_still_read():
    legacy = {
        "original_message": _b64(b"raw"),
        "original_encoding": "base64",
        "error": {"stage": "decode", "reason": "r"},
        "source": {
            "topic": "orders",
            "partition": 0,
            "offset": 5,
            "key": "k",
            "keyEncoding": "utf-8",
            "timestamp": 17,
            "consumerGroup": "g",
            "attempts": 1,
        },
    }
    back = original_record(json.dumps(legacy).encode(), b"k", [("trace", b"t"), (H_TOPIC, b"orders")])
    assert (back.value, back.key, back.headers, back.timestamp) == (b"raw", b"k", [("trace", b"t")], 17)


@pytest.mark.parametrize(
    "value",
    [
        b"[]",
        b'{"source": {}, "original_encoding": "json"}',
        b"\xff",
        b'{"source": {"topic": "t", "partition": 0, "offset": 0, "headers": [[1]]}, "original_encoding": "null"}',
        # coordinates of the wrong type: refused here, not a crash later in replay or show
        b'{"source": {"topic": 5, "partition": 0, "offset": 0}, "original_encoding": "null"}',
        b'{"source": {"topic": "t", "partition": "a", "offset": 0}, "original_encoding": "null"}',
        b'{"source": {"topic": "t", "partition": null, "offset": 0}, "original_encoding": "null"}',
        b'{"source": {"topic": "t", "partition": 1.5, "offset": 0}, "original_encoding": "null"}',
        b'{"source": {"topic": "t", "partition": 0, "offset": -1}, "original_encoding": "null"}',
        b'{"source": {"topic": "t", "partition": 0, "offset": 0, "timestamp": "x"}, "original_encoding": "null"}',
        b'{"source": {"topic": "", "partition": 0, "offset": 0}, "original_encoding": "null"}',
        b'{"source": {"topic": "t", "partition": 0, "offset": 0, "headers": [[5, null]]}, "original_encoding": "null"}',
    ],
)
def test_not_a_dead_letter_value(value):
    with pytest.raises(ValueError, match="not a dead-letter value"):
        original_record(value)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


# -- a dead letter too large for the dead-letter producer: the shortened form -------------------------------


def too_large(value, headers=None):
    """A dead letter of ``value`` with a long exception message and details, and its full form."""
    try:
        raise ValueError("\u20ac" * 20_000)
    except ValueError as exc:
        err = exc
    details = [{"path": f"/body/items/{i}", "message": "quantity must be at least 1"} for i in range(2000)]

    def make(max_bytes=None):
        return build_dead_letter(
            source(value, headers=headers),
            stage="validation",
            reason=f"bad: {err}",
            error=err,
            details=details,
            consumer_group="g",
            attempts=1,
            max_bytes=max_bytes,
            now=datetime(2026, 5, 1, tzinfo=UTC),
        )

    return make


@pytest.mark.parametrize("value", [json.dumps({"pad": "x" * 200_000}).encode(), b"\xff" * 300_000, None])
def test_over_the_limit_a_dead_letter_is_shortened_and_still_exact(value):
    make = too_large(value, headers=[("trace", b"\x00"), ("null", None)])
    full = make()
    limit = record_size(full) - 1
    dl = make(limit)
    assert record_size(dl) <= limit and record_size(dl) < record_size(full) - 200_000
    body = strict_json(dl.value)
    assert body["original_encoding"] == ("null" if value is None else "base64") and "original_bytes" not in body
    assert body["shortened"].startswith(
        f"the full dead letter was {record_size(full)} bytes, over the dead-letter producer's limit of {limit}"
    )
    assert body["error"]["details"] is None and len(body["error"]["message"]) < 1100
    assert body["error"]["reason"].endswith("more characters)") and body["error"]["stage"] == "validation"
    assert len(dict(dl.headers)[H_STACKTRACE].decode()) < 1100
    back = original_record(dl.value, dl.key, dl.headers)
    assert (back.value, back.key, back.headers) == (value, b"k1", [("trace", b"\x00"), ("null", None)])


def test_a_dead_letter_within_the_limit_is_the_full_one():
    make = too_large(b"\xff" * 1000)
    full = make()
    assert make(record_size(full)) == full
    assert "shortened" not in strict_json(full.value)


def test_the_shortened_form_is_returned_even_when_the_original_alone_is_over_the_limit():
    dl = too_large(b"\xff" * 100_000)(max_bytes=50_000)
    assert record_size(dl) > 50_000 and "shortened" in strict_json(dl.value)
    assert original_record(dl.value).value == b"\xff" * 100_000


def test_record_size_bounds_what_librdkafka_counts_against_message_max_bytes():
    from confluent_kafka import Producer

    producer = Producer({"bootstrap.servers": "127.0.0.1:9", "message.max.bytes": 100_000})
    headers = [("a", b"x" * 100), ("b", None), ("c" * 50, b"")]
    empty = DeadLetterRecord("orders.dlq", b"key", b"", headers)
    fits = DeadLetterRecord("orders.dlq", b"key", b"x" * (100_000 - record_size(empty)), headers)
    assert record_size(fits) == 100_000
    producer.produce(fits.topic, value=fits.value, key=fits.key, headers=fits.headers)  # not refused locally
    over = DeadLetterRecord("orders.dlq", b"key", b"x" * 100_000, headers)
    with pytest.raises(Exception, match="MSG_SIZE_TOO_LARGE"):
        producer.produce(over.topic, value=over.value, key=over.key, headers=over.headers)
    producer.purge()


def test_a_dead_letter_over_the_producers_limit_fails_its_send_saying_what_to_raise():
    import asyncio

    from toolkit.consumer import kafka_io
    from toolkit.errors import BrokerUnavailable

    dl = too_large(b"\xff" * 20_000)(max_bytes=5000)

    async def scenario():
        sender = kafka_io.DeadLetterSender(
            {"bootstrap.servers": "127.0.0.1:9"}, asyncio.get_running_loop(), max_message_bytes=5000
        )
        try:
            assert sender.max_message_bytes == 5000
            with pytest.raises(BrokerUnavailable) as info:
                await sender.send(dl)
        finally:
            sender.close(timeout_s=0)
        return str(info.value)

    message = asyncio.run(scenario())
    assert "MSG_SIZE_TOO_LARGE" in message
    assert (
        f"raise EPISTLE_DLQ_MAX_MESSAGE_BYTES (now 5000) and the topic's max.message.bytes to at least "
        f"{record_size(dl)}; its partition waits"
    ) in message


# -- the dead-letter producer: a resend producer that cannot be made fails that send only --------------------


def test_failing_to_make_the_resend_producer_fails_the_send_and_is_tried_again(monkeypatch):
    import asyncio

    from toolkit.consumer import kafka_io
    from toolkit.errors import BrokerUnavailable

    made = []

    def producer(config):
        made.append(config)
        if config.get("batch.num.messages") == 1 and len(made) == 2:  # the first resend producer only
            raise RuntimeError("cannot make a producer now")
        return real(config)

    real = kafka_io.Producer
    monkeypatch.setattr(kafka_io, "Producer", producer)
    record = minimal_dead_letter("orders", 0, 1, None, b"v", [], stage="decode", reason="r", consumer_group="g")

    async def scenario():
        sender = kafka_io.DeadLetterSender(
            {"bootstrap.servers": "127.0.0.1:9", "socket.timeout.ms": 100}, asyncio.get_running_loop()
        )
        try:
            with pytest.raises(BrokerUnavailable, match="RuntimeError: cannot make a producer now"):
                await sender.send(record, alone=True)
            queued = sender.send(record, alone=True)  # made this time; no broker here, so it stays queued
            assert sender._alone is not None and not queued.done()
        finally:
            sender.close(timeout_s=0)

    asyncio.run(scenario())
    assert [c.get("batch.num.messages") for c in made] == [None, 1, 1]


def test_the_dead_letter_size_limit_comes_from_the_setting_the_argument_or_the_producer_config(monkeypatch):
    import asyncio

    from toolkit.consumer import KafkaConsumer, kafka_io
    from toolkit.errors import ConfigError
    from toolkit.settings import load_settings

    assert KafkaConsumer("127.0.0.1:9", "g").options.dlq_max_message_bytes == 10 * 1024 * 1024
    assert KafkaConsumer("127.0.0.1:9", "g", dlq_max_message_bytes=5000).options.dlq_max_message_bytes == 5000
    monkeypatch.setenv("EPISTLE_DLQ_MAX_MESSAGE_BYTES", "20000000")
    assert KafkaConsumer.from_settings(load_settings(env_file=None)).options.dlq_max_message_bytes == 20_000_000
    monkeypatch.setenv("EPISTLE_DLQ_MAX_MESSAGE_BYTES", "999")  # below librdkafka's minimum
    with pytest.raises(ConfigError, match="EPISTLE_DLQ_MAX_MESSAGE_BYTES"):
        load_settings(env_file=None)

    async def sizes():
        loop = asyncio.get_running_loop()
        senders = [
            kafka_io.DeadLetterSender({"bootstrap.servers": "127.0.0.1:9"}, loop, max_message_bytes=7000),
            kafka_io.DeadLetterSender(
                {"bootstrap.servers": "127.0.0.1:9"},
                loop,
                max_message_bytes=7000,
                producer_overrides={"message.max.bytes": 5000},
            ),
        ]
        for sender in senders:
            sender.close(timeout_s=0)
        return [sender.max_message_bytes for sender in senders]

    assert asyncio.run(sizes()) == [7000, 5000]
