"""Dead letters that are total and exact, on the real broker: a record whose dead letter is hard to build
does not stop the consumer, the dead letter's headers are Spring's and the replay gives back the original
record exactly, records in Confluent's wire format are named as such, and a dead letter the broker refuses
holds back its own partition only."""

from __future__ import annotations

import asyncio
import json
import logging
import struct
import time
from pathlib import Path

import fastavro
import httpx
from confluent_kafka.admin import AlterConfigOpType, ConfigEntry, ConfigResource, NewTopic

from tests.kafka_checks import records_in
from toolkit.consumer import KafkaConsumer, RetryPolicy
from toolkit.consumer.deadletter import original_record
from toolkit.consumer.kafka_io import replay_dead_letter
from toolkit.consumer.testing import committed, envelope_bytes, produce, read_topic
from toolkit.registry import LocalFolderRegistry

ROOT = Path(__file__).resolve().parents[2]
SCHEMAS = ROOT / "schemas"
FAST_RETRY = RetryPolicy(max_attempts=2, initial_s=0.05, max_s=0.2)
ORDER = json.loads((SCHEMAS / "orders/samples/1/valid/full-card-payment.json").read_text())


def order(message_id: str, **body_changes) -> bytes:
    return envelope_bytes("orders", 1, {**ORDER, **body_changes}, message_id=message_id)


def consumer_for(kafka_bootstrap, group_id, handlers: dict, **kw) -> KafkaConsumer:
    consumer = KafkaConsumer(
        bootstrap_servers=kafka_bootstrap,
        group_id=group_id,
        registry=LocalFolderRegistry(SCHEMAS),
        retry=kw.pop("retry", FAST_RETRY),
        stop_when_idle=kw.pop("stop_when_idle", True),
        commit_interval_s=0.2,
        **kw,
    )
    for topic, handler in handlers.items():
        consumer.register_handler(topic, handler)
    return consumer


def run(consumer: KafkaConsumer, timeout: float = 60) -> None:
    asyncio.run(asyncio.wait_for(consumer.start(), timeout))


def dead_letters(kafka_bootstrap: str, topic: str, expected: int) -> list:
    """The dead letters of ``topic`` (one source partition) in the order of their source offsets, whatever
    the number of partitions the dead-letter topic was created with."""
    dead = read_topic(kafka_bootstrap, f"{topic}.dlq", expected=expected)
    return sorted(dead, key=lambda d: d.json()["source"]["offset"])


# -- records whose dead letter is hard to build are dead-lettered and the consumer goes on -----------------


def test_lone_surrogate_records_are_dead_lettered_and_the_consumer_goes_on(kafka_bootstrap, make_topic, group_id):
    topic, other = make_topic("orders"), make_topic("other")
    bad_header = envelope_bytes("orders", 1, ORDER, message_id="\ud800")  # JSON escapes it: \ud800
    bad_name = order("m1", customer={**ORDER["customer"], "name": "lone \udfff"})  # the model refuses it
    handler_fails, str_fails = order("h1"), order("s1")
    produce(kafka_bootstrap, topic, [bad_header, order("a"), bad_name, handler_fails, str_fails, order("b")])
    produce(kafka_bootstrap, other, [order("c")])
    seen = []

    class Unprintable(Exception):
        def __str__(self):
            raise RuntimeError("str() of this exception raises")

    async def handler(message):
        seen.append(message.header.message_id)
        if message.header.message_id == "h1":
            raise ValueError("cannot book \udfff")  # a reason and an exception message with a lone surrogate
        if message.header.message_id == "s1":
            raise Unprintable()

    consumer = consumer_for(kafka_bootstrap, group_id, {topic: handler, other: handler})
    run(consumer)  # raised ConsumerStopped("internal error: UnicodeEncodeError ...") before

    assert sorted(seen) == ["a", "b", "c", "h1", "s1"]
    dead = dead_letters(kafka_bootstrap, topic, expected=4)
    assert [original_record(d.value).value for d in dead] == [bad_header, bad_name, handler_fails, str_fails]
    assert [d.json()["error"]["stage"] for d in dead] == ["envelope", "model", "handler", "handler"]
    assert dead[2].json()["error"]["reason"] == "ValueError: cannot book \udfff"
    assert dict(dead[2].headers)["kafka_dlt-exception-message"] == b"handler: ValueError: cannot book \\udfff"
    assert dead[3].json()["error"]["reason"] == "Unprintable: <Unprintable str() failed>"
    assert committed(kafka_bootstrap, group_id, topic) == {0: 6}
    assert committed(kafka_bootstrap, group_id, other) == {0: 1}


def test_a_dead_letter_that_cannot_be_built_falls_back_to_a_minimal_one(
    kafka_bootstrap, make_topic, group_id, monkeypatch, caplog
):
    from toolkit.consumer import engine

    def broken(*args, **kwargs):
        raise RuntimeError("a bug nobody foresaw")

    monkeypatch.setattr(engine, "build_dead_letter", broken)
    topic = make_topic("orders")
    headers = [("trace", None), ("kafka_dlt-original-topic", b"elsewhere")]
    produce(kafka_bootstrap, topic, [(b"\xffkey", b"\xff not json"), (None, order("ok"))], headers=headers)
    seen = []
    consumer = consumer_for(kafka_bootstrap, group_id, {topic: lambda m: seen.append(m.header.message_id)})
    with caplog.at_level(logging.ERROR, logger="toolkit.consumer"):
        run(consumer)
    assert "building the dead letter failed; sending a minimal one" in caplog.text
    (dl,) = read_topic(kafka_bootstrap, f"{topic}.dlq", expected=1)
    back = original_record(dl.value)
    assert (back.key, back.value, back.headers) == (b"\xffkey", b"\xff not json", headers)
    assert dl.json()["error"]["stage"] == "decode" and "not UTF-8" in dl.json()["error"]["reason"]
    assert seen == ["ok"] and committed(kafka_bootstrap, group_id, topic) == {0: 2}


# -- exact dead letters, Spring's headers, and a replay that gives back the record ---------------------------


def test_dead_letter_headers_and_replay_are_exact(kafka_bootstrap, make_topic, group_id):
    topic = make_topic("orders")
    headers = [
        ("trace", b"\x00\xff"),
        ("empty", b""),
        ("null", None),
        ("trace", b"same name again"),
        ("kafka_dlt-original-topic", b"an-earlier-topic"),
        ("kafka_dlt-exception-fqcn", b"java.lang.IllegalStateException"),
    ]
    produce(
        kafka_bootstrap,
        topic,
        [(b"k-\xff", b"\xc3\x28 not utf8"), (None, order("wrapped")), (b"k", order("ok"))],
        headers=headers,
    )

    async def handler(message):
        if message.header.message_id == "wrapped":
            try:
                raise KeyError("customer 7")
            except KeyError as exc:
                raise RuntimeError("booking failed") from exc

    consumer = consumer_for(kafka_bootstrap, group_id, {topic: handler})
    run(consumer)
    originals = read_topic(kafka_bootstrap, topic, expected=3)[:2]
    dead = dead_letters(kafka_bootstrap, topic, expected=2)
    assert committed(kafka_bootstrap, group_id, topic) == {0: 3}

    for dl in dead:
        names = [name for name, _ in dl.headers]
        assert all(names.count(n) == 1 for n in names if n.startswith("kafka_dlt-")), names
        assert [h for h in dl.headers if not h[0].startswith("kafka_dlt-")] == headers[:4]  # null stays null
        h = dict(dl.headers)
        assert h["kafka_dlt-original-topic"] == topic.encode()
        assert h["kafka_dlt-original-timestamp-type"] == b"CreateTime"
    decode_h, handler_h = dict(dead[0].headers), dict(dead[1].headers)
    assert decode_h["kafka_dlt-exception-fqcn"] == b"toolkit.errors.MessageError"
    assert "kafka_dlt-exception-cause-fqcn" not in decode_h
    assert handler_h["kafka_dlt-exception-fqcn"] == b"builtins.RuntimeError"
    assert handler_h["kafka_dlt-exception-cause-fqcn"] == b"builtins.KeyError"
    assert dead[1].json()["error"]["cause"] == {"type": "builtins.KeyError", "message": "'customer 7'"}

    target = make_topic("replayed")
    for dl in dead:
        replay_dead_letter({"bootstrap.servers": kafka_bootstrap}, dl.value, dl.key, dl.headers, topic=target)
    replayed = read_topic(kafka_bootstrap, target, expected=2)
    for before, after in zip(originals, replayed, strict=True):
        assert (after.key, after.value, after.headers, after.timestamp) == (
            before.key,
            before.value,
            before.headers,
            before.timestamp,
        )
    assert replayed[0].headers == headers


# -- Confluent's wire format is named ------------------------------------------------------------------------


def _register(registry_url: str, subject: str, schema: dict, schema_type: str | None = None) -> int:
    payload = {"schema": json.dumps(schema)}
    if schema_type:
        payload["schemaType"] = schema_type
    response = httpx.post(
        f"{registry_url}/subjects/{subject}/versions",
        json=payload,
        timeout=30,
        headers={"Content-Type": "application/vnd.schemaregistry.v1+json"},
    )
    response.raise_for_status()
    return response.json()["id"]


def test_confluent_wire_format_records_say_what_they_are(
    kafka_bootstrap, registry_url, make_topic, group_id, unique_name
):
    topic = make_topic("orders")
    avro = {
        "type": "record",
        "name": "Order",
        "fields": [{"name": "orderId", "type": "string"}, {"name": "quantity", "type": "int"}],
    }
    avro_id = _register(registry_url, unique_name("avro-value"), avro)
    json_schema = {
        "$schema": "http://json-schema.org/draft-07/schema#",
        "type": "object",
        "properties": {"orderId": {"type": "string"}, "quantity": {"type": "integer"}},
    }
    json_id = _register(registry_url, unique_name("json-value"), json_schema, "JSON")
    body = _avro_bytes(avro, {"orderId": "o-1", "quantity": 2})
    # What confluent-kafka's AvroSerializer / JSONSerializer write: magic byte 0, 4-byte big-endian id, payload
    avro_record = b"\x00" + struct.pack(">I", avro_id) + body
    json_record = b"\x00" + struct.pack(">I", json_id) + b'{"orderId":"o-1","quantity":2}'
    produce(kafka_bootstrap, topic, [avro_record, json_record, order("ok")])
    seen = []
    consumer = consumer_for(kafka_bootstrap, group_id, {topic: lambda m: seen.append(m.header.message_id)})
    run(consumer)
    dead = dead_letters(kafka_bootstrap, topic, expected=2)
    reasons = [d.json()["error"]["reason"] for d in dead]
    assert reasons[0].startswith(f"Confluent wire format (magic byte 0, schema id {avro_id}, {len(body)} bytes")
    assert reasons[1].startswith(f"Confluent wire format (magic byte 0, schema id {json_id}, 30 bytes")
    assert all("{header, body} envelopes" in r for r in reasons)
    assert [original_record(d.value).value for d in dead] == [avro_record, json_record]
    assert seen == ["ok"]


def _avro_bytes(schema: dict, record: dict) -> bytes:
    import io

    out = io.BytesIO()
    fastavro.schemaless_writer(out, fastavro.parse_schema(schema), record)
    return out.getvalue()


# -- a dead letter the broker refuses holds back its own partition only ---------------------------------------


def test_refused_dead_letter_waits_on_its_partition_and_others_go_on(
    kafka_bootstrap, admin, make_topic, group_id, caplog
):
    topic, other = make_topic("orders", partitions=2), make_topic("other")
    dlq = f"{topic}.dlq"
    # A dead-letter topic that refuses records over 4 kB (created first, so the consumer does not make its own)
    admin.create_topics([NewTopic(dlq, num_partitions=1, replication_factor=1, config={"max.message.bytes": "4096"})])[
        dlq
    ].result(timeout=30)
    big_bad = b"\xff" + b"x" * 6000  # not UTF-8; its dead letter (base64 of it, plus the report) is > 4 kB
    produce(kafka_bootstrap, topic, [big_bad], partition=0)
    produce(kafka_bootstrap, topic, [order("p1-a"), b"small bad", order("p1-b")], partition=1)
    produce(kafka_bootstrap, other, [order("o-a"), b"\xffother bad", order("o-b")])
    seen = []

    async def handler(message):
        seen.append(message.header.message_id)

    consumer = consumer_for(
        kafka_bootstrap,
        group_id,
        {topic: handler, other: handler},
        stop_when_idle=False,
        retry=RetryPolicy(max_attempts=2, initial_s=0.1, max_s=0.5),
    )

    def progress() -> tuple[dict, dict]:
        return committed(kafka_bootstrap, group_id, topic, 2), committed(kafka_bootstrap, group_id, other)

    async def scenario():
        task = asyncio.create_task(consumer.start())
        try:
            # Everything else is done and committed, small dead letters of the same dead-letter topic
            # included, while partition 0's dead letter is refused again and again
            await _until(
                lambda: (
                    progress() == ({0: -1001, 1: 3}, {0: 3}) and consumer.stats[topic].dead_letter_send_failures >= 3
                ),
                60,
            )
            assert sorted(seen) == ["o-a", "o-b", "p1-a", "p1-b"]
            assert records_in(kafka_bootstrap, dlq) == 1 and records_in(kafka_bootstrap, f"{other}.dlq") == 1
            # From the first failure on partition 0 waits: a record produced after it does not start;
            # partition 1 goes on
            produce(kafka_bootstrap, topic, [order("p0-after")], partition=0)
            produce(kafka_bootstrap, topic, [order("p1-c")], partition=1)
            await _until(lambda: progress()[0] == {0: -1001, 1: 4}, 60)
            assert "p1-c" in seen and "p0-after" not in seen
            # The operator raises the limit: the next resend goes through, partition 0 resumes and commits
            resource = ConfigResource(
                ConfigResource.Type.TOPIC,
                dlq,
                incremental_configs=[
                    ConfigEntry("max.message.bytes", str(1024 * 1024), incremental_operation=AlterConfigOpType.SET)
                ],
            )
            admin.incremental_alter_configs([resource])[resource].result(timeout=30)
            await _until(lambda: progress()[0] == {0: 2, 1: 4}, 60)
            assert "p0-after" in seen
        finally:
            await consumer.stop()
            await asyncio.wait_for(task, 60)

    with caplog.at_level(logging.WARNING, logger="toolkit.consumer"):
        asyncio.run(scenario())
    assert "dead letter not delivered (failure 1), retrying in" in caplog.text
    assert "MSG_SIZE_TOO_LARGE" in caplog.text
    dead = read_topic(kafka_bootstrap, dlq, expected=2)
    assert sorted(original_record(d.value).value for d in dead) == sorted([big_bad, b"small bad"])
    assert consumer.stats[topic].dead_lettered == {"decode": 2}


def test_any_failure_to_send_a_dead_letter_is_retried_and_commits_follow(
    kafka_bootstrap, make_topic, group_id, monkeypatch, caplog
):
    from toolkit.consumer import kafka_io

    topic = make_topic("orders")
    produce(kafka_bootstrap, topic, [b"\xffbad", order("ok")])
    real_send = kafka_io.DeadLetterSender.send
    sends = []

    def send(self, record, **kwargs):
        sends.append(kwargs.get("alone"))
        if len(sends) <= 2:  # not a BrokerUnavailable: e.g. the resend producer cannot be made
            raise RuntimeError("unexpected failure while sending")
        return real_send(self, record, **kwargs)

    monkeypatch.setattr(kafka_io.DeadLetterSender, "send", send)
    seen = []
    consumer = consumer_for(kafka_bootstrap, group_id, {topic: lambda m: seen.append(m.header.message_id)})
    with caplog.at_level(logging.WARNING, logger="toolkit.consumer"):
        run(consumer)
    assert sends == [False, True, True]
    assert "dead letter not delivered (failure 2), retrying in" in caplog.text
    assert "RuntimeError: unexpected failure while sending" in caplog.text
    assert consumer.stats[topic].dead_lettered == {"decode": 1} and seen == ["ok"]
    assert committed(kafka_bootstrap, group_id, topic) == {0: 2}
    (dl,) = read_topic(kafka_bootstrap, f"{topic}.dlq", expected=1)
    assert original_record(dl.value).value == b"\xffbad"


def test_stopping_while_a_dead_letter_is_refused_commits_nothing_past_it(kafka_bootstrap, admin, make_topic, group_id):
    topic = make_topic("orders")
    dlq = f"{topic}.dlq"
    admin.create_topics([NewTopic(dlq, num_partitions=1, replication_factor=1, config={"max.message.bytes": "4096"})])[
        dlq
    ].result(timeout=30)
    big_bad = b"\xff" + b"x" * 6000
    produce(kafka_bootstrap, topic, [order("before"), big_bad, order("after")])
    seen = []
    consumer = consumer_for(
        kafka_bootstrap, group_id, {topic: lambda m: seen.append(m.header.message_id)}, stop_when_idle=False
    )

    async def scenario():
        task = asyncio.create_task(consumer.start())
        try:
            await _until(
                lambda: (
                    consumer.stats[topic].dead_letter_send_failures >= 2
                    and committed(kafka_bootstrap, group_id, topic) == {0: 1}
                ),
                60,
            )
        finally:
            await consumer.stop()
            await asyncio.wait_for(task, 30)  # the held partition does not keep the consumer from stopping

    asyncio.run(scenario())
    assert committed(kafka_bootstrap, group_id, topic) == {0: 1}
    assert records_in(kafka_bootstrap, dlq) == 0
    # Fixed and restarted: the record is dead-lettered and the partition goes on past it
    resource = ConfigResource(
        ConfigResource.Type.TOPIC,
        dlq,
        incremental_configs=[
            ConfigEntry("max.message.bytes", str(1024 * 1024), incremental_operation=AlterConfigOpType.SET)
        ],
    )
    admin.incremental_alter_configs([resource])[resource].result(timeout=30)
    run(consumer_for(kafka_bootstrap, group_id, {topic: lambda m: seen.append(m.header.message_id)}))
    assert seen.count("before") == 1 and seen[-1] == "after"
    assert committed(kafka_bootstrap, group_id, topic) == {0: 3}
    (dl,) = read_topic(kafka_bootstrap, dlq, expected=1)
    assert original_record(dl.value).value == big_bad


# -- a dead letter too large for the dead-letter producer is shortened -------------------------------------


def test_an_8_mib_record_is_dead_lettered_in_the_shortened_form(kafka_bootstrap, admin, make_topic, group_id):
    topic = make_topic("orders")
    dlq = f"{topic}.dlq"
    big_limit = 16 * 1024 * 1024
    resource = ConfigResource(
        ConfigResource.Type.TOPIC,
        topic,
        incremental_configs=[
            ConfigEntry("max.message.bytes", str(big_limit), incremental_operation=AlterConfigOpType.SET)
        ],
    )
    admin.incremental_alter_configs([resource])[resource].result(timeout=30)
    # 8 MiB travels as ~11.2 MB of base64; the full dead letter adds ~0.8 MB of error texts, the shortened
    # one does not: a producer and topic limit of 11 MiB takes the shortened form only
    limit = 11 * 1024 * 1024
    admin.create_topics(
        [NewTopic(dlq, num_partitions=1, replication_factor=1, config={"max.message.bytes": str(limit)})]
    )[dlq].result(timeout=30)
    big = b"\xff" * (8 * 1024 * 1024)
    produce(kafka_bootstrap, topic, [big, order("after")], config={"message.max.bytes": big_limit})

    def serializer(data: bytes):
        if data.startswith(b"\xff"):
            raise LookupError("no reader for this record: " + "\u20ac" * 100_000)
        return json.loads(data)

    seen = []
    consumer = consumer_for(
        kafka_bootstrap,
        group_id,
        {topic: lambda m: seen.append(m.header.message_id)},
        serializer=serializer,
        dlq_max_message_bytes=limit,
    )
    run(consumer, timeout=120)
    assert seen == ["after"] and consumer.stats[topic].dead_letter_send_failures == 0
    assert committed(kafka_bootstrap, group_id, topic) == {0: 2}
    (dl,) = read_topic(kafka_bootstrap, dlq, expected=1, timeout_s=60)
    body = dl.json()
    assert body["shortened"].startswith("the full dead letter was ")
    assert f"over the dead-letter producer's limit of {limit}" in body["shortened"]
    assert body["original_encoding"] == "base64" and "original_bytes" not in body
    assert body["error"]["stage"] == "decode" and body["error"]["reason"].startswith("LookupError: no reader")
    assert len(body["error"]["reason"]) < 1100
    assert original_record(dl.value).value == big


async def _until(condition, timeout_s: float) -> None:
    """Poll ``condition`` (blocking checks, run off the loop) until it holds; fail after ``timeout_s``."""
    loop = asyncio.get_running_loop()
    deadline = time.monotonic() + timeout_s
    while not await loop.run_in_executor(None, condition):
        if time.monotonic() > deadline:
            raise AssertionError(f"not reached within {timeout_s:.0f} s")
        await asyncio.sleep(0.2)
