"""start() with no broker answering fails within the start-up timeout, naming the setting, and leaves the
consumer startable again."""

from __future__ import annotations

import asyncio
import socket
import threading
from pathlib import Path

import pytest

from toolkit.consumer import KafkaConsumer
from toolkit.errors import BrokerUnavailable, BrokerUnreachable, EpistleError
from toolkit.registry import LocalFolderRegistry
from toolkit.settings import load_settings

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def closed_port() -> int:
    """A local port nothing listens on (bound once to get a free number, then closed)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _consumer(bootstrap: str, **kw) -> KafkaConsumer:
    consumer = KafkaConsumer(bootstrap, "startup-group", registry=LocalFolderRegistry(ROOT / "schemas"), **kw)
    consumer.register_handler("orders", lambda message: True)
    return consumer


def test_start_without_a_broker_fails_naming_the_setting(closed_port: int) -> None:
    consumer = _consumer(f"127.0.0.1:{closed_port}", startup_timeout_s=1.0)
    for _ in range(2):  # the second attempt fails the same way, not with "already running"
        with pytest.raises(BrokerUnreachable) as err:
            # the outer bound only turns "never returns" (the old behaviour) into a failure
            asyncio.run(asyncio.wait_for(consumer.start(), 60))
        assert "KAFKA_STARTUP_TIMEOUT_S" in str(err.value) and "KAFKA_BOOTSTRAP_SERVERS" in str(err.value)
        assert f"127.0.0.1:{closed_port}" in str(err.value)
        assert err.value.setting == "KAFKA_STARTUP_TIMEOUT_S" and err.value.timeout_s == 1.0
        assert isinstance(err.value, BrokerUnavailable) and isinstance(err.value, EpistleError)
    # nothing left behind: no poll thread, dead-letter producer or handler pool thread
    assert not [thread.name for thread in threading.enumerate() if thread.name.startswith("epistle-")]


def test_the_start_up_timeout_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch, closed_port: int) -> None:
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", f"127.0.0.1:{closed_port}")
    monkeypatch.setenv("KAFKA_STARTUP_TIMEOUT_S", "1.5")
    consumer = KafkaConsumer.from_settings(load_settings(env_file=None), registry=LocalFolderRegistry(ROOT / "schemas"))
    consumer.register_handler("orders", lambda message: True)
    with pytest.raises(BrokerUnreachable) as err:
        asyncio.run(asyncio.wait_for(consumer.start(), 60))
    assert err.value.timeout_s == 1.5 and "within 1.5s" in str(err.value)


def test_start_with_the_broker_up_gets_past_the_check(kafka_bootstrap: str, make_topic, group_id) -> None:
    topic = make_topic("startup")
    consumer = KafkaConsumer(
        kafka_bootstrap,
        group_id,
        registry=LocalFolderRegistry(ROOT / "schemas"),
        startup_timeout_s=30.0,
        stop_when_idle=True,
        topics=[topic],
    )
    consumer.register_handler(topic, lambda message: True)
    asyncio.run(asyncio.wait_for(consumer.start(), 60))  # an empty topic: drained at once, start() returns


@pytest.mark.parametrize("value", [0, -1.0, float("inf"), "30", True])
def test_an_unusable_startup_timeout_is_refused_naming_the_option(value) -> None:
    with pytest.raises(EpistleError) as err:
        KafkaConsumer("127.0.0.1:9092", "group", startup_timeout_s=value)
    assert err.value.setting == "startup_timeout_s" and "KAFKA_STARTUP_TIMEOUT_S" in str(err.value)
