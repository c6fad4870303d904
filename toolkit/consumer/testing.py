"""Helpers for tests, demos and benchmarks: build envelopes, produce them, read topics back, look at
committed offsets. Blocking calls on the real broker; not used by the runtime."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, cast

from confluent_kafka import Consumer, KafkaError, Message, Producer, TopicPartition

from toolkit.envelope import encode_envelope, header_fields


def envelope_bytes(
    schema_name: str,
    version: int | str,
    body: Any,
    *,
    message_type: str | None = None,
    message_id: str | None = None,
    correlation_id: str | None = None,
    producer: str = "epistle-tests",
    timestamp: str | None = None,
) -> bytes:
    """Envelope bytes as a producer writes them (:func:`toolkit.envelope.encode_envelope`), the header filled by
    :func:`toolkit.envelope.header_fields` and not checked (a test may send one the consumer must refuse)."""
    header = header_fields(
        schema_name,
        version,
        message_type=message_type or f"{schema_name}.v{version}",
        producer=producer,
        message_id=message_id,
        correlation_id=correlation_id,
        timestamp=timestamp,
    )
    return encode_envelope(header, body)


@dataclass(frozen=True)
class ReadRecord:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes | None]]
    timestamp: int

    def json(self) -> Any:
        return json.loads(self.value) if self.value is not None else None


def produce(
    bootstrap: str,
    topic: str,
    records: Iterable[bytes | tuple[bytes | None, bytes | None]],
    *,
    partition: int | None = None,
    headers: list[tuple[str, bytes]] | None = None,
    config: dict[str, Any] | None = None,
) -> int:
    """Produce values (or ``(key, value)`` pairs) and wait for every acknowledgement; returns the count.

    Raises:
        RuntimeError: a record was not delivered.
    """
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all", "linger.ms": 5, **(config or {})})
    errors: list[KafkaError] = []

    def on_delivery(err: KafkaError | None, _msg: Message) -> None:
        if err is not None:
            errors.append(err)

    count = 0
    for record in records:
        key, value = record if isinstance(record, tuple) else (None, record)
        kwargs: dict[str, Any] = {"key": key, "value": value, "headers": headers, "on_delivery": on_delivery}
        if partition is not None:
            kwargs["partition"] = partition
        while True:
            try:
                producer.produce(topic, **kwargs)
                break
            except BufferError:
                producer.poll(0.1)
        count += 1
    left = producer.flush(30)
    if errors or left:
        raise RuntimeError(f"produce to {topic} failed: {errors[:3]} ({left} undelivered)")
    return count


def read_topic(
    bootstrap: str,
    topic: str,
    *,
    expected: int | None = None,
    timeout_s: float = 15.0,
    idle_s: float = 2.0,
    config: dict[str, Any] | None = None,
) -> list[ReadRecord]:
    """Every record of ``topic`` from the beginning: stops at ``expected`` records, after ``idle_s``
    without news, or at ``timeout_s``. ``config``: more librdkafka settings (e.g. SASL/TLS)."""
    consumer = Consumer(
        {
            **(config or {}),
            "bootstrap.servers": bootstrap,
            "group.id": f"reader-{uuid.uuid4().hex}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "fetch.message.max.bytes": 16 * 1024 * 1024,
        }
    )
    consumer.subscribe([topic])
    out: list[ReadRecord] = []
    deadline = time.monotonic() + timeout_s
    last_news = time.monotonic()
    try:
        while time.monotonic() < deadline:
            if expected is not None and len(out) >= expected:
                break
            if expected is None and out and time.monotonic() - last_news > idle_s:
                break
            for msg in consumer.consume(500, timeout=0.2):
                topic_, partition, offset = msg.topic(), msg.partition(), msg.offset()
                if msg.error() or topic_ is None or partition is None or offset is None:
                    continue  # an event, not a record
                last_news = time.monotonic()
                # a consumed record's headers are a list of (name, bytes or None); the client's type also
                # covers the dict and str values produce() takes
                headers = cast(list[tuple[str, bytes | None]], msg.headers() or [])
                out.append(
                    ReadRecord(topic_, partition, offset, msg.key(), msg.value(), list(headers), msg.timestamp()[1])
                )
    finally:
        consumer.close()
    return sorted(out, key=lambda r: (r.partition, r.offset))


def committed(
    bootstrap: str, group_id: str, topic: str, partitions: int = 1, *, config: dict[str, Any] | None = None
) -> dict[int, int]:
    """The group's committed offset per partition (-1001 when nothing is committed); ``config``: more
    librdkafka settings (e.g. SASL/TLS)."""
    consumer = Consumer(
        {**(config or {}), "bootstrap.servers": bootstrap, "group.id": group_id, "enable.auto.commit": False}
    )
    try:
        result = consumer.committed([TopicPartition(topic, p) for p in range(partitions)], timeout=10)
    finally:
        consumer.close()
    return {tp.partition: tp.offset for tp in result}
