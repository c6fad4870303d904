"""Integration tests need a Kafka broker: KAFKA_BOOTSTRAP_SERVERS (environment or .env, default
127.0.0.1:9092). Tests under tests/integration are marked ``integration``; ``pytest -m "not integration"``
runs the unit tests alone."""

from __future__ import annotations

import os
import uuid

import pytest
from toolkit import Settings, load_settings


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/integration/" in item.nodeid.replace(os.sep, "/"):
            item.add_marker(pytest.mark.integration)


@pytest.fixture
def kafka_settings() -> Settings:
    """Settings with a consumer group of this test's own; fails (never skips) when no broker answers."""
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient

    settings = load_settings(kafka__group_id=f"{{ cookiecutter.group_id }}-test-{uuid.uuid4().hex[:8]}")
    servers = settings.kafka.bootstrap_servers
    try:
        AdminClient(settings.kafka.client_config()).list_topics(timeout=10)
    except KafkaException as exc:
        pytest.fail(f"no Kafka broker answered at {servers} (KAFKA_BOOTSTRAP_SERVERS): {exc}. Start one "
                    "there, or set KAFKA_BOOTSTRAP_SERVERS (or .env) to your cluster.", pytrace=False)
    return settings
