"""The RabbitMQ producer without a broker: the queue a record goes to, the producer EPISTLE_BROKER chooses,
and refused arguments (named, the password never shown)."""

from __future__ import annotations

import zlib

import pytest

from toolkit.errors import ConfigError
from toolkit.producer import EnvelopeProducer, ModelProducer, make_producer
from toolkit.producer_amqp import RabbitProducer, queue_for
from toolkit.settings import load_settings
from toolkit.testing import InMemoryRegistry


def test_a_topic_of_one_queue_is_its_queue() -> None:
    assert queue_for("orders", b"k", 1) == ("orders", 0)
    assert queue_for("orders", None, 1, turn=7) == ("orders", 0)


def test_a_key_always_goes_to_the_same_of_the_topics_queues() -> None:
    for key in (b"a", b"order-17", b"\x00\xff"):
        partition = zlib.crc32(key) % 4
        assert queue_for("orders", key, 4) == (f"orders.{partition}", partition)
        assert queue_for("orders", key, 4, turn=3) == queue_for("orders", key, 4, turn=1)


def test_records_without_a_key_take_turns() -> None:
    assert [queue_for("orders", None, 3, turn=t)[1] for t in range(6)] == [0, 1, 2, 0, 1, 2]


def test_epistle_broker_chooses_the_producer(monkeypatch) -> None:
    registry = InMemoryRegistry()
    monkeypatch.setenv("EPISTLE_BROKER", "rabbitmq")
    monkeypatch.setenv("RABBITMQ_URL", "amqp://me:secret@rabbit.example:5672/shop")
    monkeypatch.setenv("RABBITMQ_PARTITIONS", "orders=4")
    settings = load_settings(env_file=None)
    rabbit = make_producer(settings, registry=registry)
    assert isinstance(rabbit, RabbitProducer) and isinstance(rabbit, ModelProducer)
    assert rabbit.url == "amqp://me:secret@rabbit.example:5672/shop" and rabbit.partitions == {"orders": 4}
    assert "secret" not in rabbit.describe()
    kafka = make_producer(settings, registry=registry, broker="kafka")
    assert isinstance(kafka, EnvelopeProducer)
    with pytest.raises(ConfigError, match="use kafka or rabbitmq"):
        make_producer(settings, registry=registry, broker="nats")


@pytest.mark.parametrize(
    ("arguments", "setting", "shown"),
    [
        ({"url": "http://me:secret@host/"}, "url", "use amqp://"),
        ({"partitions": {"orders": 0}}, "partitions", "queue count"),
        ({"confirm_timeout_s": 0}, "confirm_timeout_s", "above 0"),
        ({"name": ""}, "name", "non-empty"),
    ],
)
def test_bad_arguments_are_refused_with_the_fix(arguments, setting, shown) -> None:
    with pytest.raises(ConfigError, match=shown) as caught:
        RabbitProducer(registry=InMemoryRegistry(), **arguments)
    assert caught.value.setting == setting and "secret" not in str(caught.value)


def test_a_closed_producer_refuses_to_send() -> None:
    producer = RabbitProducer(registry=InMemoryRegistry())
    assert producer.close() == 0
    with pytest.raises(Exception, match="closed"):
        producer._started()
