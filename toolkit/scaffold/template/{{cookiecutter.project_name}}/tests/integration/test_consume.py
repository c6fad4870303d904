"""Against a real broker: publish a generated model to every topic through the toolkit's producer (validated
against schemas/ first), run the app's consumer, and check that each handler stored it as the model."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from confluent_kafka import KafkaError
from confluent_kafka.admin import AdminClient, NewTopic
from toolkit.producer import EnvelopeProducer

{% for t in cookiecutter.topics | topic_plans -%}
from generated_models.{{ t.model_package }}.v1 import {{ t.model_class }}
{% endfor -%}
from {{ cookiecutter.package_name }}.app import TOPICS, Dependencies, build_consumer
from {{ cookiecutter.package_name }}.services import InMemoryStore

# topic -> (schemaName, model)
SCHEMAS = {
{%- for t in cookiecutter.topics | topic_plans %}
    "{{ t.topic }}": ("{{ t.schema_name }}", {{ t.model_class }}),
{%- endfor %}
}
WAIT_S = 60
PRODUCER = "{{ cookiecutter.project_name }}-tests"


def _ensure_topics(admin: AdminClient) -> None:
    missing = [t for t in TOPICS if t not in admin.list_topics(timeout=10).topics]
    if missing:  # broker defaults for partitions and replication
        for topic, future in admin.create_topics([NewTopic(t) for t in missing]).items():
            try:
                future.result(timeout=30)
            except Exception as exc:
                error = exc.args[0] if exc.args else None
                if isinstance(error, KafkaError) and error.code() == KafkaError.TOPIC_ALREADY_EXISTS:
                    continue
                pytest.fail(f"could not create topic {topic!r}: {exc}", pytrace=False)


def _produce(settings, message_ids: dict[str, str]) -> None:
    """One model per topic, published as the envelope of its schema; waits for every acknowledgement."""
    with EnvelopeProducer.from_settings(settings, name=PRODUCER) as producer:
        deliveries = []
        for topic, message_id in message_ids.items():
            _, model_class = SCHEMAS[topic]
            event = model_class.model_validate({"id": message_id, "occurredAt": "2024-05-01T12:00:00Z",
                                                "note": "integration test"})
            deliveries.append(producer.send(topic, event, key=message_id, message_id=message_id))
        for delivery in deliveries:
            delivery.result(timeout=30)  # raises DeliveryFailed with the broker's reason


async def _consume_until_seen(consumer, store: InMemoryStore, message_ids: dict[str, str]) -> None:
    run = asyncio.create_task(consumer.start())
    loop = asyncio.get_running_loop()
    deadline = loop.time() + WAIT_S
    try:
        while not all(m in store.events for m in message_ids.values()) and loop.time() < deadline:
            if run.done():
                break
            await asyncio.sleep(0.2)
    finally:
        await consumer.stop()
        await asyncio.wait_for(run, 60)  # re-raises what stopped the consumer, if anything did


def test_every_handler_receives_its_topic_message(kafka_settings) -> None:
    _ensure_topics(AdminClient(kafka_settings.kafka.client_config()))
    message_ids = {topic: f"it-{uuid.uuid4().hex}" for topic in TOPICS}
    _produce(kafka_settings, message_ids)
    store = InMemoryStore()

    consumer = build_consumer(kafka_settings, Dependencies(store=store))
    asyncio.run(_consume_until_seen(consumer, store, message_ids))

    missing = {t: m for t, m in message_ids.items() if m not in store.events}
    assert not missing, (f"within {WAIT_S}s no handler stored {missing}; see the consumer log above "
                         "(a message that failed is in <topic>.dlq with the reason)")
    for topic, message_id in message_ids.items():
        stored_topic, event = store.events[message_id]
        assert stored_topic == topic
        assert isinstance(event, SCHEMAS[topic][1]) and event.id == message_id
