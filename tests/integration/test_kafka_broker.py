"""The broker our scripts start behaves as a real Kafka: manual commits, and a group resumes from them."""

from __future__ import annotations

from confluent_kafka import Consumer, Producer, TopicPartition


def _consumer(bootstrap: str, group: str) -> Consumer:
    return Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": group,
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "session.timeout.ms": 6000,
        }
    )


def _poll_n(consumer: Consumer, n: int, timeout_s: float = 30.0) -> list:
    import time

    messages, deadline = [], time.monotonic() + timeout_s
    while len(messages) < n and time.monotonic() < deadline:
        msg = consumer.poll(0.5)
        if msg is None:
            continue
        assert msg.error() is None, msg.error()
        messages.append(msg)
    return messages


def test_second_consumer_resumes_from_committed_offset(kafka_bootstrap, make_topic, group_id):
    topic = make_topic("resume")
    producer = Producer({"bootstrap.servers": kafka_bootstrap, "acks": "all", "enable.idempotence": True})
    for i in range(10):
        producer.produce(topic, key=str(i).encode(), value=f"message-{i}".encode())
    assert producer.flush(30) == 0

    first = _consumer(kafka_bootstrap, group_id)
    first.subscribe([topic])
    got = _poll_n(first, 10)
    assert [m.value() for m in got] == [f"message-{i}".encode() for i in range(10)]
    # Commit through message 3 only (the committed offset is the next one to read).
    first.commit(offsets=[TopicPartition(topic, 0, got[3].offset() + 1)], asynchronous=False)
    committed = first.committed([TopicPartition(topic, 0)], timeout=10)
    assert committed[0].offset == 4
    first.close()

    second = _consumer(kafka_bootstrap, group_id)
    second.subscribe([topic])
    resumed = _poll_n(second, 6)
    second.close()
    assert [m.value() for m in resumed] == [f"message-{i}".encode() for i in range(4, 10)]
    assert resumed[0].offset() == 4


def test_uncommitted_messages_are_redelivered(kafka_bootstrap, make_topic, group_id):
    topic = make_topic("redeliver")
    producer = Producer({"bootstrap.servers": kafka_bootstrap})
    for i in range(3):
        producer.produce(topic, value=f"m{i}".encode())
    producer.flush(30)

    first = _consumer(kafka_bootstrap, group_id)
    first.subscribe([topic])
    assert len(_poll_n(first, 3)) == 3
    first.close()  # nothing committed: auto-commit is off

    second = _consumer(kafka_bootstrap, group_id)
    second.subscribe([topic])
    again = _poll_n(second, 3)
    second.close()
    assert [m.value() for m in again] == [b"m0", b"m1", b"m2"]
