"""Shared fixtures: the real Kafka broker, the real schema registry and (for its tests) a RabbitMQ node,
brought up (or reused) once.

If ``KAFKA_BOOTSTRAP_SERVERS`` / ``SCHEMA_REGISTRY_URL`` / ``RABBITMQ_URL`` are set, the tests use those and
start nothing.
Tests under ``tests/integration`` are marked ``integration`` automatically; ``tests/behaviour`` marks its
Kafka half itself (its ``backend`` fixture), so ``-m "not integration"`` keeps the in-memory half.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SERVICES = [sys.executable, str(ROOT / "scripts" / "services.py")]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/integration/" in item.nodeid.replace(os.sep, "/"):
            item.add_marker(pytest.mark.integration)


def _ensure_service(name: str) -> None:
    proc = subprocess.run([*SERVICES, "up", name], capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.fail(f"could not start {name} with scripts/services.py:\n{proc.stdout}{proc.stderr}", pytrace=False)


@pytest.fixture(scope="session")
def kafka_bootstrap() -> str:
    """Bootstrap servers of a real broker: KAFKA_BOOTSTRAP_SERVERS, or the one our scripts run."""
    external = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if external:
        return external
    _ensure_service("kafka")
    return f"127.0.0.1:{os.environ.get('EPISTLE_KAFKA_PORT', '9092')}"


@pytest.fixture(scope="session")
def registry_url() -> str:
    """Confluent-compatible URL of a real registry: SCHEMA_REGISTRY_URL, or the Apicurio our scripts run."""
    external = os.environ.get("SCHEMA_REGISTRY_URL")
    if external:
        return external.rstrip("/")
    _ensure_service("registry")
    return f"http://127.0.0.1:{os.environ.get('EPISTLE_REGISTRY_PORT', '8081')}/apis/ccompat/v7"


@dataclass(frozen=True)
class PrometheusServer:
    """The Prometheus our scripts run: its URL, and the folder whose ``*.json`` target files it scrapes."""

    url: str
    targets: Path


@pytest.fixture(scope="session")
def prometheus() -> PrometheusServer:
    """A real Prometheus server (Debian's package, started by scripts/services.py: installed when missing)."""
    _ensure_service("prometheus")
    state = Path(os.environ.get("EPISTLE_SERVICES_DIR", ROOT / ".services")).resolve()
    return PrometheusServer(
        f"http://127.0.0.1:{os.environ.get('EPISTLE_PROMETHEUS_PORT', '9095')}", state / "prometheus" / "targets"
    )


@pytest.fixture(scope="session")
def rabbitmq_url() -> str:
    """AMQP URL of a real RabbitMQ node: RABBITMQ_URL, or the private node our scripts run (started here
    on first use: only the RabbitMQ tests need it)."""
    external = os.environ.get("RABBITMQ_URL")
    if external:
        return external
    _ensure_service("rabbitmq")
    return f"amqp://guest:guest@127.0.0.1:{os.environ.get('EPISTLE_RABBITMQ_PORT', '5672')}/"


@pytest.fixture
def unique_name(request: pytest.FixtureRequest) -> Callable[[str], str]:
    """``unique_name("orders")`` -> ``orders-test_x-1a2b3c4d``: unique per call, readable in broker logs."""
    test = "".join(c if c.isalnum() else "-" for c in request.node.name)[:40].strip("-")

    def make(prefix: str) -> str:
        return f"{prefix}-{test}-{uuid.uuid4().hex[:8]}"

    return make


@pytest.fixture
def admin(kafka_bootstrap: str):
    from confluent_kafka.admin import AdminClient

    return AdminClient({"bootstrap.servers": kafka_bootstrap})


@pytest.fixture
def make_topic(admin, unique_name) -> Iterator[Callable[..., str]]:
    """Create a unique topic (deleted after the test) and return its name."""
    from confluent_kafka.admin import NewTopic

    created: list[str] = []

    def make(prefix: str = "topic", partitions: int = 1) -> str:
        name = unique_name(prefix)
        futures = admin.create_topics([NewTopic(name, num_partitions=partitions, replication_factor=1)])
        futures[name].result(timeout=30)
        created.append(name)
        return name

    yield make
    if created:
        dlqs = [f"{name}.dlq" for name in created]
        existing = set(admin.list_topics(timeout=10).topics)
        doomed = [t for t in created + dlqs if t in existing]
        if doomed:
            for future in admin.delete_topics(doomed).values():
                try:
                    future.result(timeout=30)
                except Exception:  # cleanup is best effort; the topic names are unique anyway
                    pass


@pytest.fixture
def group_id(unique_name) -> str:
    return unique_name("group")
