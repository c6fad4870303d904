import json

import pytest

from toolkit.envelope import (
    MAX_DEPTH,
    Envelope,
    Header,
    JsonSerializer,
    decode_record,
    encode_envelope,
    header_fields,
)
from toolkit.errors import MessageError

HEADER = {
    "messageType": "OrderCreated",
    "schemaName": "orders",
    "schemaVersion": "2",
    "correlationId": "c-1",
    "messageId": "m-1",
    "timestamp": "2024-05-01T12:00:00Z",
    "producer": "shop",
}


def record(header=None, body=None, **changes) -> bytes:
    h = dict(HEADER if header is None else header)
    h.update(changes)
    return json.dumps({"header": h, "body": {"a": 1} if body is None else body}).encode()


def stage_of(value, serializer=None) -> str:
    with pytest.raises(MessageError) as info:
        decode_record(value, serializer)
    return info.value.stage


def test_valid_envelope_snake_case_attributes():
    decoded = decode_record(record())
    assert decoded.header.schema_name == "orders"
    assert decoded.header.version == 2
    assert decoded.header.message_type == "OrderCreated"
    assert decoded.header.sent_at.tzinfo is not None
    assert decoded.body == {"a": 1}


@pytest.mark.parametrize(
    "value",
    [
        b"\xff\xfe",
        b'{"header": ',
        b"",
        b"NaN",
        b"\xef\xbb\xbf{}",
        b"[" * 100_000 + b"]" * 100_000,
        b'{"a":' * (MAX_DEPTH + 1) + b"1" + b"}" * (MAX_DEPTH + 1),
    ],
)
def test_decode_stage(value):
    assert stage_of(value) == "decode"


@pytest.mark.parametrize(
    "value", [b"[]", b"1", b'"s"', b"null", b"true", b'{"header": {}}', b'{"body": {}}', b'{"header": [], "body": {}}']
)
def test_not_an_envelope(value):
    assert stage_of(value) == "envelope"


@pytest.mark.parametrize(
    "changes",
    [
        {"schemaVersion": "01"},
        {"schemaVersion": "-1"},
        {"schemaVersion": "1.0"},
        {"schemaVersion": "0"},
        {"schemaVersion": 1},
        {"schemaVersion": "+1"},
        {"schemaVersion": " 1"},
        {"schemaVersion": "1e3"},
        {"timestamp": "yesterday"},
        {"timestamp": "2024-05-01T12:00:00"},
        {"timestamp": 1714564800},
        {"messageId": None},
        {"messageId": ""},
        {"schemaName": 7},
        {"producer": ["x"]},
    ],
)
def test_bad_header_fields(changes):
    assert stage_of(record(**changes)) == "envelope"


@pytest.mark.parametrize("missing", list(HEADER))
def test_every_header_field_required(missing):
    header = {k: v for k, v in HEADER.items() if k != missing}
    with pytest.raises(MessageError) as info:
        decode_record(record(header=header))
    assert info.value.stage == "envelope"
    assert info.value.details[0]["path"].startswith("/header/")


def test_snake_case_on_the_wire_is_rejected():
    header = {"message_type" if k == "messageType" else k: v for k, v in HEADER.items()}
    assert stage_of(record(header=header)) == "envelope"


def test_timestamp_offsets_accepted():
    for ts in ("2024-05-01T12:00:00+02:00", "2024-05-01T12:00:00.123456Z", "2024-05-01T12:00:00-05:30"):
        assert decode_record(record(timestamp=ts)).header.timestamp == ts


def test_tombstone_is_decode_error():
    assert stage_of(None) == "decode"


def test_custom_serializer_object_and_callable():
    class Upper:
        def loads(self, data):
            return json.loads(data.decode("ascii").lower())

    upper = record().upper()
    with pytest.raises(MessageError):
        decode_record(upper)
    lowered = json.loads(record())
    lowered["header"] = {k.lower(): v for k, v in HEADER.items()}  # custom serializers may map field names
    assert decode_record(b"ignored", lambda _: json.loads(record())).header.message_id == "m-1"
    assert stage_of(b"x", lambda _: 1 / 0) == "decode"
    assert stage_of(b"\xff", Upper()) == "decode"


def test_envelope_round_trip():
    env = Envelope(header=Header.model_validate(HEADER), body={"x": [1, 2]})
    decoded = decode_record(env.to_bytes())
    assert decoded.header == env.header and decoded.body == {"x": [1, 2]}
    assert JsonSerializer().loads(env.to_bytes())["header"] == HEADER


def test_one_envelope_builder():
    fields = header_fields(
        "orders",
        2,
        message_type="OrderCreated",
        producer="shop",
        message_id="m-1",
        correlation_id="c-1",
        timestamp="2024-05-01T12:00:00Z",
    )
    assert fields == HEADER
    body = {"name": "café", "n": [1, 2.5]}
    value = encode_envelope(fields, body)
    assert value == Envelope(header=Header.model_validate(fields), body=body).to_bytes()
    assert "café".encode() in value and b" " not in value.replace(b"caf", b"")  # UTF-8, compact
    started = header_fields("orders", 2, message_type="OrderCreated", producer="shop")
    assert started["correlationId"] == started["messageId"]  # a new message starts a conversation
    assert Header.model_validate(started).sent_at.tzinfo is not None


def test_a_string_utf8_cannot_hold_is_escaped_not_an_error():
    # "\ud800" is valid JSON text; a consumer reads it back as the same (lone surrogate) string.
    value = encode_envelope({**HEADER, "messageId": "\ud800"}, {"a": "é"})
    assert value.isascii() and json.loads(value) == {"header": {**HEADER, "messageId": "\ud800"}, "body": {"a": "é"}}
    with pytest.raises(ValueError):
        encode_envelope(HEADER, {"a": float("nan")})  # not JSON


@pytest.mark.parametrize("token", [b"NaN", b"Infinity", b"-Infinity"])
def test_nan_and_infinity_tokens_are_not_json(token):
    value = record().replace(b'{"a": 1}', b'{"a": ' + token + b"}")
    with pytest.raises(MessageError) as info:
        decode_record(value)
    assert info.value.stage == "decode" and token.lstrip(b"-").decode() in info.value.reason


def test_a_number_beyond_the_double_range_is_left_to_the_schema():
    # 1e400 is valid JSON text; json.loads makes it inf. The header has no number field, so it fails there;
    # in the body only the schema knows whether a number may be there (the validators refuse inf for
    # Avro float/double and JSON Schema number/integer).
    value = json.dumps({"header": HEADER, "body": {"a": 1}}).encode().replace(b'"m-1"', b"1e400")
    with pytest.raises(MessageError) as info:
        decode_record(value)
    assert info.value.stage == "envelope" and info.value.details[0]["path"] == "/header/messageId"
    assert decode_record(record().replace(b'{"a": 1}', b'{"a": 1e400}')).body == {"a": float("inf")}


@pytest.mark.parametrize(
    "payload",
    [
        b"\x0cord-1\x02\xa4\x01",  # Avro binary, as confluent-kafka's AvroSerializer writes it after the prefix
        b'{"orderId": "o-1"}',  # JSON, as its JSONSerializer writes it
        b"\x00\x0a\x04o-1",  # Protobuf: message indexes, then the message
        b"",
    ],
)
def test_confluent_wire_format_is_named(payload):
    value = b"\x00" + (17).to_bytes(4, "big") + payload
    with pytest.raises(MessageError) as info:
        decode_record(value)
    assert info.value.stage == "decode"
    assert info.value.reason.startswith(f"Confluent wire format (magic byte 0, schema id 17, {len(payload)} bytes")
    assert "{header, body} envelopes" in info.value.reason


def test_a_custom_serializers_own_error_is_kept_for_a_value_in_wire_format():
    value = b"\x00\x00\x00\x01\x00\xff"  # magic byte 0 and schema id 256: Confluent's prefix

    def reads_its_own_format(data):
        raise LookupError("schema 256 is not in our catalogue")

    with pytest.raises(MessageError) as info:
        decode_record(value, reads_its_own_format)
    assert info.value.reason == "LookupError: schema 256 is not in our catalogue"
    with pytest.raises(MessageError) as info:  # its decode errors too: not the default reader's wording
        decode_record(value, lambda data: data.decode("ascii"))
    assert info.value.reason.startswith("UnicodeDecodeError: 'ascii' codec can't decode byte 0xff")
    with pytest.raises(MessageError, match="schema id 256"):  # the default reader names the wire format
        decode_record(value)
    with pytest.raises(MessageError, match="not UTF-8"):  # too short for the prefix: a plain decode error
        decode_record(b"\x00\x00\xff")


def test_custom_serializer_error_whose_str_fails():
    class Unprintable(Exception):
        def __str__(self):
            raise RuntimeError("no")

    def loads(data):
        raise Unprintable()

    with pytest.raises(MessageError, match="Unprintable: <Unprintable str"):
        decode_record(b"{}", loads)


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (b'{"header": "abc', "not JSON: Unterminated string starting at line 1 column 12"),
        (b'{"a": 1 2}', "not JSON: Expecting ',' delimiter at line 1 column 9"),
    ],
)
def test_a_json_error_reads_as_one_sentence(value, reason):
    with pytest.raises(MessageError) as info:
        decode_record(value)
    assert info.value.reason == reason
