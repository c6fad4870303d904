"""On the real broker: a schema whose patterns and formats a hostile body could make a backtracking regex
engine run for hours (``^(a+)+$``, jsonschema's ``iri`` check) and whose patterns Rust's and Python's
engines read otherwise than JSON Schema does (``[^\\d]``). The hostile records are dead-lettered at stage
``validation`` with their exact bytes, the valid ones (one with Arabic-Indic digits where ``\\d`` is ASCII)
reach the handler through the generated model, and the group commits past all of them, in one drain.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import pytest

from tests.kafka_checks import records_in
from toolkit.codegen import load_model_index, run_codegen
from toolkit.consumer import KafkaConsumer
from toolkit.consumer.deadletter import original_record
from toolkit.consumer.testing import committed, envelope_bytes, produce, read_topic
from toolkit.registry import LocalFolderRegistry

SCHEMA = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "Profile",
    "type": "object",
    "required": ["handle"],
    "properties": {
        "handle": {"type": "string", "pattern": "^(a+)+$"},
        "site": {"type": "string", "format": "iri"},
        "nickname": {"type": "string", "pattern": "^[^\\d]+$"},
    },
}
HOSTILE = {
    "handle": {"handle": "a" * 40 + "!"},  # Python's re: 2**40 steps to say no
    "site": {"handle": "aaa", "site": "a1-:/." * 20_000 + "\x00"},  # jsonschema's iri: over a minute
    "nickname": {"handle": "aaa", "nickname": "agent 007"},
}
VALID = {
    "plain": {"handle": "aaa", "site": "https://例え.jp/パス", "nickname": "Nora"},
    "arabic-indic": {"handle": "a", "nickname": "١٢٣"},  # not \d in JSON Schema's regexes
}


@pytest.fixture
def profiles(tmp_path: Path, unique_name) -> tuple[str, LocalFolderRegistry, object]:
    subject = unique_name("profiles").replace("_", "-")
    folder = tmp_path / "schemas" / subject
    folder.mkdir(parents=True)
    (folder / "1.json").write_text(json.dumps(SCHEMA))
    package = f"regex_models_{subject.replace('-', '_')}"
    run_codegen(tmp_path / "schemas", tmp_path / package, workers=1)
    sys.path.insert(0, str(tmp_path))
    try:
        yield subject, LocalFolderRegistry(tmp_path / "schemas"), load_model_index(package)
    finally:
        sys.path.remove(str(tmp_path))


@pytest.mark.timeout(180)  # (a hang, not a slow run: before, one record held the partition for hours)
def test_hostile_bodies_are_dead_lettered_and_valid_ones_handled(kafka_bootstrap, make_topic, group_id, profiles):
    subject, registry, models = profiles
    topic = make_topic("regex-bodies")
    records = {name: envelope_bytes(subject, 1, body, message_id=name) for name, body in {**HOSTILE, **VALID}.items()}
    produce(kafka_bootstrap, topic, list(records.values()))
    handled: dict[str, dict] = {}

    async def handle(message) -> None:
        handled[message.message_id] = message.body.model_dump(mode="json", exclude_unset=True)

    consumer = KafkaConsumer(
        bootstrap_servers=kafka_bootstrap,
        group_id=group_id,
        registry=registry,
        models=models,
        stop_when_idle=True,
        commit_interval_s=0.2,
    )
    consumer.register_handler(topic, handle)
    asyncio.run(asyncio.wait_for(consumer.start(), 150))

    assert handled == VALID
    dead = {
        json.loads(d.value)["original_message"]["header"]["messageId"]: d
        for d in read_topic(kafka_bootstrap, f"{topic}.dlq", expected=len(HOSTILE))
    }
    assert set(dead) == set(HOSTILE)
    for name, letter in dead.items():
        assert original_record(letter.value, letter.key, letter.headers).value == records[name]
        error = json.loads(letter.value)["error"]
        assert error["stage"] == "validation" and error["details"][0]["path"] == f"$.{name}", error
    assert records_in(kafka_bootstrap, f"{topic}.dlq") == len(HOSTILE)
    assert committed(kafka_bootstrap, group_id, topic) == {0: len(records)}
