"""Replaying a dead letter reproduces the original record byte for byte (value, key, headers)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from toolkit.consumer import KafkaConsumer
from toolkit.consumer.kafka_io import replay_dead_letter
from toolkit.consumer.testing import produce, read_topic
from toolkit.registry import LocalFolderRegistry

ROOT = Path(__file__).resolve().parents[2]
# JSON whose re-serialisation would differ: spacing, key order, escapes, number forms
ODD_JSON = b'{ "body" : {"n": 1.50, "e": 1E3, "s": "caf\\u00e9"},\n  "header": 7 }'


def test_replay_reproduces_original_bytes(kafka_bootstrap, make_topic, group_id):
    topic = make_topic("replay")
    headers = [("trace", b"\x00\x01\xff"), ("trace", b"second value, same name")]
    produce(kafka_bootstrap, topic, [(b"key-\xff", ODD_JSON), (None, b"\xc3\x28 not utf8")], headers=headers)
    consumer = KafkaConsumer(
        bootstrap_servers=kafka_bootstrap,
        group_id=group_id,
        registry=LocalFolderRegistry(ROOT / "schemas"),
        stop_when_idle=True,
    )
    consumer.register_handler(topic, lambda m: True)
    asyncio.run(asyncio.wait_for(consumer.start(), 60))
    originals = read_topic(kafka_bootstrap, topic, expected=2)
    dead = read_topic(kafka_bootstrap, f"{topic}.dlq", expected=2)
    assert [d.json()["original_encoding"] for d in dead] == ["json", "base64"]

    target = make_topic("replayed")
    for dl in dead:
        replay_dead_letter({"bootstrap.servers": kafka_bootstrap}, dl.value, dl.key, dl.headers, topic=target)
    replayed = read_topic(kafka_bootstrap, target, expected=2)
    for before, after in zip(originals, replayed, strict=True):
        assert after.value == before.value and after.key == before.key
        assert after.headers == before.headers == headers
        assert after.timestamp == before.timestamp
