"""The ``backend`` fixture: every behaviour test runs three times, on the in-memory broker (a unit test), on the
real Kafka broker and on a real RabbitMQ node (both marked ``integration``; the services are started only for
those). A test of a behaviour a broker does not have is skipped there, with the reason its backend gives
(``Backend.unsupported``)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.behaviour.backends import Backend, KafkaBackend, MemoryBackend, RabbitBackend


@pytest.fixture(
    params=[
        "memory",
        pytest.param("kafka", marks=pytest.mark.integration),
        pytest.param("rabbitmq", marks=pytest.mark.integration),
    ]
)
def backend(request: pytest.FixtureRequest) -> Iterator[Backend]:
    name = request.param
    test = request.node.originalname
    for kind in (MemoryBackend, KafkaBackend, RabbitBackend):
        if kind.name == name and test in kind.unsupported:
            pytest.skip(f"{name}: {kind.unsupported[test]}")
    if name == "memory":
        yield MemoryBackend()
    elif name == "kafka":
        yield KafkaBackend(
            request.getfixturevalue("kafka_bootstrap"),
            request.getfixturevalue("make_topic"),
            request.getfixturevalue("group_id"),
            request.getfixturevalue("monkeypatch"),
        )
    else:
        rabbit = RabbitBackend(
            request.getfixturevalue("rabbitmq_url"),
            request.getfixturevalue("unique_name"),
            request.getfixturevalue("group_id"),
            request.getfixturevalue("monkeypatch"),
        )
        yield rabbit
        rabbit.delete_queues()
