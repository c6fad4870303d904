"""Dead letters as `epistle dlq` reads them (toolkit.dlq.letters): fields, filters, counts and rendering, on
dead letters built by the runtime's own builder; and the command line's option errors (no broker needed)."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from typer.testing import CliRunner

from toolkit.cli import app
from toolkit.consumer.deadletter import SourceRecord, build_dead_letter
from toolkit.consumer.testing import envelope_bytes
from toolkit.dlq.letters import (
    REPLAYED_FROM,
    Counts,
    NotADeadLetter,
    Selection,
    decoded_original,
    parse,
    parse_time,
    render,
    to_json,
)
from toolkit.errors import InvalidArgument

WHEN = 1_714_564_800_000  # 2024-05-01T12:00:00Z


def letter(
    value: bytes | None,
    *,
    stage="validation",
    reason="$.total: required",
    offset=7,
    headers=None,
    timestamp=WHEN,
    key=b"order-7",
):
    source = SourceRecord("orders", 2, 41, key, value, headers or [("trace", b"\x00\x01")], WHEN - 1000, 1)
    dead = build_dead_letter(
        source,
        stage=stage,
        reason=reason,
        details=[{"path": "$.total", "message": "m"}],
        consumer_group="orders-service",
        attempts=1,
    )
    return parse("orders.dlq", 0, offset, timestamp, dead.key, dead.value, dead.headers)


ORDER = envelope_bytes("orders", 2, {"orderId": "o-1"}, message_type="OrderPlaced")


def test_a_dead_letter_gives_its_fields_and_the_exact_original():
    dead = letter(ORDER)
    assert (dead.stage, dead.reason, dead.where) == ("validation", "$.total: required", "orders.dlq:0:7")
    assert (dead.message_type, dead.schema_name, dead.schema_version) == ("OrderPlaced", "orders", "2")
    original = dead.original
    assert (original.topic, original.partition, original.offset, original.key, original.value) == (
        "orders",
        2,
        41,
        b"order-7",
        ORDER,
    )
    assert original.headers == [("trace", b"\x00\x01")] and original.timestamp == WHEN - 1000
    assert dead.replayed_from is None


def test_a_base64_original_that_is_an_envelope_still_gives_its_message_type():
    big = envelope_bytes("orders", 1, {"notes": "x" * 300_000}, message_type="OrderPlaced")  # not embedded
    dead = letter(big)
    assert dead.body["original_encoding"] == "base64"
    assert (dead.message_type, dead.schema_version) == ("OrderPlaced", "1")
    assert decoded_original(dead)[0] == "json"


@pytest.mark.parametrize(
    ("value", "encoding"), [(b"\xff\xfe", "base64"), (b"not json", "text"), (None, "null"), (ORDER, "json")]
)
def test_the_original_is_decoded_when_it_can_be(value, encoding):
    assert decoded_original(letter(value))[0] == encoding


def test_a_replayed_original_says_where_it_was_replayed_from():
    dead = letter(ORDER, headers=[("trace", b"1"), (REPLAYED_FROM, b"orders.dlq:0:3")])
    assert dead.replayed_from == "orders.dlq:0:3"
    assert "replayed from orders.dlq:0:3" in render(dead)


@pytest.mark.parametrize(
    "value",
    [
        None,
        b"junk",
        b"{}",
        b'{"source": {}}',
        json.dumps({"original_encoding": "null", "source": {"topic": "t", "partition": 0, "offset": 1}}).encode(),
    ],
)
def test_a_record_that_is_not_a_dead_letter_says_where_and_why(value):
    with pytest.raises(NotADeadLetter) as info:
        parse("orders.dlq", 1, 9, WHEN, None, value, [])
    assert info.value.where == "orders.dlq:1:9" and str(info.value).startswith("orders.dlq:1:9: ")


def test_filters_by_stage_reason_message_type_offset_and_time():
    dead = letter(ORDER, offset=7)
    assert Selection().takes(dead)
    assert Selection(stages=frozenset({"validation", "handler"})).takes(dead)
    assert not Selection(stages=frozenset({"decode"})).takes(dead)
    assert Selection(reason="TOTAL").takes(dead) and not Selection(reason="customer").takes(dead)
    assert Selection(message_types=frozenset({"OrderPlaced"})).takes(dead)
    assert not Selection(message_types=frozenset({"OrderShipped"})).takes(dead)
    assert Selection(from_offset=7, to_offset=7).takes(dead) and not Selection(from_offset=8).takes(dead)
    assert Selection(since_ms=WHEN, until_ms=WHEN + 1).takes(dead)
    assert not Selection(until_ms=WHEN).takes(dead) and not Selection(since_ms=WHEN + 1).takes(dead)


@pytest.mark.parametrize(
    ("kwargs", "option"),
    [
        ({"stages": frozenset({"parse"})}, "--stage"),
        ({"from_offset": 5, "to_offset": 4}, "--from-offset"),
        ({"since_ms": 10, "until_ms": 10}, "--since"),
    ],
)
def test_impossible_filters_name_the_option(kwargs, option):
    with pytest.raises(InvalidArgument) as info:
        Selection(**kwargs)
    assert info.value.argument == option


def test_times_are_iso_or_ago():
    now = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)
    assert parse_time("--since", "2026-05-01T10:00", now) == parse_time("--since", "2h", now)
    assert parse_time("--since", "2026-05-01T12:00:00+02:00") == parse_time("--since", "2026-05-01T10:00Z")
    assert parse_time("--since", "90s", now) == int(now.timestamp() * 1000) - 90_000
    with pytest.raises(InvalidArgument, match="--until 'yesterday': use an ISO-8601 time"):
        parse_time("--until", "yesterday")


def test_counts_by_stage_reason_type_version_and_hour():
    counts = Counts("orders.dlq")
    counts.add(letter(ORDER))
    counts.add(letter(ORDER, timestamp=WHEN + 3_600_000))
    counts.add(letter(b"not json", stage="decode", reason="not JSON: Expecting value at line 1 column 1"))
    counts.add_invalid(NotADeadLetter("orders.dlq:0:9: junk", where="orders.dlq:0:9"))
    out = counts.as_json()
    assert out["dead_letters"] == 3 and out["not_dead_letters"] == 1
    assert out["by_stage"] == {"validation": 2, "decode": 1}
    assert out["by_message_type"] == {"OrderPlaced": 2, "(none)": 1}
    assert out["by_schema_version"] == {"orders v2": 2, "(none)": 1}
    assert out["by_hour"] == {"2024-05-01T12:00Z": 2, "2024-05-01T13:00Z": 1}
    table = counts.table()
    assert "orders.dlq: 3 dead letter(s), 1 record(s) that are not dead letters" in table
    assert "by stage" in table and "validation" in table and "by hour dead-lettered (UTC)" in table


def test_a_long_tail_of_reasons_is_summed_in_the_table():
    counts = Counts("orders.dlq")
    for index in range(25):
        counts.add(letter(ORDER, reason=f"reason {index}"))
    assert "... 5 more (--json lists all)" in counts.table(top=20)
    assert len(counts.as_json()["by_reason"]) == 25


def test_rendered_and_json_forms_carry_the_reason_details_and_original():
    dead = letter(ORDER)
    text = render(dead)
    for piece in (
        "orders.dlq:0:7",
        "stage validation",
        "orders:2:41",
        "key order-7",
        "OrderPlaced",
        "$.total: required",
        "headers  trace",
        '"orderId":"o-1"',
    ):
        assert piece in text, piece
    out = to_json(dead)
    assert out["dlq"] == {"topic": "orders.dlq", "partition": 0, "offset": 7, "timestamp": WHEN}
    assert out["original"] == {"encoding": "json", "value": json.loads(ORDER)}
    assert out["error"]["details"] == [{"path": "$.total", "message": "m"}]
    assert out["source"]["topic"] == "orders" and "original_bytes" not in out
    json.dumps(out)  # writable as it is


# -- the command line, before any broker is asked ---------------------------------------------------------------


@pytest.fixture
def no_env(monkeypatch, tmp_path):
    for name in ("KAFKA_BOOTSTRAP_SERVERS", "EPISTLE_DLQ_SUFFIX", "KAFKA_STARTUP_TIMEOUT_S"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)  # no .env from the repository


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["stats", "orders.dlq", "--stage", "parse"], "--stage parse: not a stage"),
        (["show", "orders.dlq", "--since", "last week"], "--since 'last week'"),
        (["show", "orders.dlq", "--from-offset", "9", "--to-offset", "3"], "--from-offset 9 is after --to-offset 3"),
        (["replay", "orders.dlq", "--rate", "0"], "--rate"),
        (["tail", "orders.dlq", "--partition", "-1"], "--partition"),
    ],
)
def test_invalid_options_exit_2_with_one_message(no_env, args, expected):
    result = CliRunner().invoke(app, ["dlq", *args])
    assert result.exit_code == 2, result.output
    assert expected in result.output and "Traceback" not in result.output


@pytest.mark.parametrize("to", ["orders.dlq", "elsewhere.dlq"])
def test_a_replay_into_a_dead_letter_topic_is_refused_before_anything_is_asked(no_env, to):
    result = CliRunner().invoke(
        app, ["dlq", "replay", "orders.dlq", "--to", to], env={"KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1"}
    )
    assert result.exit_code == 1
    assert f"--to {to!r} is a dead-letter topic: a replay never writes into one" in result.output
