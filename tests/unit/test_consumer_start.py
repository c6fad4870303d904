"""KafkaConsumer.start() failing before any Kafka client exists leaves the consumer startable again."""

from __future__ import annotations

import asyncio

import pytest

from toolkit.consumer import KafkaConsumer
from toolkit.errors import ConfigError


def test_a_start_that_fails_on_its_registry_can_be_retried():
    consumer = KafkaConsumer("127.0.0.1:1", "group", registry=object())  # neither a registry nor a resolver
    consumer.register_handler("orders", lambda message: True)
    for _ in range(2):  # the second attempt fails the same way, not with "already running"
        with pytest.raises(TypeError, match="neither a SchemaResolver nor a SchemaRegistry"):
            asyncio.run(consumer.start())
    assert consumer.in_flight == 0


def test_start_without_topics_is_a_config_error():
    with pytest.raises(ConfigError, match="no topics"):
        asyncio.run(KafkaConsumer("127.0.0.1:1", "group").start())
