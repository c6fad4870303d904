"""What a RabbitMQ replay gives back of a dead letter's original, without a broker: the properties and the
header types recorded in ``source.amqp``, and the queue it goes back to."""

from __future__ import annotations

from datetime import UTC, datetime

from toolkit.consumer.deadletter import OriginalRecord
from toolkit.dlq.letters import DeadLetter
from toolkit.dlq.rabbit import _restored, _source_queue


def letter(source: object, topic: str = "orders") -> DeadLetter:
    original = OriginalRecord(topic, 0, 4, b"k", b"{}", [("retries", b"3")], None)
    return DeadLetter("orders.dlq", 0, 0, None, {"error": {}, "source": source}, original, None, None, None)


def test_the_recorded_properties_come_back_under_aio_pikas_names_and_types() -> None:
    amqp = {
        "queue": "orders.2",
        "properties": {
            "content_type": "application/json",
            "message_type": "OrderPlaced",
            "timestamp": "2026-11-30T10:00:00+00:00",
            "priority": 5,
            "correlation_id": "c-1",
            "user_id": "guest",  # checked by the broker against the connection's user: left off
            "expiration": "60000",  # would start again on the republished message: left off
            "delivery_mode": 2,  # always persistent on replay
        },
        "headerTypes": {"retries": "int"},
    }
    properties, types = _restored(letter({"amqp": amqp}))
    assert properties == {
        "content_type": "application/json",
        "type": "OrderPlaced",
        "timestamp": datetime(2026, 11, 30, 10, tzinfo=UTC),
        "priority": 5,
        "correlation_id": "c-1",
    }
    assert types == {"retries": "int"}
    assert _source_queue(letter({"amqp": amqp})) == "orders.2"  # the queue, not the topic


def test_a_dead_letter_without_amqp_coordinates_or_with_garbage_gives_nothing_back() -> None:
    assert _restored(letter({"topic": "orders"})) == ({}, {})
    assert _restored(letter("not a dict")) == ({}, {})
    garbage = {"amqp": {"properties": ["x"], "headerTypes": {"a": 1}, "queue": 7}}
    assert _restored(letter(garbage)) == ({}, {})
    assert _source_queue(letter(garbage)) == "orders"  # falls back to the original's topic
    bad_values = {"amqp": {"properties": {"timestamp": "yesterday", "priority": "high"}}}
    assert _restored(letter(bad_values)) == ({}, {})
