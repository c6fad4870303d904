import base64
import json
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from toolkit.consumer.deadletter import (
    H_FQCN,
    H_GROUP,
    H_OFFSET,
    H_PARTITION,
    H_STACKTRACE,
    H_TOPIC,
    SourceRecord,
    build_dead_letter,
    original_record,
)


def source(value, key=b"k1", headers=None):
    return SourceRecord("orders", 2, 41, key, value, headers or [("trace", b"\x00\x01")], 1714564800000, 1)


def build(src, **kw):
    try:
        raise ValueError("boom")
    except ValueError as exc:
        err = exc
    return build_dead_letter(src, stage="handler", reason="ValueError: boom", error=err,
                             details=[{"path": "/x", "message": "m"}], consumer_group="g", attempts=1, **kw)


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
    assert value["source"] == {"topic": "orders", "partition": 2, "offset": 41, "key": "k1",
                               "keyEncoding": "utf-8", "timestamp": 1714564800000, "consumerGroup": "g",
                               "attempts": 1}
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
