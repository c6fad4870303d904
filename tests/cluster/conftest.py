"""Tests on a 3-node Kafka cluster (``scripts/services.py up kafka --brokers 3``): nodes killed, restarted one
after another, consumers killed, while records flow. Marked ``cluster``.

They need a cluster of their own, on ports of its own, because they kill its nodes: ``make test-cluster``
starts one (``CLUSTER_PORT``, default 19092-19094, controllers 10 above; state in ``CLUSTER_DIR``), runs
them, and stops it. They find it through ``EPISTLE_CLUSTER_PORT`` (the first node's port) and
``EPISTLE_CLUSTER_DIR`` (its services folder); without those they are skipped, so a plain ``pytest`` (and the
shared broker on 9092) is never touched.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic

from toolkit.consumer.testing import envelope_bytes

ROOT = Path(__file__).resolve().parents[2]
SERVICES = [sys.executable, str(ROOT / "scripts" / "services.py")]
NODES = 3
SERVICE_TIMEOUT_S = 240.0  # one `services.py up` of a node (a cold JVM on a busy 2-core machine is slow)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/cluster/" in item.nodeid.replace(os.sep, "/"):
            item.add_marker(pytest.mark.cluster)


class Cluster:
    """The 3-node cluster scripts/services.py runs from ``state``: its nodes' pids, leaders and replicas."""

    def __init__(self, state: Path, port: int) -> None:
        self.state = state
        self.ports = [port + n for n in range(NODES)]
        self.bootstrap = ",".join(f"127.0.0.1:{p}" for p in self.ports)
        self.env = {
            **os.environ,
            "EPISTLE_SERVICES_DIR": str(state),
            "EPISTLE_KAFKA_PORT": str(port),
            "EPISTLE_KAFKA_CONTROLLER_PORT": str(port + 10),
            "EPISTLE_KAFKA_BROKERS": str(NODES),
        }
        self.admin = AdminClient({"bootstrap.servers": self.bootstrap})

    def up(self) -> None:
        """Start whichever node is not running (the others are left alone) and wait until it answers."""
        proc = subprocess.run(
            [*SERVICES, "up", "kafka"], env=self.env, capture_output=True, text=True, timeout=SERVICE_TIMEOUT_S
        )
        assert proc.returncode == 0, f"services.py up kafka failed:\n{proc.stdout}{proc.stderr}"

    def pid(self, node: int) -> int | None:
        try:
            return int((self.state / f"kafka-{node}" / "pid").read_text().strip())
        except (OSError, ValueError):
            return None

    def stop(self, node: int, sig: signal.Signals) -> None:
        """Send ``sig`` to a node's JVM and wait until it has exited."""
        pid = self.pid(node)
        assert pid is not None, f"node {node} is not running"
        os.kill(pid, sig)
        deadline = time.monotonic() + 60
        while Path(f"/proc/{pid}").exists() and "Z" not in _state(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not Path(f"/proc/{pid}").exists() or "Z" in _state(pid), f"node {node} did not stop on {sig.name}"

    def leader(self, topic: str, partition: int) -> int:
        return self.admin.list_topics(topic, timeout=10).topics[topic].partitions[partition].leader

    def under_replicated(self) -> list[str]:
        """Every partition (the internal topics' too) whose in-sync replicas are not all three nodes."""
        metadata = self.admin.list_topics(timeout=10)
        return [
            f"{name}-{p.id} isr {p.isrs}"
            for name, topic in metadata.topics.items()
            for p in topic.partitions.values()
            if sorted(p.isrs) != list(range(1, NODES + 1))
        ]

    def wait_fully_replicated(self, timeout_s: float = 120) -> None:
        deadline = time.monotonic() + timeout_s
        while (lagging := self.under_replicated()) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not lagging, f"still under-replicated after {timeout_s:.0f}s: {lagging[:5]}"

    def create_topic(self, name: str, partitions: int) -> None:
        """With the broker's defaults for replication (3) and min.insync.replicas (2), as the toolkit does."""
        self.admin.create_topics([NewTopic(name, num_partitions=partitions)])[name].result(timeout=30)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            topic = self.admin.list_topics(name, timeout=10).topics[name]
            if len(topic.partitions) == partitions and all(p.leader >= 0 for p in topic.partitions.values()):
                return
            time.sleep(0.2)


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return ""


@pytest.fixture(scope="session")
def cluster() -> Cluster:
    state, port = os.environ.get("EPISTLE_CLUSTER_DIR"), os.environ.get("EPISTLE_CLUSTER_PORT")
    if not state or not port:
        pytest.skip("no cluster of its own: `make test-cluster` runs these (EPISTLE_CLUSTER_DIR, EPISTLE_CLUSTER_PORT)")
    cluster = Cluster(Path(state).resolve(), int(port))
    cluster.up()
    return cluster


@pytest.fixture
def healthy(cluster: Cluster) -> Iterator[Cluster]:
    """The cluster with every node running and every partition fully replicated, before and after the test
    (a node a test killed is started again)."""
    cluster.up()
    cluster.wait_fully_replicated()
    yield cluster
    cluster.up()
    cluster.wait_fully_replicated()


@pytest.fixture
def topic_name(request: pytest.FixtureRequest) -> Callable[[str], str]:
    test = "".join(c if c.isalnum() else "-" for c in request.node.name)[:40].strip("-")
    return lambda prefix: f"{prefix}-{test}-{uuid.uuid4().hex[:8]}"


def order_body() -> dict:
    files = sorted((ROOT / "schemas" / "orders" / "samples" / "1" / "valid").glob("*.json"))
    return json.loads(files[0].read_text())


class SteadyProducer(threading.Thread):
    """Produces ``orders`` v1 envelopes with unique messageIds at about ``rate`` a second until stopped, with
    acks=all and idempotence (a leader change loses no record; librdkafka may still write one twice when it
    has to start a new producer epoch, so tests read the log rather than count on it); ``delivered`` holds
    the messageIds the cluster acknowledged, ``failed`` the delivery errors."""

    def __init__(self, bootstrap: str, topic: str, rate: int, prefix: str = "m") -> None:
        super().__init__(daemon=True)
        self.topic, self.rate, self.prefix = topic, rate, prefix
        self.producer = Producer(
            {
                "bootstrap.servers": bootstrap,
                "acks": "all",
                "enable.idempotence": True,
                "linger.ms": 5,
                "logger": logging.getLogger("tests.cluster.producer"),  # a node going away is expected here
            }
        )
        self.body = order_body()
        self.sent = 0
        self.delivered: set[str] = set()
        self.failed: list[str] = []
        self._halt = threading.Event()

    def _on_delivery(self, err, msg) -> None:
        message_id = msg.key().decode()
        if err is None:
            self.delivered.add(message_id)
        else:
            self.failed.append(f"{message_id}: {err}")

    def run(self) -> None:
        started = time.monotonic()
        while not self._halt.is_set():
            for _ in range(int((time.monotonic() - started) * self.rate) - self.sent):
                message_id = f"{self.prefix}{self.sent:06d}"
                value = envelope_bytes("orders", 1, self.body, message_id=message_id)
                self.producer.produce(self.topic, key=message_id.encode(), value=value, on_delivery=self._on_delivery)
                self.sent += 1
            self.producer.poll(0.05)

    def halt(self) -> None:
        """Stop producing (a test that failed: nothing is checked), so no thread outlives its test."""
        self._halt.set()
        if self.is_alive():
            self.join(10)

    def finish(self, timeout_s: float = 120) -> None:
        """Stop producing and wait for every acknowledgement."""
        self._halt.set()
        self.join(10)
        left = self.producer.flush(timeout_s)
        assert left == 0 and not self.failed, f"{left} undelivered; failures: {self.failed[:5]}"
        assert len(self.delivered) == self.sent
