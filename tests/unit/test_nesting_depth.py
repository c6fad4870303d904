"""EPISTLE_MAX_NESTING_DEPTH: a setting, counted over the whole envelope, high enough by default for a
1,000-node Avro linked list to go through decode, validation and the generated (recursive) model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from toolkit.codegen import generate_models, load_model_index
from toolkit.consumer.deep import CHUNK, validate_deep
from toolkit.consumer.handlers import HandlerRegistry
from toolkit.consumer.pipeline import Pipeline
from toolkit.envelope import MAX_DEPTH, decode_record
from toolkit.errors import ConfigError, MessageError
from toolkit.registry.cache import CachedRegistry
from toolkit.registry.local import LocalFolderRegistry
from toolkit.settings import load_settings

NODE = {
    "type": "record",
    "name": "Node",
    "namespace": "example.lists",
    "fields": [{"name": "value", "type": "int"}, {"name": "next", "type": ["null", "Node"], "default": None}],
}
HEADER = {
    "messageType": "ListCreated",
    "schemaName": "linked",
    "schemaVersion": "1",
    "correlationId": "c-1",
    "messageId": "m-1",
    "timestamp": "2026-01-01T00:00:00Z",
    "producer": "test",
}


def record(nodes: int) -> bytes:
    """An envelope whose body is the Avro JSON encoding of a list of ``nodes`` nodes: the union branch
    ``next`` is wrapped as {"example.lists.Node": {...}}. Written as text: json.dumps would recurse."""
    body = "".join(f'{{"value":{value},"next":{{"example.lists.Node":' for value in range(1, nodes))
    body += f'{{"value":{nodes},"next":null}}' + "}}" * (nodes - 1)
    return f'{{"header":{json.dumps(HEADER)},"body":{body}}}'.encode()


@pytest.fixture(scope="module")
def linked(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("linked")
    (root / "schemas" / "linked").mkdir(parents=True)
    (root / "schemas" / "linked" / "1.avsc").write_text(json.dumps(NODE))
    generate_models(root / "schemas", root / "linked_models")
    return root


@pytest.fixture
def pipeline(linked: Path, monkeypatch: pytest.MonkeyPatch):
    def build(**options) -> Pipeline:
        monkeypatch.syspath_prepend(str(linked))
        registry = CachedRegistry(LocalFolderRegistry(linked / "schemas"))
        handlers = HandlerRegistry()
        handlers.register("lists", lambda message: True)
        return Pipeline(registry, handlers, load_model_index("linked_models"), **options)

    return build


def test_a_1000_node_avro_list_goes_through_decode_validation_and_model(pipeline) -> None:
    prepared = pipeline().prepare(topic="lists", partition=0, offset=0, key=None, value=record(1000))
    node, values = prepared.message.body, []
    while node is not None:
        values.append(node.value)
        node = node.next
    assert values == list(range(1, 1001))
    assert type(prepared.message.body).__name__ == "Node"


def test_the_limit_counts_json_levels_of_the_whole_envelope(pipeline) -> None:
    # n nodes nest 2n levels: the envelope (1), the first node (2), its union wrapper (3), the next node (4)...
    fits = pipeline(max_depth=2 * 300)
    fits.prepare(topic="lists", partition=0, offset=0, key=None, value=record(300))
    with pytest.raises(MessageError) as caught:
        fits.prepare(topic="lists", partition=0, offset=1, key=None, value=record(301))
    assert caught.value.stage == "decode"
    assert "nested deeper than 600 levels" in caught.value.reason
    assert "EPISTLE_MAX_NESTING_DEPTH" in caught.value.reason


def test_deeper_than_the_default_is_refused_at_decode() -> None:
    with pytest.raises(MessageError, match=f"nested deeper than {MAX_DEPTH} levels"):
        decode_record(b'{"header": {}, "body": ' + b"[" * MAX_DEPTH + b"]" * MAX_DEPTH + b"}")


def test_the_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    assert load_settings(env_file=None).consumer.max_nesting_depth == MAX_DEPTH >= 2 * 1000 + 1
    monkeypatch.setenv("EPISTLE_MAX_NESTING_DEPTH", "600")
    assert load_settings(env_file=None).consumer.max_nesting_depth == 600
    monkeypatch.setenv("EPISTLE_MAX_NESTING_DEPTH", "20000")
    with pytest.raises(ConfigError, match="EPISTLE_MAX_NESTING_DEPTH"):
        load_settings(env_file=None)


def test_consumer_takes_the_setting() -> None:
    from toolkit.consumer import KafkaConsumer

    settings = load_settings(env_file=None, consumer__max_nesting_depth=777)
    assert KafkaConsumer.from_settings(settings).max_nesting_depth == 777
    with pytest.raises(ConfigError, match="max_nesting_depth"):
        KafkaConsumer(max_nesting_depth=50_000)


def test_deep_build_reports_errors_with_the_sub_model(linked: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(linked))
    model = load_model_index("linked_models").get("linked", 1)
    value: dict = {"value": "not a number", "next": None}
    for index in range(CHUNK + 50):
        value = {"value": index, "next": value}
    before = json.dumps(value)
    with pytest.raises(Exception) as caught:
        validate_deep(model, value)
    assert "in the sub-model Node at next/next" in "".join(caught.value.__notes__)
    assert json.dumps(value) == before  # the value given is not changed


def test_a_deep_record_is_dead_lettered_as_bytes_not_embedded() -> None:
    # Readers of the dead-letter topic must parse its value: Jackson refuses more than 1000 levels by default.
    import base64

    from toolkit.consumer.deadletter import SourceRecord, build_dead_letter
    from toolkit.envelope import allow_depth

    allow_depth(MAX_DEPTH)  # as in the consumer: the original parses
    value = record(1500)  # 3000 levels, within the default limit
    dead = build_dead_letter(
        SourceRecord("lists", 0, 7, None, value, [], None),
        stage="handler",
        reason="boom",
        consumer_group="g",
        attempts=1,
    )
    document = json.loads(dead.value)
    assert document["original_encoding"] == "base64"
    assert base64.b64decode(document["original_message"]) == value
