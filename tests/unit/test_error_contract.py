"""The error contract of toolkit/errors.py: on bad input, public functions raise only EpistleError.

Table-driven: every public entry point (toolkit.__all__ and what the public subpackages export) has a row
with a valid call; each argument in turn is replaced by every value of BAD (None, wrong types, empty,
malformed, missing files). Whatever the call does with it, nothing but an EpistleError may escape.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from toolkit.errors import EpistleError

SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"


class _Odd:
    """An object of no type any function expects."""


def _bad_values(tmp: Path) -> list[Any]:
    not_json = tmp / "not-json.json"
    not_json.write_text("{not json", encoding="utf-8")
    return [
        None,
        0,
        -1,
        1.5,
        math.nan,
        True,
        "",
        "\x00",
        "no such thing",
        "a b!?*",
        b"\xff\xfe",
        [],
        {},
        {"a": 1},
        [1, "x"],
        _Odd(),
        tmp / "missing",
        not_json,
        tmp,
    ]


def _dead_letter() -> bytes:
    return json.dumps(
        {"source": {"topic": "orders", "partition": 0, "offset": 1}, "original_encoding": "null"}
    ).encode()


def _rows(tmp: Path) -> list[tuple[str, Callable[..., Any], dict[str, Any]]]:
    """(name, callable, valid keyword arguments). The valid call is cheap: empty or tiny folders."""
    import fastavro

    import toolkit
    from toolkit import (
        codegen,
        compat,
        consumer,
        envelope,
        formats,
        layout,
        producer,
        registry,
        scaffold,
        testing,
        validation,
    )
    from toolkit.layout import Compatibility, SchemaFormat
    from toolkit.producer_amqp import RabbitProducer
    from toolkit.registry import commands
    from toolkit.settings import load_producer_settings, load_settings

    empty = tmp / "empty"
    empty.mkdir(exist_ok=True)
    settings = load_settings(env_file=None)
    orders = layout.load_schemas(SCHEMAS)["orders"]
    local = registry.LocalFolderRegistry(SCHEMAS)
    order_v1 = local.get("orders", 1)
    shipment = fastavro.parse_schema({"type": "record", "name": "S", "fields": [{"name": "id", "type": "string"}]})
    shipment_value = {"id": "s-1"}
    answers = scaffold.Answers("orders-consumer", "orders_consumer", "orders", "orders-consumer")
    envelope_doc = {
        "header": {
            "messageType": "OrderCreated",
            "schemaName": "orders",
            "schemaVersion": "1",
            "correlationId": "c",
            "messageId": "m",
            "timestamp": "2024-01-01T00:00:00Z",
            "producer": "p",
        },
        "body": {},
    }
    rows: list[tuple[str, Callable[..., Any], dict[str, Any]]] = [
        # toolkit.__all__
        ("load_settings", toolkit.load_settings, {"env_file": tmp / "missing.env"}),
        (
            "load_settings overrides",
            lambda **kw: toolkit.load_settings(None, **kw),
            {
                "consumer__max_workers": 2,
                "consumer__max_poll_records": 10,
                "consumer__commit_interval_s": 1.0,
                "kafka__group_id": "g",
                "registry__url": "http://127.0.0.1:1",
            },
        ),
        (
            "KafkaConsumer",
            toolkit.KafkaConsumer,
            {
                "bootstrap_servers": "127.0.0.1:1",
                "group_id": "g",
                "topics": ["orders"],
                "max_workers": 2,
                "max_poll_records": 10,
                "max_in_flight": 100,
                "ordering": "KEY",
                "error_policy": "STOP",
                "retry": toolkit.RetryPolicy(),
                "serializer": envelope.JsonSerializer(),
                "settings": settings,
                "dlq_suffix": ".dlq",
                "commit_interval_s": 1.0,
                "stop_when_idle": True,
                "subject_strategy": registry.topic_value_strategy,
                "kafka_config": {"session.timeout.ms": "6000"},
                "shutdown_timeout_s": 5.0,
                "max_nesting_depth": 100,
                "registry": local,
                "models": codegen.ModelIndex("generated_models", {}),
                "dlq_max_message_bytes": 100_000,
                "dead_letter_producer_config": {"compression.type": "zstd"},
                "middleware": [],
                "transport": testing.InMemoryBroker().transport(),
                "value_formats": {"orders": "envelope"},
            },
        ),
        ("KafkaConsumer.from_settings", toolkit.KafkaConsumer.from_settings, {"settings": settings}),
        (
            "EnvelopeProducer",
            producer.EnvelopeProducer,
            {
                "bootstrap_servers": "127.0.0.1:1",
                "registry": local,
                "models": codegen.ModelIndex("generated_models", {}),
                "name": "p",
                "subject_strategy": registry.topic_value_strategy,
                "confluent_topics": ["payments"],
                "settings": settings,
                "producer_settings": load_producer_settings(),
                "kafka_config": {"linger.ms": 20},
            },
        ),
        ("EnvelopeProducer.from_settings", producer.EnvelopeProducer.from_settings, {"settings": settings}),
        ("make_producer", producer.make_producer, {"settings": settings, "registry": local, "broker": "rabbitmq"}),
        (
            "RabbitProducer",
            RabbitProducer,
            {
                "url": "amqp://guest:guest@127.0.0.1:1/",
                "registry": local,
                "models": codegen.ModelIndex("generated_models", {}),
                "name": "p",
                "subject_strategy": registry.topic_value_strategy,
                "confluent_topics": ["payments"],
                "settings": settings,
                "producer_settings": load_producer_settings(),
                "partitions": {"orders": 2},
                "confirm_timeout_s": 5,
            },
        ),
        ("avro_json_body", producer.avro_json_body, {"parsed_schema": shipment, "value": shipment_value}),
        ("avro_binary_body", producer.avro_binary_body, {"parsed_schema": shipment, "value": shipment_value}),
        (
            "KafkaConsumer.register_handler",
            lambda **kw: toolkit.KafkaConsumer("127.0.0.1:1", "g").register_handler(**kw),
            {"topic": "orders", "handler": lambda message: True, "message_type": "OrderCreated"},
        ),
        ("RetryPolicy", toolkit.RetryPolicy, {"max_attempts": 3, "initial_s": 0.1, "max_s": 1.0, "multiplier": 2.0}),
        ("ErrorPolicy", toolkit.ErrorPolicy, {"value": "STOP"}),
        ("OrderingMode", toolkit.OrderingMode, {"value": "KEY"}),
        # toolkit.consumer
        ("original_record", consumer.original_record, {"value": _dead_letter(), "key": b"k", "headers": [("h", b"v")]}),
        (
            "replay_dead_letter",
            consumer.replay_dead_letter,
            {
                "config": {"bootstrap.servers": "127.0.0.1:1"},
                "value": b"not a dead letter",
                "topic": "t",
                "timeout_s": 0.1,
            },
        ),
        # toolkit.testing
        (
            "envelope",
            testing.envelope,
            {
                "schema_name": "orders",
                "version": 1,
                "body": {},
                "message_type": "t",
                "message_id": "m",
                "correlation_id": "c",
                "producer": "p",
            },
        ),
        ("InMemoryBroker", testing.InMemoryBroker, {"partitions": 2, "max_message_bytes": 1000}),
        (
            "InMemoryBroker.create_topic",
            testing.InMemoryBroker().create_topic,
            {"name": "t", "partitions": 2, "max_message_bytes": 1000},
        ),
        (
            "InMemoryBroker.produce",
            testing.InMemoryBroker().produce,
            {"topic": "t", "value": b"v", "key": b"k", "headers": [("h", b"v")], "partition": 0, "timestamp_ms": 1},
        ),
        ("InMemoryBroker.records", testing.InMemoryBroker().records, {"topic": "t"}),
        ("InMemoryBroker.end_offset", testing.InMemoryBroker().end_offset, {"topic": "t", "partition": 0}),
        (
            "InMemoryBroker.committed",
            testing.InMemoryBroker().committed,
            {"group_id": "g", "topic": "t", "partition": 0},
        ),
        ("InMemoryBroker.refuse", testing.InMemoryBroker().refuse, {"topic": "t", "reason": "r", "times": 1}),
        ("InMemoryBroker.fail_commits", testing.InMemoryBroker().fail_commits, {"times": 1}),
        ("InMemoryBroker.transport", testing.InMemoryBroker().transport, {"group_id": "g", "poll_interval_s": 0.01}),
        ("InMemoryRegistry", testing.InMemoryRegistry, {"incompatible": lambda old, new: None}),
        (
            "InMemoryRegistry.register",
            testing.InMemoryRegistry().register,
            {"subject": "s", "text": '{"type": "string"}', "schema_format": "AVRO"},
        ),
        ("InMemoryRegistry.get", testing.InMemoryRegistry().get, {"subject": "s", "version": 1}),
        ("InMemoryRegistry.get_by_id", testing.InMemoryRegistry().get_by_id, {"schema_id": 1}),
        (
            "InMemoryRegistry.check_compatibility",
            testing.InMemoryRegistry().check_compatibility,
            {"subject": "s", "text": '{"type": "string"}', "schema_format": "AVRO"},
        ),
        # toolkit.registry
        (
            "ConfluentHttpRegistry",
            registry.ConfluentHttpRegistry,
            {
                "url": "http://127.0.0.1:1",
                "username": "u",
                "password": "p",
                "timeout_s": 1.0,
                "max_attempts": 1,
                "backoff_initial_s": 0.0,
                "backoff_max_s": 0.1,
            },
        ),
        ("LocalFolderRegistry", registry.LocalFolderRegistry, {"schemas_dir": empty}),
        ("LocalFolderRegistry.get", local.get, {"subject": "orders", "version": 1}),
        ("LocalFolderRegistry.latest", local.latest, {"subject": "orders"}),
        ("LocalFolderRegistry.versions", local.versions, {"subject": "orders"}),
        (
            "LocalFolderRegistry.register",
            registry.LocalFolderRegistry(empty).register,
            {"subject": "x", "text": '{"type": "string"}', "schema_format": "JSON"},
        ),
        ("CachedRegistry", registry.CachedRegistry, {"registry": local, "latest_ttl_s": 1.0, "not_found_ttl_s": 1.0}),
        ("CachedRegistry.resolve", registry.CachedRegistry(local).resolve, {"subject": "orders", "version": 1}),
        (
            "registry_from_settings",
            registry.registry_from_settings,
            {"settings": settings.registry, "schemas_dir": empty},
        ),
        ("subject_strategy_from_settings", registry.subject_strategy_from_settings, {"settings": settings.registry}),
        ("canonical_schema", registry.canonical_schema, {"text": '{"type": "string"}'}),
        ("same_schema", registry.same_schema, {"a": '{"type": "string"}', "b": '{"type": "string"}'}),
        ("schema_name_strategy", registry.schema_name_strategy, {"ctx": registry.SubjectContext("orders", "orders")}),
        ("topic_value_strategy", registry.topic_value_strategy, {"ctx": registry.SubjectContext("orders", "orders")}),
        ("topic_key_strategy", registry.topic_key_strategy, {"ctx": registry.SubjectContext("orders", "orders")}),
        (
            "register_schemas",
            commands.register_schemas,
            {
                "registry": registry.LocalFolderRegistry(empty),
                "subjects": {"orders": orders},
                "dry_run": True,
                "strategy": "schema_name",
            },
        ),
        (
            "verify_schemas",
            commands.verify_schemas,
            {"registry": local, "subjects": {"orders": orders}, "strategy": "schema_name"},
        ),
        # toolkit.codegen
        ("run_codegen", codegen.run_codegen, {"schemas_dir": empty, "out": tmp / "out", "check": True, "workers": 1}),
        ("generate_models", codegen.generate_models, {"schemas_dir": empty, "out": tmp / "out", "workers": 1}),
        ("check_models", codegen.check_models, {"schemas_dir": empty, "out": tmp / "out"}),
        ("render_package", codegen.render_package, {"schemas_dir": empty}),
        ("load_model_index", codegen.load_model_index, {"package": "generated_models"}),
        # toolkit.compat
        (
            "check_pair",
            compat.check_pair,
            {"schema_format": SchemaFormat.JSON, "reader": {"type": "object"}, "writer": {"type": "object"}},
        ),
        (
            "is_compatible",
            compat.is_compatible,
            {
                "schema_format": SchemaFormat.JSON,
                "mode": Compatibility.BACKWARD,
                "versions": [{"type": "object"}, {"type": "object"}],
            },
        ),
        ("check_subject", compat.check_subject, {"subject": orders}),
        ("reader_writer_pairs", compat.reader_writer_pairs, {"mode": Compatibility.BACKWARD, "new": 2}),
        ("run_check", compat.run_check, {"schemas_dir": empty, "base": None}),
        # toolkit.validation
        (
            "check_schema_text",
            validation.check_schema_text,
            {"path_or_label": "x.json", "schema_format": SchemaFormat.JSON, "document": {"type": "object"}},
        ),
        ("compile_schema", validation.compile_schema, {"schema": order_v1}),
        ("CompiledSchema.decode", validation.compile_schema(order_v1).decode, {"body": {}}),
        # toolkit.formats
        ("format_for", formats.format_for, {"schema_format": "JSON"}),
        ("format_for_suffix", formats.format_for_suffix, {"suffix": ".json"}),
        # toolkit.envelope
        ("parse_envelope", envelope.parse_envelope, {"document": envelope_doc}),
        (
            "decode_record",
            envelope.decode_record,
            {"value": json.dumps(envelope_doc).encode(), "serializer": envelope.JsonSerializer(), "max_depth": 64},
        ),
        ("depth_exceeds", envelope.depth_exceeds, {"value": {"a": [1]}, "limit": 10}),
        ("allow_depth", envelope.allow_depth, {"max_depth": 64}),
        # toolkit.layout
        ("load_schemas", layout.load_schemas, {"root": empty}),
        ("load_subject", layout.load_subject, {"folder": SCHEMAS / "orders"}),
        ("load_subject_config", layout.load_subject_config, {"path": SCHEMAS / "orders" / "subject.toml"}),
        ("parse_json_file", layout.parse_json_file, {"path": SCHEMAS / "orders" / "1.json", "text": None}),
        # toolkit.scaffold
        ("check_answers", scaffold.check_answers, {"answers": answers}),
        (
            "create_project",
            scaffold.create_project,
            {"answers": scaffold.Answers("", "", "", ""), "output_dir": tmp / "projects", "codegen": False},
        ),
        ("toolkit_requirement", scaffold.toolkit_requirement, {"wheel": None, "path": None}),
    ]
    return rows


@pytest.fixture(scope="module")
def table(tmp_path_factory: pytest.TempPathFactory) -> tuple[list, list]:
    tmp = tmp_path_factory.mktemp("contract")
    return _rows(tmp), _bad_values(tmp)


def _calls(rows: list, bad: list) -> list[tuple[str, Callable[..., Any], dict[str, Any]]]:
    calls = []
    for name, function, valid in rows:
        for argument in valid:
            for value in bad:
                calls.append((f"{name}({argument}={value!r})", function, {**valid, argument: value}))
    return calls


def test_the_table_covers_every_public_function_and_class(table: tuple[list, list]) -> None:
    import enum
    import inspect
    from typing import Protocol

    import toolkit
    from toolkit import codegen, compat, consumer, formats, producer, registry, scaffold, testing, validation

    rows, _ = table
    covered = {getattr(function, "__name__", None) for _, function, _ in rows} | {
        name.split(".")[0] for name, _, _ in rows
    }
    # Values the toolkit hands out (results, records, compiled schemas, base classes): not entry points.
    handed_out = {
        "BaseHandler",
        "Message",
        "Settings",
        "CodegenRun",
        "Difference",
        "ModelIndex",
        "CheckReport",
        "Finding",
        "Issue",
        "ConsumerStats",
        "HandlerRegistry",
        "TopicStats",
        "AvroFormat",
        "JsonSchemaFormat",
        "Delivery",
        "OutgoingRecord",
        "ModelProducer",
        "CompatibilityResult",
        "RegisteredSchema",
        "SubjectContext",
        "Answers",
        "AvroSchema",
        "JsonSchema",
        "Middleware",
        "ConsumerOptions",
        "InMemoryRecord",
        "InMemoryTransport",
        "InMemoryDeadLetterSink",
    }
    missing = []
    for module in (toolkit, codegen, compat, consumer, formats, producer, registry, scaffold, testing, validation):
        for name in module.__all__:
            obj = getattr(module, name)
            if name in {"run", "install_signal_handlers"} | handed_out:  # run...: need a live loop
                continue
            constructed = (
                inspect.isclass(obj)
                and not issubclass(obj, BaseException | enum.Enum)
                and Protocol not in getattr(obj, "__mro__", ())
                and not getattr(obj, "_is_protocol", False)
            )
            if (inspect.isfunction(obj) or constructed) and name not in covered:
                missing.append(f"{module.__name__}.{name}")
    assert not missing, f"no row for {missing}"


def test_bad_input_raises_only_epistle_errors(
    table: tuple[list, list], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # a relative path among the bad values lands here, never in the repo
    rows, bad = table
    escaped = []
    for label, function, kwargs in _calls(rows, bad):
        try:
            result = function(**kwargs)
            close = getattr(result, "close", None)
            if callable(close) and not isinstance(result, type):
                close()
        except EpistleError:
            continue
        except Exception as exc:  # noqa: BLE001 - the point: list every non-toolkit error
            escaped.append(f"{label}: {type(exc).__name__}: {str(exc)[:120]}")
    assert not escaped, f"{len(escaped)} calls let a non-toolkit error escape:\n" + "\n".join(escaped)


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("max_workers", 0),
        ("max_workers", -1),
        ("max_workers", 1025),
        ("max_workers", 2.0),
        ("max_poll_records", 0),
        ("max_in_flight", 0),
        ("max_nesting_depth", 5001),
        ("commit_interval_s", 0),
        ("commit_interval_s", -0.5),
        ("commit_interval_s", math.inf),
        ("shutdown_timeout_s", -1),
        ("ordering", "sideways"),
        ("topics", "orders"),
        ("dlq_max_message_bytes", 0),
        ("dlq_max_message_bytes", 999),
        ("dead_letter_producer_config", "x"),
        ("dead_letter_producer_config", {1: "x"}),
    ],
)
def test_an_unusable_consumer_option_is_a_config_error_naming_it_and_the_fix(option: str, value: Any) -> None:
    from toolkit import ConfigError, KafkaConsumer

    with pytest.raises(ConfigError) as caught:
        KafkaConsumer("127.0.0.1:1", "group", **{option: value})
    assert caught.value.setting == option
    assert str(caught.value).startswith(option) and ": use " in str(caught.value)


def test_topics_given_as_an_iterator_are_read_once() -> None:
    from toolkit import KafkaConsumer
    from toolkit.producer import EnvelopeProducer

    assert KafkaConsumer("127.0.0.1:1", "group", topics=(t for t in ["orders", "payments"])).topics == [
        "orders",
        "payments",
    ]
    assert EnvelopeProducer(confluent_topics=(t for t in ["payments"])).confluent_topics == {"payments"}


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("EPISTLE_MAX_WORKERS", "0"),
        ("EPISTLE_MAX_WORKERS", "-2"),
        ("EPISTLE_MAX_POLL_RECORDS", "0"),
        ("EPISTLE_COMMIT_INTERVAL_S", "0"),
        ("EPISTLE_COMMIT_INTERVAL_S", "-1"),
    ],
)
def test_an_out_of_range_setting_is_a_config_error_naming_the_variable_and_the_fix(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    from toolkit import ConfigError, load_settings

    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError) as caught:
        load_settings(env_file=None)
    assert caught.value.setting == variable
    assert f"fix: set {variable} in that range" in str(caught.value)


def test_every_toolkit_error_is_drawn_in_the_tree_and_scaffold_error_lives_there() -> None:
    import inspect

    import toolkit.errors
    import toolkit.scaffold

    errors = [
        cls
        for _, cls in inspect.getmembers(toolkit.errors, inspect.isclass)
        if issubclass(cls, EpistleError) and cls is not EpistleError and cls.__module__ == "toolkit.errors"
    ]
    for cls in errors:
        assert f"── {cls.__name__} " in toolkit.errors.__doc__, f"{cls.__name__} is missing from the tree"
    assert toolkit.scaffold.ScaffoldError is toolkit.errors.ScaffoldError
    assert issubclass(toolkit.errors.InvalidArgument, ValueError)
    assert issubclass(toolkit.errors.InvalidArgumentType, TypeError)


def test_handler_timed_out_pickles_and_copies_with_its_attributes() -> None:
    import copy
    import pickle

    from toolkit.errors import HandlerTimedOut, RetryableError

    for error in (HandlerTimedOut(0.3), HandlerTimedOut(2, still_running=True)):
        for again in (pickle.loads(pickle.dumps(error)), copy.copy(error)):
            assert isinstance(again, HandlerTimedOut) and isinstance(again, RetryableError)
            assert (again.timeout_s, again.still_running, str(again)) == (
                error.timeout_s,
                error.still_running,
                str(error),
            )
    assert str(HandlerTimedOut(0.3)) == (
        "the handler did not finish within 0.3 s, its time limit (handler_timeout_s); it was cancelled"
    )
