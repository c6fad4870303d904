"""toolkit.validation: schema checks, compiled decoders for both formats, and the never-crash contract."""

from __future__ import annotations

import copy
import io
import json
from decimal import Decimal
from pathlib import Path

import fastavro
import jsonschema
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from toolkit.errors import MessageError, SchemaFileError
from toolkit.layout import SchemaFormat
from toolkit.registry.base import RegisteredSchema
from toolkit.validation import AvroSchema, JsonSchema, check_schema_text, compile_schema

ROOT = Path(__file__).resolve().parents[2]
SCHEMAS = ROOT / "schemas"


def _compile(name: str, version: int, fmt: SchemaFormat, text: str | None = None):
    suffix = ".json" if fmt == SchemaFormat.JSON else ".avsc"
    text = text if text is not None else (SCHEMAS / name / f"{version}{suffix}").read_text()
    return compile_schema(RegisteredSchema(name, version, fmt, text))


ORDERS = _compile("orders", 2, SchemaFormat.JSON)
SHIPMENTS = _compile("shipments", 2, SchemaFormat.AVRO)


def _sample(name: str, version: int, kind: str, stem: str):
    return json.loads((SCHEMAS / name / "samples" / str(version) / kind / f"{stem}.json").read_text())


# --- check_schema_text ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("document", "field", "problem"),
    [
        ({"type": "object", "properties": {"a": {"type": "strin"}}}, "$.properties.a.type", "meta-schema"),
        ({"type": "object", "properties": {"a": {"minLength": -1}}}, "$.properties.a.minLength", "meta-schema"),
        ({"properties": {"a": {"$ref": "#/$defs/Missing"}}}, "$.properties.a.$ref", "does not resolve"),
        ({"$ref": "other.json#/x"}, "$.$ref", "does not resolve"),
        ({"$schema": "https://example.com/my-draft"}, "$schema", "unknown $schema"),
    ],
)
def test_json_schema_problems_name_the_field(document, field: str, problem: str) -> None:
    with pytest.raises(SchemaFileError) as caught:
        check_schema_text("schemas/x/1.json", SchemaFormat.JSON, document)
    assert caught.value.field == field
    assert problem in caught.value.problem
    assert caught.value.fix
    assert str(caught.value.path) == "schemas/x/1.json"


def test_json_schema_must_be_an_object() -> None:
    with pytest.raises(SchemaFileError, match="must be a JSON object"):
        check_schema_text("x.json", SchemaFormat.JSON, ["not", "a", "schema"])


def test_refs_inside_data_keywords_and_anchors() -> None:
    document = {
        "type": "object",
        "$defs": {"A": {"$anchor": "a", "type": "string"}},
        "properties": {"x": {"$ref": "#a"}, "$ref": {"type": "string"}, "y": {"const": {"$ref": "nope"}}},
    }
    check_schema_text("x.json", SchemaFormat.JSON, document)


def test_avro_schema_fastavro_cannot_parse() -> None:
    document = {"type": "record", "name": "R", "fields": [{"name": "a", "type": "Nope"}]}
    with pytest.raises(SchemaFileError, match="not a valid Avro schema.*Nope"):
        check_schema_text("schemas/r/1.avsc", SchemaFormat.AVRO, document)


def test_compile_errors_name_the_registry_subject_and_version() -> None:
    with pytest.raises(SchemaFileError) as caught:
        _compile("orders", 7, SchemaFormat.JSON, '{"type": "nope"}')
    assert str(caught.value.path) == "registry:orders/7"
    with pytest.raises(SchemaFileError, match="not valid JSON"):
        _compile("orders", 7, SchemaFormat.AVRO, "{not json")


def test_compiled_types() -> None:
    assert isinstance(ORDERS, JsonSchema) and ORDERS.format == SchemaFormat.JSON
    assert isinstance(SHIPMENTS, AvroSchema) and SHIPMENTS.format == SchemaFormat.AVRO
    assert (ORDERS.subject, ORDERS.version) == ("orders", 2)


def test_decode_builds_nothing_per_call(monkeypatch: pytest.MonkeyPatch) -> None:
    def forbidden(*args, **kwargs):
        raise AssertionError("schema parsed or validator built on the hot path")

    monkeypatch.setattr(fastavro, "parse_schema", forbidden)
    monkeypatch.setattr(jsonschema, "FormatChecker", forbidden)
    monkeypatch.setattr(jsonschema.Draft202012Validator, "check_schema", forbidden)
    monkeypatch.setattr("toolkit.validation.json_schema.check_json_schema", forbidden)
    monkeypatch.setattr("toolkit.validation.avro.check_avro_schema", forbidden)
    ORDERS.decode(_sample("orders", 2, "valid", "full-with-discount-and-channel"))
    SHIPMENTS.decode(_sample("shipments", 2, "valid", "insured-with-estimated-delivery"))


# --- JSON Schema bodies --------------------------------------------------------------------------------


def test_json_body_is_returned_unchanged() -> None:
    body = _sample("orders", 2, "valid", "full-card-payment")
    assert ORDERS.decode(body) is body


@pytest.mark.parametrize(
    ("pointer", "value"),
    [
        (("createdAt",), "2024-05-17T09:30:15"),  # no timezone
        (("createdAt",), "yesterday"),
        (("orderId",), "5b0d7c6e3f4a4b2c9d8e7f6a5b4c3d2e0"),
        (("customer", "email"), "jane@"),
        (("customer", "email"), "jane doe@example.com"),
    ],
)
def test_formats_are_checked(pointer: tuple[str, ...], value: str) -> None:
    body = _sample("orders", 2, "valid", "full-card-payment")
    target = body
    for key in pointer[:-1]:
        target = target[key]
    target[pointer[-1]] = value
    with pytest.raises(MessageError) as caught:
        ORDERS.decode(body)
    assert caught.value.details[0]["path"] == "$." + ".".join(pointer)


def test_json_errors_all_listed_best_first_and_capped() -> None:
    body = _sample("orders", 2, "invalid", "many-errors")
    with pytest.raises(MessageError) as caught:
        ORDERS.decode(body)
    paths = [d["path"] for d in caught.value.details]
    assert {"$.orderId", "$.status", "$.total", "$.customer.email"} <= set(paths)
    assert caught.value.reason.startswith(paths[0])
    assert "more" in caught.value.reason
    many = _sample("orders", 2, "valid", "full-card-payment")
    many["items"] = [{"sku": "x"}] * 300
    with pytest.raises(MessageError) as caught:
        ORDERS.decode(many)
    assert len(caught.value.details) == 20
    assert len(caught.value.reason) < 400


# --- Avro bodies ---------------------------------------------------------------------------------------


def test_avro_logical_types_become_python_values() -> None:
    value = SHIPMENTS.decode(_sample("shipments", 2, "valid", "insured-with-estimated-delivery"))
    assert value["shippingCost"] == Decimal("12.95")
    assert value["parcels"][1]["declaredValue"] == Decimal("-0.99")
    assert value["createdAt"].isoformat() == "2024-05-17T09:30:15.123000+00:00"
    assert str(value["insurance"]["policyId"]) == "0b8e7d6c-5a4b-4c3d-9e2f-1a0b9c8d7e6f"
    assert value["destination"]["line2"] == "3. OG"  # union unwrapped
    assert value["estimatedDeliveryAt"].year == 2024


def test_avro_defaults_fill_missing_fields() -> None:
    value = SHIPMENTS.decode(_sample("shipments", 2, "valid", "defaults-omitted"))
    assert value["trackingNumber"] is None and value["attributes"] == {} and value["insurance"] is None
    assert value["signatureRequired"] is False


@pytest.mark.parametrize(
    "stem", ["full-two-parcels", "no-parcels-numeric-reference", "defaults-omitted", "insured-with-estimated-delivery"]
)
def test_avro_agrees_with_fastavro_json_reader(stem: str) -> None:
    body = _sample("shipments", 2, "valid", stem)
    original = copy.deepcopy(body)
    ours = SHIPMENTS.decode(body)
    assert body == original  # never mutates the caller's body (the dead letter keeps it as it was)
    theirs = next(fastavro.json_reader(io.StringIO(json.dumps(body)), SHIPMENTS.parsed))
    assert ours == theirs


def test_avro_recursive_named_type() -> None:
    schema = {
        "type": "record",
        "name": "Node",
        "fields": [{"name": "value", "type": "int"}, {"name": "next", "type": ["null", "Node"], "default": None}],
    }
    compiled = _compile("list", 1, SchemaFormat.AVRO, json.dumps(schema))
    body = {"value": 1, "next": {"Node": {"value": 2, "next": {"Node": {"value": 3, "next": None}}}}}
    assert compiled.decode(body)["next"]["next"] == {"value": 3, "next": None}
    deep: dict = {"value": 0, "next": None}
    for i in range(50_000):
        deep = {"value": i, "next": {"Node": deep}}
    with pytest.raises(MessageError, match="nested too deeply"):
        compiled.decode(deep)


@pytest.mark.parametrize(
    ("schema", "body", "path"),
    [
        ("int", True, "$"),
        ("long", 2**63, "$"),
        ("double", "1.5", "$"),
        ({"type": "fixed", "name": "F", "size": 2}, "abc", "$"),
        ({"type": "array", "items": "string"}, ["a", 1], "$[1]"),
        ({"type": "map", "values": "int"}, {"a": 1, "b": "x"}, "$['b']"),
        (["null", "string", "int"], {"string": 1}, "$['string']"),
        (["null", "string"], {"string": "a", "int": 1}, "$"),
        ({"type": "bytes", "logicalType": "decimal", "precision": 3, "scale": 1}, "\u0027\u0010", "$"),
        ({"type": "long", "logicalType": "timestamp-millis"}, 10**20, "$"),
    ],
)
def test_avro_mismatches_have_a_path(schema, body, path: str) -> None:
    compiled = _compile("x", 1, SchemaFormat.AVRO, json.dumps(schema))
    with pytest.raises(MessageError) as caught:
        compiled.decode(body)
    assert caught.value.details[0]["path"] == path


# --- never anything but MessageError ---------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=12), inner, max_size=6),
    max_leaves=40,
)
shipment_like = st.fixed_dictionaries(
    {},
    optional={
        key: json_values
        for key in [
            "shipmentId",
            "createdAt",
            "parcels",
            "origin",
            "reference",
            "trackingNumber",
            "shippingCost",
            "carrier",
            "attributes",
        ]
    },
)
order_like = st.fixed_dictionaries(
    {},
    optional={
        key: json_values
        for key in ["orderId", "createdAt", "items", "customer", "payment", "total", "status", "tags", "billingAddress"]
    },
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=json_values | shipment_like | order_like)
def test_decode_raises_only_message_error(body) -> None:
    for compiled in (ORDERS, SHIPMENTS):
        try:
            compiled.decode(body)
        except MessageError as exc:
            assert exc.stage == "validation"
            assert isinstance(exc.reason, str) and "\n" not in exc.reason


def test_deeply_nested_json_body() -> None:
    body: object = "leaf"
    for _ in range(100_000):
        body = [body]
    for compiled in (ORDERS, SHIPMENTS):
        with pytest.raises(MessageError):
            compiled.decode({"notes": body, "tags": body, "reference": body})


def test_public_api() -> None:
    import toolkit.validation

    assert sorted(toolkit.validation.__all__) == [
        "AvroSchema",
        "CompiledSchema",
        "JsonSchema",
        "STAGE",
        "check_schema_text",
        "compile_schema",
    ]


# --- non-finite numbers --------------------------------------------------------------------------------
# json.loads turns a number beyond the double range (1e400) into inf; a serializer that lets NaN/Infinity
# tokens through gives NaN/inf too. Where the schema's type is a number, that is the body's fault.

NUMBERS_AVRO = _compile(
    "x",
    1,
    SchemaFormat.AVRO,
    json.dumps(
        {
            "type": "record",
            "name": "R",
            "fields": [
                {"name": "d", "type": "double", "default": 0.0},
                {"name": "f", "type": "float", "default": 0.0},
                {"name": "u", "type": ["null", "double"], "default": None},
                {"name": "a", "type": {"type": "array", "items": "double"}, "default": []},
            ],
        }
    ),
)
NUMBERS_JSON = _compile(
    "x",
    1,
    SchemaFormat.JSON,
    json.dumps(
        {
            "type": "object",
            "properties": {
                "n": {"type": "number"},
                "i": {"type": "integer"},
                "m": {"type": ["number", "string"]},
                "a": {"type": "array", "items": {"type": "number"}},
            },
        }
    ),
)


@pytest.mark.parametrize(
    ("text", "path", "words"),
    [
        ('{"d": 1e400}', "$.d", "beyond the double range"),
        ('{"d": -1e400}', "$.d", "-1e400"),
        ('{"d": 1' + "0" * 400 + ".0}", "$.d", "beyond the double range"),
        ('{"d": NaN}', "$.d", "NaN cannot be a double"),
        ('{"d": Infinity}', "$.d", "beyond the double range"),
        ('{"f": 1e39}', "$.f", "beyond the range of a float"),
        ('{"f": 1e400}', "$.f", "a float cannot hold it"),
        ('{"u": {"double": 1e400}}', "$.u['double']", "beyond the double range"),
        ('{"a": [1.0, 2.5, -1e400]}', "$.a[2]", "beyond the double range"),
    ],
)
def test_avro_float_and_double_refuse_non_finite_numbers(text: str, path: str, words: str) -> None:
    body = json.loads(text)  # the stdlib decoder: 1e400 is inf, NaN/Infinity tokens accepted
    with pytest.raises(MessageError) as caught:
        NUMBERS_AVRO.decode(body)
    assert caught.value.stage == "validation"
    assert caught.value.details[0]["path"] == path
    assert caught.value.reason.startswith(f"{path}: ") and words in caught.value.reason


def test_avro_float_and_double_keep_finite_extremes() -> None:
    body = json.loads('{"d": 1.7976931348623157e308, "f": 3.4e38, "u": {"double": -5e-324}, "a": [0, -0.0, 1e10]}')
    assert NUMBERS_AVRO.decode(body) == {"d": 1.7976931348623157e308, "f": 3.4e38, "u": -5e-324, "a": [0.0, -0.0, 1e10]}


@pytest.mark.parametrize(
    ("text", "path"),
    [
        ('{"n": 1e400}', "$.n"),
        ('{"n": -1e400}', "$.n"),
        ('{"i": 1e400}', "$.i"),
        ('{"m": NaN}', "$.m"),
        ('{"m": -Infinity}', "$.m"),
        ('{"a": [1, 1e400]}', "$.a[1]"),
    ],
)
def test_json_schema_numbers_refuse_non_finite_numbers(text: str, path: str) -> None:
    with pytest.raises(MessageError) as caught:
        NUMBERS_JSON.decode(json.loads(text))
    assert caught.value.stage == "validation"
    assert caught.value.details[0]["path"] == path
    assert caught.value.reason.startswith(f"{path}: non-finite number (")
    assert "cannot hold it" in caught.value.reason


def test_json_schema_finite_numbers_still_pass() -> None:
    body = json.loads('{"n": 1.7976931348623157e308, "i": 3, "m": "text", "a": [0, -0.0, 5e-324]}')
    assert NUMBERS_JSON.decode(body) == body


def test_an_untyped_json_schema_field_is_not_judged() -> None:
    # {} accepts any value; only a number type is a claim about what the value can hold.
    compiled = _compile("x", 1, SchemaFormat.JSON, json.dumps({"type": "object", "properties": {"any": {}}}))
    assert compiled.decode(json.loads('{"any": 1e400}')) == {"any": float("inf")}


def _one_property(schema: dict, draft: str | None = None) -> JsonSchema:
    document = {"type": "object", "properties": {"v": schema}}
    if draft:
        document["$schema"] = draft
    return JsonSchema.compile("x", "things", 1, document)


@pytest.mark.timeout(60)  # (a hang, not a slow run: with Python's re this takes hours)
@pytest.mark.parametrize(
    ("schema", "value", "words"),
    [
        # a regex Python's re backtracks on without end: explaining the rejection used to take hours
        ({"type": "string", "pattern": "^(a+)+$"}, "a" * 40 + "!", "does not match '^(a+)+$'"),
        (
            {"type": "object", "patternProperties": {"^(b+)+$": {"type": "integer"}}},
            {"b" * 40 + "!": 1, "bb": "x"},
            "is not of type",
        ),
        # jsonschema's "iri" check is a Python regex that took 65 s over 120,000 characters
        ({"type": "string", "format": "iri"}, "a1-:/." * 20_000 + "\x00", "format"),
        ({"type": "string", "format": "iri-reference"}, "a1-:/." * 20_000 + "\x00", "format"),
        ({"type": "string", "format": "uri-template"}, "a{" * 150_000, "format"),  # quadratic: minutes
        # jsonschema's additionalProperties and unevaluatedProperties match patternProperties with Python's re
        (
            {"type": "object", "patternProperties": {"^(a+)+$": {}}, "additionalProperties": False},
            {"a" * 40 + "!": 1},
            "additionalProperties",
        ),
        (
            {"type": "object", "patternProperties": {"^(a+)+$": {}}, "unevaluatedProperties": False},
            {"a" * 40 + "!": 1},
            "unevaluatedProperties",
        ),
    ],
)
def test_no_body_holds_the_validator_in_a_regex(schema: dict, value: object, words: str) -> None:
    for draft in (None, "http://json-schema.org/draft-04/schema#"):  # (draft-04: the formats are called back)
        if draft and "unevaluatedProperties" in schema:
            continue  # (not a keyword before 2019-09)
        with pytest.raises(MessageError) as raised:
            _one_property(schema, draft).decode({"v": value})
        error = raised.value
        assert error.stage == "validation" and (words in error.reason or error.details[0]["keyword"] == words), error


def test_a_pattern_python_cannot_read_is_matched_and_explained_as_json_schema_reads_it() -> None:
    compiled = _one_property({"type": "string", "pattern": "^\\p{L}+(?<rest>-\\p{L}+)?$"})
    assert compiled.decode({"v": "Jean-Émile"}) == {"v": "Jean-Émile"}
    with pytest.raises(MessageError) as raised:
        compiled.decode({"v": "Jean-1"})
    assert raised.value.reason.startswith("$.v: 'Jean-1' does not match")
    assert raised.value.details[0]["keyword"] == "pattern"


@pytest.mark.parametrize(
    ("draft", "schema", "value"),
    [
        # formats checked as before (jsonschema's check where the draft lacks them): what Java's
        # Duration.toString() writes, a time without an offset
        ("http://json-schema.org/draft-07/schema#", {"type": "string", "format": "duration"}, "PT0.5S"),
        ("http://json-schema.org/draft-04/schema#", {"type": "string", "format": "time"}, "12:00:00"),
        ("http://json-schema.org/draft-04/schema#", {"type": "string", "format": "regex"}, "(?P<x>a)"),
    ],
)
def test_formats_outside_the_linear_ones_keep_their_verdict(draft: str, schema: dict, value: str) -> None:
    assert _one_property(schema, draft).decode({"v": value}) == {"v": value}
