"""A record with a number beyond the double range (JSON 1e400) still gets a dead letter that is strict JSON:
json.loads makes 1e400 inf, which json.dumps would write back as Infinity (not JSON), so such an original
is embedded as base64; its exact bytes come back either way."""

from __future__ import annotations

import json

import pytest

from toolkit.consumer.deadletter import SourceRecord, build_dead_letter, original_record


def _strict(value: bytes) -> dict:
    def refuse(name: str) -> None:
        raise ValueError(f"{name} is not JSON")

    return json.loads(value, parse_constant=refuse)


@pytest.mark.parametrize("number", [b"1e400", b"-1e400", b"1" + b"0" * 400 + b".5"])
def test_a_dead_letter_for_a_non_finite_number_is_strict_json_with_the_exact_bytes(number: bytes) -> None:
    value = b'{"header": {"messageId": "m"}, "body": {"d": ' + number + b"}}"
    source = SourceRecord("t", 0, 7, b"k", value, [], None)
    record = build_dead_letter(
        source, stage="validation", reason="$.d: beyond the double range", consumer_group="g", attempts=1
    )
    body = _strict(record.value)
    assert body["original_encoding"] == "base64"
    assert original_record(record.value, record.key).value == value


def test_finite_numbers_are_still_embedded_as_json() -> None:
    value = b'{"header": {"messageId": "m"}, "body": {"d": 1.7976931348623157e308, "e": -2.5e-3}}'
    record = build_dead_letter(
        SourceRecord("t", 0, 1, None, value, [], None), stage="validation", reason="x", consumer_group="g", attempts=1
    )
    body = _strict(record.value)
    assert body["original_encoding"] == "json"
    assert body["original_message"]["body"] == {"d": 1.7976931348623157e308, "e": -2.5e-3}
