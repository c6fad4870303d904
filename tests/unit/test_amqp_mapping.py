"""The AMQP side of RabbitMQ support without a broker: header tables to the engine's headers and back, a
delivery as a record and its dead-letter coordinates, the acknowledgement of watermarks, and the checks of
``RabbitTransport``'s arguments and the ``RABBITMQ_*`` settings."""

from __future__ import annotations

import asyncio
import datetime
import json
from decimal import Decimal
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from toolkit.consumer.amqp import (
    KEY_HEADER,
    AmqpRecord,
    RabbitTransport,
    headers_from_table,
    redact,
    table_from_headers,
)
from toolkit.consumer.deadletter import SourceRecord, build_dead_letter, original_record
from toolkit.consumer.transport import FetchState, ObservableTransport, Position, Record
from toolkit.errors import ConfigError
from toolkit.settings import load_settings

names = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=20)


@given(
    key=st.none() | st.binary(max_size=20),
    headers=st.dictionaries(names.filter(lambda n: n != KEY_HEADER), st.none() | st.binary(max_size=30), max_size=6),
)
def test_bytes_headers_and_key_survive_a_table_both_ways(key, headers):
    pairs = list(headers.items())
    table = table_from_headers(key, pairs)
    back_key, back, types = headers_from_table(table)
    assert back_key == key and types == {}
    assert dict(back or []) == headers  # a table keeps each name once, not the order


def test_typed_values_become_json_text_and_come_back_with_their_types():
    when = datetime.datetime(2024, 6, 1, 12, 0, tzinfo=datetime.UTC)
    table = {
        "n": 3,
        "yes": True,
        "ratio": 0.5,
        "price": Decimal("12.50"),
        "at": when,
        "x-death": [{"count": 1, "queue": "q", "reason": "expired", "time": when}],
        "text": "t",
        "raw": bytearray(b"\xff\x00"),
        "void": None,
    }
    key, headers, types = headers_from_table(table)
    assert key is None
    assert types == {
        "n": "int",
        "yes": "bool",
        "ratio": "float",
        "price": "decimal",
        "at": "timestamp",
        "x-death": "array",
    }
    as_dict = dict(headers)
    assert (as_dict["n"], as_dict["yes"], as_dict["text"], as_dict["raw"], as_dict["void"]) == (
        b"3",
        b"true",
        b"t",
        b"\xff\x00",
        None,
    )
    assert json.loads(as_dict["x-death"])[0]["reason"] == "expired"
    back = table_from_headers(key, headers, types)
    assert {k: back[k] for k in ("n", "yes", "ratio", "price", "at", "text", "raw", "void")} == {
        "n": 3,
        "yes": True,
        "ratio": 0.5,
        "price": Decimal("12.50"),
        "at": when,
        "text": "t",
        "raw": bytearray(b"\xff\x00"),
        "void": None,
    }
    assert back["x-death"][0]["count"] == 1


def test_no_table_is_no_headers_as_on_kafka():
    assert headers_from_table(None) == (None, None, {})
    assert headers_from_table({KEY_HEADER: "k"}) == (b"k", None, {})


def _delivery(tag: int, body: bytes, headers: dict | None = None, **properties):
    props = SimpleNamespace(headers=headers, timestamp=properties.pop("timestamp", None), **properties)
    return SimpleNamespace(
        delivery=SimpleNamespace(delivery_tag=tag, redelivered=tag > 5, exchange="", routing_key="orders"),
        header=SimpleNamespace(properties=props),
        body=body,
        channel=object(),
    )


def test_a_delivery_is_a_record_and_its_dead_letter_keeps_the_amqp_coordinates():
    when = datetime.datetime(2024, 6, 1, 12, 0, 1, tzinfo=datetime.UTC)
    record = AmqpRecord(
        "orders",
        0,
        "orders",
        _delivery(
            7, b"not json", {KEY_HEADER: "k-1", "trace": "t"}, timestamp=when, delivery_mode=2, message_id="id-1"
        ),
    )
    assert isinstance(record, Record)
    assert (record.topic(), record.partition(), record.offset()) == ("orders", 0, 6)  # delivery tag - 1
    assert (record.key(), record.value(), record.headers()) == (b"k-1", b"not json", [("trace", b"t")])
    assert record.timestamp() == (1, int(when.timestamp() * 1000))
    source = SourceRecord(
        "orders",
        0,
        6,
        record.key(),
        record.value(),
        record.headers() or [],
        record.timestamp()[1],
        1,
        record.source_details(),
    )
    dead = build_dead_letter(source, stage="decode", reason="not JSON", consumer_group="g", attempts=1)
    amqp = json.loads(dead.value)["source"]["amqp"]
    assert amqp == {
        "queue": "orders",
        "exchange": "",
        "routingKey": "orders",
        "deliveryTag": 7,
        "redelivered": True,
        "properties": {"delivery_mode": 2, "message_id": "id-1", "timestamp": when.isoformat()},
    }
    original = original_record(dead.value)
    assert (original.value, original.key, original.headers, original.offset) == (
        b"not json",
        b"k-1",
        [("trace", b"t")],
        6,
    )


def test_details_never_replace_the_standard_source_fields():
    source = SourceRecord("t", 0, 1, None, b"x", [], None, 0, {"offset": 99, "amqp": {"deliveryTag": 2}})
    body = json.loads(build_dead_letter(source, stage="decode", reason="r", consumer_group="g", attempts=1).value)
    assert body["source"]["offset"] == 1 and body["source"]["amqp"] == {"deliveryTag": 2}


class FakeChannel:
    def __init__(self) -> None:
        self.acks: list[tuple[int, bool]] = []

    async def basic_ack(self, tag: int, multiple: bool = False) -> None:
        self.acks.append((tag, multiple))


def test_commits_acknowledge_each_watermark_once_and_only_on_the_current_channel():
    transport = RabbitTransport()

    async def scenario() -> list[tuple[int, bool]]:
        transport._loop = asyncio.get_running_loop()  # start() is not needed: one queue set up by hand
        from toolkit.consumer.amqp import _Queue

        queue = transport._queues[("orders", 0)] = _Queue("orders", 0, "orders")
        channel = FakeChannel()
        queue.underlay, queue.generation, queue.assigned = channel, 2, True
        for positions in (
            [Position("orders", 0, 3, 2)],
            [Position("orders", 0, 3, 2)],  # unmoved: no ack
            [Position("orders", 0, 5, 1)],  # an earlier assignment's: dropped
            [Position("orders", 0, 8, 2)],
        ):
            await asyncio.wrap_future(transport.commit(positions, sync=True))
        return channel.acks

    assert asyncio.run(scenario()) == [(3, True), (8, True)]  # watermark W acks delivery tags up to W
    assert transport.take_commit_failure() is False


def test_commits_are_observed_and_the_transport_is_observable():
    transport = RabbitTransport()
    assert isinstance(transport, ObservableTransport)
    assert transport.fetch_state() == FetchState(False, None, False) and transport.lag() == {}  # not started
    seen: list[bool] = []
    transport.add_observer(SimpleNamespace(on_commit=lambda seconds, ok: seen.append(ok and seconds >= 0)))

    async def scenario() -> None:
        transport._loop = asyncio.get_running_loop()
        from toolkit.consumer.amqp import _Queue

        queue = transport._queues[("orders", 0)] = _Queue("orders", 0, "orders")
        queue.underlay, queue.generation, queue.assigned = FakeChannel(), 1, True
        await asyncio.wrap_future(transport.commit([Position("orders", 0, 4, 1)], sync=True))
        await asyncio.wrap_future(transport.commit([Position("orders", 0, 4, 1)], sync=True))  # nothing sent

    asyncio.run(scenario())
    assert seen == [True]


def test_a_lost_assignment_closes_a_channel_still_open_so_the_broker_requeues_its_deliveries():
    # A consumer the broker cancelled leaves its channel open, its deliveries unacknowledged there: closing
    # the channel gives them back to the queue, and the next generation consumes on a new channel (tags from 1)
    transport = RabbitTransport()
    released: list[tuple[list[tuple[str, int]], bool]] = []

    class Events:
        async def release(self, partitions: list[tuple[str, int]], lost: bool) -> list[Position]:
            released.append((partitions, lost))
            return []

    class Underlay:
        is_closed = False

        async def close(self) -> None:
            self.is_closed = True

    async def scenario() -> tuple[Any, Any]:
        from toolkit.consumer.amqp import _Queue

        transport._events = Events()  # type: ignore[assignment]
        queue = transport._queues[("orders", 0)] = _Queue("orders", 0, "orders")
        underlay = Underlay()
        queue.underlay, queue.generation, queue.assigned, queue.lost = underlay, 1, True, True
        queue.buffer.append(SimpleNamespace())
        await transport._lose(queue)
        return queue, underlay

    queue, underlay = asyncio.run(scenario())
    assert underlay.is_closed and released == [([("orders", 0)], True)]
    assert not queue.buffer and queue.underlay is None and not queue.assigned and not queue.lost

    # Offered the same channel again (not reopened), the next generation does not consume there: it is closed
    underlay.is_closed = False
    queue.consumed_on, queue.channel = underlay, SimpleNamespace(get_underlay_channel=lambda: _ready(underlay))
    asyncio.run(transport._consume(queue))
    assert underlay.is_closed and queue.generation == 1 and not queue.assigned


async def _ready(value: Any) -> Any:
    return value


@pytest.mark.parametrize(
    "kwargs, setting",
    [
        ({"url": "http://localhost"}, "url"),
        ({"prefetch_count": 0}, "prefetch_count"),
        ({"prefetch_count": 70000}, "prefetch_count"),
        ({"queue_type": "stream"}, "queue_type"),
        ({"partitions": {"orders": 0}}, "partitions"),
        ({"reconnect_interval_s": 0}, "reconnect_interval_s"),
        ({"queue_check_interval_s": 0}, "queue_check_interval_s"),
        ({"queue_check_interval_s": True}, "queue_check_interval_s"),
    ],
)
def test_bad_transport_arguments_name_the_argument(kwargs, setting):
    with pytest.raises(ConfigError) as raised:
        RabbitTransport(**kwargs)
    assert raised.value.setting == setting


def test_partitions_are_queues_and_the_url_is_shown_without_its_password():
    transport = RabbitTransport("amqp://app:s3cret@rabbit:5672/prod", partitions={"orders": 3})
    assert transport.queue_names("orders") == ["orders.0", "orders.1", "orders.2"]
    assert transport.queue_names("payments") == ["payments"]
    assert transport.describe() == ("RabbitMQ", "amqp://app:***@rabbit:5672/prod", "RABBITMQ_URL")
    assert redact("amqp://guest@h/") == "amqp://guest@h/"
    quorum = RabbitTransport(queue_type="quorum", single_active_consumer=True)
    assert quorum.queue_arguments_for() == {"x-queue-type": "quorum", "x-single-active-consumer": True}
    assert quorum.queue_arguments_for(dead_letters=True) == {"x-queue-type": "quorum"}


def test_rabbitmq_settings_from_the_environment(monkeypatch):
    monkeypatch.setenv("RABBITMQ_URL", "amqp://app:s3cret@rabbit:5672/")
    monkeypatch.setenv("RABBITMQ_PARTITIONS", "orders=4, payments=2")
    monkeypatch.setenv("RABBITMQ_QUEUE_TYPE", "quorum")
    monkeypatch.setenv("EPISTLE_BROKER", "rabbitmq")
    monkeypatch.setenv("RABBITMQ_QUEUE_CHECK_INTERVAL_S", "0.5")
    settings = load_settings(env_file=None)
    assert settings.consumer.broker == "rabbitmq"
    transport = RabbitTransport.from_settings(settings.rabbitmq)
    assert transport.queue_check_interval_s == 0.5
    assert (transport.url, transport.partitions, transport.queue_type) == (
        "amqp://app:s3cret@rabbit:5672/",
        {"orders": 4, "payments": 2},
        "quorum",
    )
    assert "s3cret" not in repr(settings)


@pytest.mark.parametrize(
    "name, value",
    [
        ("RABBITMQ_URL", "http://app:s3cret@rabbit/"),
        ("RABBITMQ_PARTITIONS", "orders"),
        ("RABBITMQ_QUEUE_TYPE", "stream"),
        ("EPISTLE_BROKER", "pulsar"),
    ],
)
def test_bad_rabbitmq_settings_name_the_variable_and_hide_the_url(monkeypatch, name, value):
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as raised:
        load_settings(env_file=None)
    assert name in str(raised.value) and "s3cret" not in str(raised.value)
