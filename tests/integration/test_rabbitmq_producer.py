"""The RabbitMQ producer on a real node: models published with publisher confirms and read back by the
consumer on RabbitMQ as equal models, persistent, with the header's ids as AMQP properties; the correlationId
carried over by a handler that publishes; a message no queue takes fails (mandatory), a refused model sends
nothing, a topic of several queues is spread by key, an unreachable broker fails the future retriable."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from generated_models.orders.v1 import Order as OrderV1
from generated_models.orders.v2 import Order as OrderV2
from tests.integration.test_rabbitmq import _count, _delete, _publish, _take, amqp
from toolkit.consumer import KafkaConsumer
from toolkit.consumer.amqp import RabbitTransport, headers_from_table
from toolkit.producer import DeliveryFailed, PublishRefused, make_producer
from toolkit.producer_amqp import RabbitProducer, queue_for
from toolkit.registry import CachedRegistry, LocalFolderRegistry
from toolkit.settings import load_settings

ROOT = Path(__file__).resolve().parents[2]
SCHEMAS = ROOT / "schemas"


def _order(cls, version: int, name: str = "full-card-payment"):
    return cls.model_validate(
        json.loads((SCHEMAS / "orders/samples" / str(version) / "valid" / f"{name}.json").read_text())
    )


@pytest.fixture
def registry() -> CachedRegistry:
    return CachedRegistry(LocalFolderRegistry(SCHEMAS))


@pytest.fixture
def queues(rabbitmq_url, unique_name):
    """Declared (durable) queues with fresh names; deleted with their .dlq after the test."""
    names: list[str] = []

    def make(prefix: str) -> str:
        names.append(unique_name(prefix))
        amqp(rabbitmq_url, _publish, names[-1], [])
        return names[-1]

    yield make
    amqp(rabbitmq_url, _delete, [n for name in names for n in (name, f"{name}.dlq")])


def test_published_models_come_back_as_equal_models_with_confirmed_persistent_deliveries(
    rabbitmq_url, queues, registry, group_id
) -> None:
    topic = queues("produced")
    models = [_order(OrderV1, 1), _order(OrderV2, 2), _order(OrderV2, 2, "required-fields-only")]
    with RabbitProducer(rabbitmq_url, registry=registry, name="test-producer") as producer:
        deliveries = [producer.send(topic, m, key=f"k{i}", headers={"origin": "test"}) for i, m in enumerate(models)]
        delivered = [future.result(30) for future in deliveries]
    assert [(d.topic, d.queue, d.partition, d.offset) for d in delivered] == [(topic, topic, 0, -1)] * 3
    assert all(d.correlation_id == d.message_id and d.timestamp for d in delivered)  # each starts a conversation

    # What is on the queue: persistent, the header's ids as properties, the key and headers in the table
    messages = amqp(rabbitmq_url, _take, topic)
    assert [m.message_id for m in messages] == [d.message_id for d in delivered]  # in the order sent
    for i, message in enumerate(messages):
        key, headers, _ = headers_from_table(message.headers)
        assert (key, headers) == (f"k{i}".encode(), [("origin", b"test")])
        assert message.delivery_mode == 2 and message.content_type == "application/json"
        assert message.correlation_id == delivered[i].correlation_id and message.type == "Order"
        assert message.app_id == "test-producer"
        assert json.loads(message.body)["header"]["producer"] == "test-producer"

    # Published again, consumed by the toolkit on RabbitMQ: the same models
    with RabbitProducer(rabbitmq_url, registry=registry) as producer:
        for m in models:
            producer.send(topic, m).result(30)
    received = []
    consumer = KafkaConsumer(
        group_id=group_id,
        transport=RabbitTransport(rabbitmq_url),
        registry=registry,
        stop_when_idle=True,
        commit_interval_s=0.2,
    )
    consumer.register_handler(topic, lambda message: received.append(message.body))
    asyncio.run(asyncio.wait_for(consumer.start(), 60))
    assert received == models
    assert consumer.stats[topic].dead_lettered_total == 0


def test_a_handler_that_publishes_carries_the_correlation_id_over(rabbitmq_url, queues, registry, group_id) -> None:
    orders, audit = queues("orders"), queues("audit")
    order = _order(OrderV2, 2)
    with RabbitProducer(rabbitmq_url, registry=registry) as producer:
        producer.send(orders, order, correlation_id="conversation-1").result(30)

        async def handler(message) -> None:  # publishes inside the handler: the correlationId goes along
            await producer.publish(audit, message.body)

        consumer = KafkaConsumer(
            group_id=group_id,
            transport=RabbitTransport(rabbitmq_url),
            registry=registry,
            stop_when_idle=True,
            commit_interval_s=0.2,
        )
        consumer.register_handler(orders, handler)
        asyncio.run(asyncio.wait_for(consumer.start(), 60))
    (audited,) = amqp(rabbitmq_url, _take, audit)
    assert audited.correlation_id == "conversation-1"
    assert json.loads(audited.body)["header"]["correlationId"] == "conversation-1"


def test_a_message_no_queue_takes_fails_and_a_refused_model_sends_nothing(rabbitmq_url, queues, registry) -> None:
    topic = queues("refused")
    order = _order(OrderV2, 2)
    with RabbitProducer(rabbitmq_url, registry=registry) as producer:
        with pytest.raises(DeliveryFailed, match="no queue named") as caught:
            producer.send(f"{topic}-missing", order).result(30)  # mandatory: returned, not dropped
        assert (caught.value.code, caught.value.retriable) == ("NO_ROUTE", False)
        with pytest.raises(PublishRefused, match="items"):
            producer.send(topic, order.model_copy(update={"items": []}))
        producer.send(topic, order).result(30)  # the producer (and its channel) still work
    assert amqp(rabbitmq_url, _count, topic) == 1


def test_a_topic_of_several_queues_is_spread_by_key(rabbitmq_url, unique_name, registry) -> None:
    topic = unique_name("spread")
    amqp(rabbitmq_url, _declare_all, [f"{topic}.{p}" for p in range(2)])
    keys = [f"key-{i}" for i in range(8)]
    try:
        with RabbitProducer(rabbitmq_url, registry=registry, partitions={topic: 2}) as producer:
            delivered = [producer.send(topic, _order(OrderV2, 2), key=key).result(30) for key in keys]
        for d, key in zip(delivered, keys, strict=True):
            assert (d.queue, d.partition) == queue_for(topic, key.encode(), 2)
        counts = [amqp(rabbitmq_url, _count, f"{topic}.{p}") for p in range(2)]
        assert counts == [sum(1 for d in delivered if d.partition == p) for p in range(2)]
        assert sum(counts) == len(keys)
    finally:
        amqp(rabbitmq_url, _delete, [f"{topic}.{p}" for p in range(2)])


async def _declare_all(connection, names: list[str]) -> None:
    for name in names:
        await _publish(connection, name, [])


def test_an_unreachable_broker_fails_the_future_retriable(registry) -> None:
    with RabbitProducer("amqp://guest:guest@127.0.0.1:1/", registry=registry, confirm_timeout_s=2) as producer:
        with pytest.raises(DeliveryFailed, match="not confirmed by RabbitMQ") as caught:
            producer.send("orders", _order(OrderV2, 2)).result(30)
    assert (caught.value.code, caught.value.retriable) == ("BROKER_UNAVAILABLE", True)
    assert "guest:guest" not in str(caught.value)  # the password is not shown


def test_epistle_broker_chooses_the_rabbitmq_producer(rabbitmq_url, queues, registry, monkeypatch) -> None:
    topic = queues("chosen")
    monkeypatch.setenv("EPISTLE_BROKER", "rabbitmq")
    monkeypatch.setenv("RABBITMQ_URL", rabbitmq_url)
    settings = load_settings(env_file=None)

    async def run() -> None:
        async with make_producer(settings, registry=registry) as producer:
            assert isinstance(producer, RabbitProducer)
            delivery = await producer.publish(topic, _order(OrderV2, 2), key="k")
            assert delivery.queue == topic

    asyncio.run(run())
    assert amqp(rabbitmq_url, _count, topic) == 1


def test_a_published_message_and_its_handling_are_one_trace(rabbitmq_url, queues, registry, group_id) -> None:
    """The RabbitMQ producer's PRODUCER span travels in the message's headers (W3C traceparent), and the
    consumer's span on RabbitMQ continues it, as on Kafka (tests/integration/test_tracing.py)."""
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from opentelemetry.trace import SpanKind

    from toolkit.observability.tracing import TracingMiddleware

    topic = queues("traced")
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    with RabbitProducer(rabbitmq_url, registry=registry, tracer_provider=provider) as producer:
        with provider.get_tracer("tests").start_as_current_span("checkout"):
            producer.send(topic, _order(OrderV2, 2), key="A-1").result(30)
    consumer = KafkaConsumer(
        group_id=group_id,
        transport=RabbitTransport(rabbitmq_url),
        registry=registry,
        stop_when_idle=True,
        commit_interval_s=0.2,
        middleware=[TracingMiddleware(group_id=group_id, tracer_provider=provider, system="rabbitmq")],
    )
    consumer.register_handler(topic, lambda message: None)
    asyncio.run(asyncio.wait_for(consumer.start(), 60))
    spans = {span.name: span for span in exporter.get_finished_spans()}
    checkout, send, process = spans["checkout"], spans[f"send {topic}"], spans[f"process {topic}"]
    assert send.kind is SpanKind.PRODUCER and send.parent.span_id == checkout.context.span_id
    assert send.attributes["messaging.system"] == "rabbitmq"
    assert "messaging.kafka.offset" not in send.attributes
    assert process.kind is SpanKind.CONSUMER and process.parent.span_id == send.context.span_id
    assert process.context.trace_id == checkout.context.trace_id
