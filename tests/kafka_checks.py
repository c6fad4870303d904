"""Checks on the real broker shared by the integration tests."""

from __future__ import annotations

from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AdminClient


def records_in(bootstrap: str, topic: str) -> int:
    """How many records ``topic`` holds (0 when it does not exist): a check that cannot pass by timing out,
    unlike reading the topic for a while and finding nothing."""
    metadata = AdminClient({"bootstrap.servers": bootstrap}).list_topics(timeout=10)
    if topic not in metadata.topics:
        return 0
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "epistle-tests-watermarks"})
    try:
        total = 0
        for partition in metadata.topics[topic].partitions:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=10)
            total += high - low
        return total
    finally:
        consumer.close()
