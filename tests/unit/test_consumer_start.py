"""KafkaConsumer.start() failing before any Kafka client exists leaves the consumer startable again."""

from __future__ import annotations

import asyncio
import threading

import pytest

from toolkit.consumer import KafkaConsumer
from toolkit.errors import ConfigError


def test_a_registry_that_is_neither_a_registry_nor_a_resolver_is_refused_by_the_constructor():
    with pytest.raises(ConfigError, match="registry .*use a SchemaRegistry") as caught:
        KafkaConsumer("127.0.0.1:1", "group", registry=object())
    assert caught.value.setting == "registry"


class _OnlyGet:
    """Looks like a registry to the constructor (it has get) but is refused when start() wraps it."""

    def get(self, subject, version):
        raise AssertionError("never called")


def test_a_start_that_fails_on_its_registry_can_be_retried():
    consumer = KafkaConsumer("127.0.0.1:1", "group", registry=_OnlyGet())
    consumer.register_handler("orders", lambda message: True)
    for _ in range(2):  # the second attempt fails the same way, not with "already running"
        with pytest.raises(TypeError, match="registry: expected a SchemaRegistry"):
            asyncio.run(consumer.start())
    assert consumer.in_flight == 0


def test_start_without_topics_is_a_config_error():
    with pytest.raises(ConfigError, match="no topics"):
        asyncio.run(KafkaConsumer("127.0.0.1:1", "group").start())


def test_handle_signals_outside_the_main_thread_fails_cleanly_and_can_be_retried():
    from toolkit.registry import LocalFolderRegistry

    consumer = KafkaConsumer("127.0.0.1:1", "group", registry=LocalFolderRegistry("schemas"), models=None)
    consumer.register_handler("orders", lambda message: True)
    errors: list[BaseException] = []

    def attempt():
        try:
            asyncio.run(asyncio.wait_for(consumer.start(handle_signals=True), 10))
        except BaseException as exc:  # noqa: BLE001 - recorded for the assertions
            errors.append(exc)

    for _ in range(2):  # the second attempt fails the same way, not with "already running"
        thread = threading.Thread(target=attempt)
        thread.start()
        thread.join(30)
    assert [type(e) for e in errors] == [ConfigError, ConfigError], errors
    assert "main thread" in str(errors[0]) and "handle_signals=False" in str(errors[0])
