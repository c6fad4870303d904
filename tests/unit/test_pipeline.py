"""The pure pipeline with fakes of the registry protocol and the model index, then with the real local
registry, validators and generated models; plus a fuzz test: any bytes give a result or our error."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, ConfigDict

from toolkit.codegen.index import load_model_index
from toolkit.consumer.handlers import HandlerRegistry
from toolkit.consumer.pipeline import Pipeline, as_resolver
from toolkit.errors import MessageError, RegistryUnavailable, SchemaNotFound
from toolkit.layout import SchemaFormat
from toolkit.registry import LocalFolderRegistry
from toolkit.registry.base import RegisteredSchema, SubjectContext

ROOT = Path(__file__).resolve().parents[2]
HEADER = {
    "messageType": "Thing",
    "schemaName": "things",
    "schemaVersion": "1",
    "correlationId": "c",
    "messageId": "m",
    "timestamp": "2024-05-01T12:00:00Z",
    "producer": "p",
}


def envelope(body=None, **header) -> bytes:
    return json.dumps({"header": {**HEADER, **header}, "body": {"n": 1} if body is None else body}).encode()


class FakeCompiled:
    def decode(self, body):
        if not isinstance(body, dict) or not isinstance(body.get("n"), int):
            raise MessageError("validation", "n must be an integer", details=[{"path": "/n", "message": "int"}])
        return body


class FakeResolver:
    """Implements SchemaResolver: subject 'things' has version 1; 'down' is unreachable."""

    def __init__(self):
        self.calls = 0

    def resolve(self, subject, version):
        self.calls += 1
        if subject == "down":
            raise RegistryUnavailable("connection refused", subject=subject)
        if subject != "things" or version != 1:
            raise SchemaNotFound(f"{subject} v{version} not found", subject=subject, version=version)
        return RegisteredSchema(subject, 1, SchemaFormat.JSON, "{}"), FakeCompiled()


class Thing(BaseModel):
    model_config = ConfigDict(extra="forbid")
    n: int


class FakeModels:
    def get(self, schema_name, version):
        return Thing if (schema_name, version) == ("things", 1) else None


FAKE_MODELS = FakeModels()


def pipeline(models=FAKE_MODELS) -> Pipeline:
    router = HandlerRegistry()
    router.register("t", lambda m: True)
    return Pipeline(FakeResolver(), router, models)


def prepare(p: Pipeline, value: bytes, topic="t"):
    return p.prepare(topic=topic, partition=0, offset=5, key=b"k", value=value, headers=[("h", b"v")], timestamp=1)


def stage(p: Pipeline, value: bytes, topic="t") -> str:
    with pytest.raises(MessageError) as info:
        prepare(p, value, topic)
    return info.value.stage


def test_happy_path_builds_message():
    prepared = prepare(pipeline(), envelope())
    message = prepared.message
    assert message.body == Thing(n=1) and message.header.message_type == "Thing"
    assert (message.topic, message.partition, message.offset, message.key) == ("t", 0, 5, b"k")
    assert message.headers == [("h", b"v")] and message.raw == envelope() and message.attempt == 1


def test_each_stage():
    p = pipeline()
    assert stage(p, b"\x80") == "decode"
    assert stage(p, b"[1]") == "envelope"
    assert stage(p, envelope(schemaName="nope")) == "schema"
    assert stage(p, envelope(schemaVersion="7")) == "schema"
    assert stage(p, envelope(body={"n": "x"})) == "validation"
    assert stage(p, envelope(body={"n": 1, "extra": 2})) == "model"
    assert stage(p, envelope(), topic="other") == "routing"


def test_model_missing_from_index_is_model_stage():
    class NoModels:
        def get(self, *_):
            return None

    assert stage(pipeline(NoModels()), envelope()) == "model"


def test_without_models_the_body_is_the_validated_value():
    assert prepare(pipeline(None), envelope()).message.body == {"n": 1}


def test_registry_outage_propagates_as_transient():
    p = pipeline()
    p.subject_strategy = lambda ctx: "down"
    with pytest.raises(RegistryUnavailable):
        prepare(p, envelope())


def test_compiled_schema_cached_in_pipeline():
    p = pipeline()
    for _ in range(3):
        prepare(p, envelope())
    assert p.resolver.calls == 1 and p.cached(("things", 1)) is not None


def test_subject_strategy_sees_topic_and_message_type():
    seen = []
    p = pipeline(None)
    p.subject_strategy = lambda ctx: seen.append(ctx) or "things"
    prepare(p, envelope(schemaName="alias"))
    assert seen == [SubjectContext(topic="t", schema_name="alias", message_type="Thing")]


def test_validator_crash_is_validation_error():
    class Crashing:
        def decode(self, body):
            raise ZeroDivisionError("bug")

    p = pipeline()
    p._compiled[("things", 1)] = Crashing()
    assert stage(p, envelope()) == "validation"


def test_as_resolver_wraps_bare_registry():
    resolver = as_resolver(LocalFolderRegistry(ROOT / "schemas"))
    schema, compiled = resolver.resolve("orders", 1)
    assert schema.version == 1 and hasattr(compiled, "decode")
    with pytest.raises(TypeError):
        as_resolver(object())


# -- the real stack: local registry, validators and generated models --------------------------------------
def real_pipeline() -> Pipeline:
    router = HandlerRegistry()
    router.register("orders", lambda m: True)
    router.register("shipments", lambda m: True)
    return Pipeline(as_resolver(LocalFolderRegistry(ROOT / "schemas")), router, load_model_index())


REAL = real_pipeline()


def golden(schema, version, kind):
    folder = ROOT / "schemas" / schema / "samples" / str(version) / kind
    return [(schema, version, path) for path in sorted(folder.glob("*.json"))]


VALID = [g for s in ("orders", "shipments") for v in (1, 2) for g in golden(s, v, "valid")]
INVALID = [g for s in ("orders", "shipments") for v in (1, 2) for g in golden(s, v, "invalid")]


@pytest.mark.parametrize(("schema", "version", "path"), VALID, ids=lambda x: getattr(x, "stem", str(x)))
def test_golden_valid_samples_reach_the_handler(schema, version, path):
    value = json.dumps(
        {
            "header": {**HEADER, "schemaName": schema, "schemaVersion": str(version)},
            "body": json.loads(path.read_text()),
        }
    ).encode()
    prepared = prepare(REAL, value, topic=schema)
    assert type(prepared.message.body).__module__ == f"generated_models.{schema}.v{version}"


@pytest.mark.parametrize(("schema", "version", "path"), INVALID, ids=lambda x: getattr(x, "stem", str(x)))
def test_golden_invalid_samples_fail_validation(schema, version, path):
    value = json.dumps(
        {
            "header": {**HEADER, "schemaName": schema, "schemaVersion": str(version)},
            "body": json.loads(path.read_text()),
        }
    ).encode()
    with pytest.raises(MessageError) as info:
        prepare(REAL, value, topic=schema)
    assert info.value.stage == "validation"
    assert info.value.details and all({"path", "message"} <= set(d) for d in info.value.details)


def _fuzz_values():
    header = st.fixed_dictionaries(
        {
            k: st.one_of(st.just(v), st.text(max_size=5), st.integers(), st.none())
            for k, v in {**HEADER, "schemaName": "orders"}.items()
        }
    )
    json_values = st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
        lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4),
        max_leaves=20,
    )
    envelopes = st.builds(lambda h, b: json.dumps({"header": h, "body": b}).encode(), header, json_values)
    return st.one_of(st.binary(max_size=200), envelopes, json_values.map(lambda v: json.dumps(v).encode()))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_fuzz_values())
def test_fuzz_any_bytes_give_a_result_or_our_error(value):
    try:
        prepare(REAL, value, topic="orders")
    except MessageError as exc:
        assert exc.stage in {"decode", "envelope", "schema", "validation", "model", "routing"}


@settings(max_examples=200, deadline=None)
@given(st.sampled_from([p for _, _, p in VALID]), st.data())
def test_fuzz_mutated_golden_bodies(path, data):
    body = json.loads(path.read_text())
    schema = path.parents[3].name
    version = path.parents[1].name
    if isinstance(body, dict) and body:
        key = data.draw(st.sampled_from(sorted(body)))
        body[key] = data.draw(
            st.one_of(
                st.none(),
                st.integers(),
                st.text(max_size=5),
                st.lists(st.integers()),
                st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
            )
        )
    value = json.dumps({"header": {**HEADER, "schemaName": schema, "schemaVersion": version}, "body": body}).encode()
    try:
        prepare(REAL, value, topic=schema)
    except MessageError as exc:
        assert exc.stage in {"validation", "model"}


class CountingModels:
    def __init__(self):
        self.calls = 0

    def get(self, schema_name, version):
        self.calls += 1
        return FAKE_MODELS.get(schema_name, version)


def finish_via_plan(p: Pipeline, value: bytes, topic="t"):
    """The runtime's order: decode, then the plan of an earlier record with the same header if any."""
    decoded = p.decode(value)
    plan = p.plan(topic, decoded.header)
    source = plan if plan is not None else p.resolve(p.subject_of(topic, decoded))
    return p.finish(
        decoded, source, topic=topic, partition=0, offset=6, key=None, value=value, headers=None, timestamp=None
    )


def test_the_first_success_leaves_a_plan_that_skips_the_model_and_route_lookups():
    models = CountingModels()
    router = HandlerRegistry()
    router.register("t", lambda m: True)
    p = Pipeline(FakeResolver(), router, models)
    first = finish_via_plan(p, envelope())
    plan = p.plan("t", first.message.header)
    assert plan is not None and plan.model is Thing and plan.route is first.route
    calls = models.calls
    second = finish_via_plan(p, envelope(body={"n": 2}))
    assert models.calls == calls  # no model lookup, no registry call: the plan answered
    assert p.resolver.calls == 1
    assert second.message.body == Thing(n=2) and second.route is first.route


def test_a_plan_still_validates_and_builds_each_body_in_stage_order():
    p = pipeline()
    finish_via_plan(p, envelope())
    for body, expected in (({"n": "x"}, "validation"), ({"n": 1, "extra": 2}, "model")):
        with pytest.raises(MessageError) as info:
            finish_via_plan(p, envelope(body=body))
        assert info.value.stage == expected


def test_no_plan_is_left_by_a_failure_or_for_another_header():
    p = pipeline()
    decoded = p.decode(envelope())
    for value, topic in (
        (envelope(body={"n": "x"}), "t"),
        (envelope(body={"n": 1, "extra": 2}), "t"),
        (envelope(), "other"),
    ):
        with pytest.raises(MessageError):
            finish_via_plan(p, value, topic)
    assert p.plan("t", decoded.header) is None and p.plan("other", decoded.header) is None
    finish_via_plan(p, envelope())
    assert p.plan("t", decoded.header) is not None
    assert p.plan("t", p.decode(envelope(messageType="Other")).header) is None
    assert p.plan("t", p.decode(envelope(schemaVersion="2")).header) is None


def test_forget_plans_makes_the_next_record_look_the_route_up_again():
    router = HandlerRegistry()
    router.register("t", lambda m: True)
    p = Pipeline(FakeResolver(), router, FAKE_MODELS)
    finish_via_plan(p, envelope())
    router.register("t", lambda m: False, "Thing")  # a handler for the message type, registered later
    p.forget_plans()
    assert p.plan("t", p.decode(envelope()).header) is None
    assert finish_via_plan(p, envelope()).route is router.route("t", "Thing", "things", 1)


def test_without_a_model_index_the_plan_passes_the_validated_value():
    p = pipeline(models=None)
    finish_via_plan(p, envelope())
    assert finish_via_plan(p, envelope(body={"n": 3})).message.body == {"n": 3}
