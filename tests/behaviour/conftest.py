"""The ``backend`` fixture: every behaviour test runs twice, on the in-memory broker (a unit test) and on the
real Kafka broker (marked ``integration``; the services are started only for that half)."""

from __future__ import annotations

import pytest

from tests.behaviour.backends import Backend, KafkaBackend, MemoryBackend


@pytest.fixture(params=["memory", pytest.param("kafka", marks=pytest.mark.integration)])
def backend(request: pytest.FixtureRequest) -> Backend:
    if request.param == "memory":
        return MemoryBackend()
    return KafkaBackend(request.getfixturevalue("kafka_bootstrap"), request.getfixturevalue("make_topic"),
                        request.getfixturevalue("group_id"), request.getfixturevalue("monkeypatch"))
