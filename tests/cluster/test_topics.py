"""The topics the toolkit creates itself (dead-letter topics) take the cluster's defaults: three replicas and
``min.insync.replicas=2``, as the topics of the application do, instead of a single copy."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

from confluent_kafka.admin import ConfigResource

from tests.cluster.conftest import Cluster
from toolkit.consumer import KafkaConsumer
from toolkit.consumer.testing import produce, read_topic
from toolkit.registry import LocalFolderRegistry

ROOT = Path(__file__).resolve().parents[2]


def test_a_dead_letter_topic_is_replicated_three_times(healthy: Cluster, topic_name: Callable[[str], str]) -> None:
    topic = topic_name("dlq-replication")
    healthy.create_topic(topic, 1)
    produce(healthy.bootstrap, topic, [b"not json"])
    consumer = KafkaConsumer(
        bootstrap_servers=healthy.bootstrap,
        group_id=topic_name("group"),
        topics=[topic],
        registry=LocalFolderRegistry(ROOT / "schemas"),
        stop_when_idle=True,
    )

    async def never(message) -> None:
        raise AssertionError("a record that is not JSON reached a handler")

    consumer.register_handler(topic, never)
    asyncio.run(asyncio.wait_for(consumer.start(), 120))

    dlq = f"{topic}.dlq"
    (letter,) = read_topic(healthy.bootstrap, dlq, expected=1)
    assert letter.json()["error"]["stage"] == "decode"
    partitions = healthy.admin.list_topics(dlq, timeout=10).topics[dlq].partitions.values()
    assert [sorted(p.replicas) for p in partitions] == [[1, 2, 3]] * len(partitions)
    resource = ConfigResource("topic", dlq)
    config = healthy.admin.describe_configs([resource])[resource].result(timeout=30)
    assert config["min.insync.replicas"].value == "2"
