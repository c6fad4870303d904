"""toolkit.formats: one validity check for `epistle check`, `epistle codegen` and the runtime registry load.

Each construct codegen cannot express is refused by `epistle check` with the file, the JSON path and the
fix, and by `epistle codegen` with the same message; the nearest construct that works is accepted by both
and generates a usable pydantic model. The runtime refuses invalid schemas only.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
from pydantic import BaseModel
from typer.testing import CliRunner

from toolkit.cli import app
from toolkit.codegen import load_model_index
from toolkit.errors import CodegenFailures, MessageError, SchemaFileError, UnsupportedSchema
from toolkit.formats import AVRO, FORMATS, JSON_SCHEMA, Format, format_for, format_for_suffix
from toolkit.layout import SchemaFormat
from toolkit.registry.base import RegisteredSchema
from toolkit.validation import compile_schema

DRAFT = "https://json-schema.org/draft/2020-12/schema"


def _json(**extra) -> dict:
    return {"$schema": DRAFT, "title": "Thing", "type": "object", "properties": {"id": {"type": "string"}}, **extra}


def _avro(*fields: dict, **extra) -> dict:
    return {"type": "record", "name": "Thing", "fields": [{"name": "id", "type": "string"}, *fields], **extra}


OOPS = {"type": "error", "name": "Oops", "fields": [{"name": "code", "type": "int"}]}
COLOR = {"type": "enum", "name": "Color", "symbols": ["RED", "GREEN"]}
SIZE = {"type": "enum", "name": "Size", "symbols": ["S", "M"]}
CIRCLE = {"type": "record", "name": "Circle", "fields": [{"name": "size", "type": "double"}]}
SQUARE = {"type": "record", "name": "Square", "fields": [{"name": "size", "type": "double"}]}  # Circle's fields
BOX = {"type": "record", "name": "Box", "fields": [{"name": "side", "type": "double"}]}
COUNTS = {"type": "map", "values": "int"}
# B has A's fields and one more with a default: a value of A ({"x": 1}) fits B, and one of B fits A.
POINT_B = {
    "type": "record",
    "name": "B",
    "fields": [{"name": "x", "type": "int"}, {"name": "y", "type": ["null", "int"], "default": None}],
}
POINT_A = {"type": "record", "name": "A", "fields": [{"name": "x", "type": "int"}]}
# C has A's field and a required one more, D another required one: D's values do not fit C nor C's D.
POINT_C = {"type": "record", "name": "C", "fields": [{"name": "x", "type": "int"}, {"name": "y", "type": "int"}]}
POINT_D = {"type": "record", "name": "D", "fields": [{"name": "x", "type": "int"}, {"name": "z", "type": "int"}]}

# name: (file name, document, rule, JSON path, words of the problem)
REFUSED = {
    "relative-ref": (
        "1.json",
        _json(properties={"a": {"$ref": "common.json#/$defs/Money"}}),
        "INVALID_SCHEMA",
        "$.properties.a.$ref",
        "another file or URL",
    ),
    "remote-ref": (
        "1.json",
        _json(properties={"a": {"$ref": "https://example.com/money.json"}}),
        "INVALID_SCHEMA",
        "$.properties.a.$ref",
        "another file or URL",
    ),
    "unknown-$schema": (
        "1.json",
        _json(**{"$schema": "https://example.com/my-draft"}),
        "INVALID_SCHEMA",
        "$schema",
        "unknown $schema",
    ),
    "pattern-not-a-regex": (
        "1.json",
        _json(properties={"code": {"type": "string", "pattern": "(?P<x"}}),
        "UNSUPPORTED_SCHEMA",
        "$.properties.code.pattern",
        "'(?P<x' is not a regular expression",
    ),
    "pattern-properties-key-not-a-regex": (
        "1.json",
        _json(patternProperties={"[a-": {"type": "string"}}),
        "UNSUPPORTED_SCHEMA",
        "$.patternProperties['[a-']",
        "'[a-' is not a regular expression",
    ),
    "pattern-python-only": (
        "1.json",
        _json(properties={"code": {"type": "string", "pattern": "^(a+)+\\Z"}}),
        "UNSUPPORTED_SCHEMA",
        "$.properties.code.pattern",
        "Python's re reads it, JSON Schema's dialect (ECMA-262) does not",
    ),
    "ref-loop": (
        "1.json",
        _json(
            properties={"a": {"$ref": "#/$defs/A"}},
            **{"$defs": {"A": {"$ref": "#/$defs/B"}, "B": {"allOf": [{"$ref": "#/$defs/A"}]}}},
        ),
        "UNSUPPORTED_SCHEMA",
        "$.$defs.A",
        "$.$defs.A -> $.$defs.B -> $.$defs.B.allOf[0] -> $.$defs.A applies to the same value without end",
    ),
    "root-refers-to-itself": (
        "1.json",
        _json(anyOf=[{"$ref": "#"}, {"type": "object"}]),
        "UNSUPPORTED_SCHEMA",
        "$",
        "$ -> $.anyOf[0] -> $ applies to the same value without end",
    ),
    "avro-error-root": ("1.avsc", {**OOPS}, "UNSUPPORTED_SCHEMA", "$.type", "Avro error type"),
    "avro-error-field": (
        "1.avsc",
        _avro({"name": "e", "type": ["null", OOPS], "default": None}),
        "UNSUPPORTED_SCHEMA",
        "$.fields[1].type[1].type",
        "Avro error type",
    ),
    "dotted-$defs": (
        "1.json",
        _json(
            properties={"a": {"$ref": "#/$defs/com.example.Money"}},
            **{"$defs": {"com.example.Money": {"type": "number"}}},
        ),
        "UNSUPPORTED_SCHEMA",
        "$.$defs['com.example.Money']",
        "contains '.'",
    ),
    "dotted-definitions": (
        "1.json",
        _json(**{"$schema": "http://json-schema.org/draft-07/schema#", "definitions": {"a.b": {"type": "string"}}}),
        "UNSUPPORTED_SCHEMA",
        "$.definitions['a.b']",
        "contains '.'",
    ),
    "root-type-list": (
        "1.json",
        _json(type=["object", "null"]),
        "UNSUPPORTED_SCHEMA",
        "$.type",
        "root's type is a list",
    ),
    "json-enum-root": (
        "1.json",
        {"$schema": DRAFT, "title": "Color", "type": "string", "enum": ["RED", "GREEN"]},
        "UNSUPPORTED_SCHEMA",
        "$.enum",
        "root is an enum",
    ),
    "json-root-without-type": (
        "1.json",
        {"$schema": DRAFT, "title": "Thing", "properties": {"id": {"type": "string"}}},
        "UNSUPPORTED_SCHEMA",
        "$",
        'the root has no "type"',
    ),
    "avro-records-of-one-shape": (
        "1.avsc",
        _avro({"name": "shape", "type": [CIRCLE, SQUARE]}),
        "UNSUPPORTED_SCHEMA",
        "$.fields[1].type",
        "branches 0 (record Circle) and 1 (record Square)",
    ),
    "avro-record-with-a-subset-of-fields": (
        "1.avsc",
        _avro({"name": "point", "type": [POINT_B, POINT_A]}),
        "UNSUPPORTED_SCHEMA",
        "$.fields[1].type",
        "branches 0 (record B) and 1 (record A)",
    ),
    "avro-enum-and-string": (
        "1.avsc",
        _avro({"name": "color", "type": ["null", COLOR, "string"]}),
        "UNSUPPORTED_SCHEMA",
        "$.fields[1].type",
        "branches 1 (enum Color) and 2 (string)",
    ),
    "avro-record-and-map-items": (
        "1.avsc",
        _avro({"name": "parts", "type": {"type": "array", "items": [BOX, COUNTS]}}),
        "UNSUPPORTED_SCHEMA",
        "$.fields[1].type.items",
        "branches 0 (record Box) and 1 (map)",
    ),
    "avro-union-root": (
        "1.avsc",
        [CIRCLE, "null", SQUARE],
        "UNSUPPORTED_SCHEMA",
        "$",
        "the union of the root has branches 0 (record Circle) and 2 (record Square)",
    ),
}

# the nearest construct that works: (file name, document)
ACCEPTED = {
    "local-ref": (
        "1.json",
        _json(properties={"a": {"$ref": "#/$defs/Money"}}, **{"$defs": {"Money": {"type": "number"}}}),
    ),
    "draft-07": ("1.json", _json(**{"$schema": "http://json-schema.org/draft-07/schema#"})),
    # regexes one of the two validators compiles (jsonschema-rs: ECMA-262; jsonschema: Python's re)
    "ecma-pattern": (
        "1.json",
        _json(properties={"name": {"type": "string", "pattern": "^\\p{L}+(?<rest>-\\p{L}+)?$"}}),
    ),
    "lookahead-pattern": ("1.json", _json(properties={"slug": {"type": "string", "pattern": "^(?!-)[a-z-]+$"}})),
    "recursive-tree": (
        "1.json",
        _json(
            properties={"root": {"$ref": "#/$defs/Node"}},
            **{
                "$defs": {
                    "Node": {
                        "type": "object",
                        "properties": {"kids": {"type": "array", "items": {"$ref": "#/$defs/Node"}}},
                    }
                }
            },
        ),
    ),
    "avro-record-field": (
        "1.avsc",
        _avro({"name": "e", "type": ["null", {**OOPS, "type": "record"}], "default": None}),
    ),
    "underscored-$defs": (
        "1.json",
        _json(
            properties={"a": {"$ref": "#/$defs/com_example_Money"}},
            **{"$defs": {"com_example_Money": {"type": "number"}}},
        ),
    ),
    "nested-type-list": ("1.json", _json(properties={"a": {"type": ["string", "null"]}})),
    "json-enum-property": ("1.json", _json(properties={"color": {"enum": ["RED", "GREEN"]}})),
    "avro-enum-field": ("1.avsc", _avro({"name": "color", "type": COLOR})),
    "avro-enum-root": ("1.avsc", {**COLOR}),  # generated as a RootModel
    "avro-namespaced": ("1.avsc", _avro(namespace="com.example")),
    "avro-records-of-two-shapes": ("1.avsc", _avro({"name": "shape", "type": [CIRCLE, BOX]})),
    "avro-records-each-with-a-required-field": ("1.avsc", _avro({"name": "point", "type": [POINT_C, POINT_D]})),
    "avro-enums-without-shared-symbols": ("1.avsc", _avro({"name": "tag", "type": ["null", COLOR, SIZE]})),
    "avro-union-root-of-two-shapes": ("1.avsc", [CIRCLE, "null", BOX]),  # generated as a RootModel
}


def _write(schemas: Path, subject: str, name: str, document: object) -> Path:
    path = schemas / subject / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2))
    return path


def _run(*args: str):
    return CliRunner().invoke(app, list(args))


@pytest.mark.parametrize("case", list(REFUSED))
def test_check_and_codegen_refuse_with_the_same_message(case: str, tmp_path: Path) -> None:
    name, document, rule, json_path, words = REFUSED[case]
    schemas = tmp_path / "schemas"
    path = _write(schemas, "things", name, document)
    fmt = format_for_suffix(path.suffix)
    expected = fmt.problems(path, document)[0]
    assert words in expected.problem and expected.fix and expected.field == json_path
    assert isinstance(expected, UnsupportedSchema) == (rule == "UNSUPPORTED_SCHEMA")

    checked = _run("check", "--schemas", str(schemas), "--format", "json")
    assert checked.exit_code == 1, checked.output
    findings = [f for f in json.loads(checked.output)["findings"] if f["severity"] == "error"]
    assert [(f["rule"], f["path"], f["file"]) for f in findings] == [(rule, json_path, str(path))]
    assert expected.problem in findings[0]["message"] and expected.fix in findings[0]["message"]

    for args in (["codegen"], ["codegen", "--check"]):
        generated = _run(*args, "--schemas", str(schemas), "--out", str(tmp_path / "out"))
        assert generated.exit_code == 1 and "Traceback" not in generated.output
        assert f"error: {expected}" in " ".join(generated.output.split()), generated.output
    assert not (tmp_path / "out").exists()

    # ... and the runtime's registry load refuses an invalid schema with the same problem; a valid one
    # that codegen cannot express it compiles (test_registry_schemas_codegen_cannot_express_still_validate)
    registered = RegisteredSchema("things", 1, fmt.schema_format, json.dumps(document))
    if rule == "UNSUPPORTED_SCHEMA":
        assert compile_schema(registered).document == document
    else:
        with pytest.raises(SchemaFileError) as caught:
            compile_schema(registered)
        assert (caught.value.problem, caught.value.field) == (expected.problem, expected.field)


@pytest.mark.parametrize("case", list(ACCEPTED))
def test_the_working_construct_is_checked_and_generated(
    case: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    name, document = ACCEPTED[case]
    schemas = tmp_path / "schemas"
    path = _write(schemas, "things", name, document)
    assert format_for_suffix(path.suffix).problems(path, document) == []
    checked = _run("check", "--schemas", str(schemas))
    assert checked.exit_code == 0, checked.output
    package = f"models_{case.replace('-', '_').replace('$', '')}"
    generated = _run("codegen", "--schemas", str(schemas), "--out", str(tmp_path / package))
    assert generated.exit_code == 0, generated.output
    monkeypatch.syspath_prepend(str(tmp_path))
    model = load_model_index(package).get("things", 1)
    assert isinstance(model, type) and issubclass(model, BaseModel)


@pytest.mark.parametrize(
    ("case", "accepted", "rejected"),
    [
        ("json-root-without-type", "any JSON value", {"id": 1}),
        ("json-enum-root", "RED", "BLUE"),
        (
            "avro-records-of-one-shape",
            {"id": "a", "shape": {"Square": {"size": 2.0}}},
            {"id": "a", "shape": {"size": 2.0}},
        ),
        ("avro-union-root", None, {"Triangle": {"size": 1.0}}),
    ],
)
def test_registry_schemas_codegen_cannot_express_still_validate(case: str, accepted: object, rejected: object) -> None:
    # A consumer without generated models validates bodies with them; with models, a record fails at stage
    # "model" (no generated model). Only epistle check and codegen refuse them.
    name, document, rule, _, _ = REFUSED[case]
    fmt = format_for_suffix(Path(name).suffix)
    assert rule == "UNSUPPORTED_SCHEMA" and isinstance(fmt.problems(name, document)[0], UnsupportedSchema)
    compiled = compile_schema(RegisteredSchema("things", 1, fmt.schema_format, json.dumps(document)))
    decoded = compiled.decode(accepted)
    assert decoded == ({"id": "a", "shape": {"size": 2.0}} if case == "avro-records-of-one-shape" else accepted)
    with pytest.raises(MessageError) as caught:
        compiled.decode(rejected)
    assert caught.value.stage == "validation"


@pytest.mark.parametrize(
    "document",
    [
        {"$schema": DRAFT, "properties": {"id": {"type": "strin"}}},  # no root type, and not a valid schema
        [CIRCLE, "null", {**SQUARE, "name": "Circle"}],  # a union of one shape naming a type twice
    ],
)
def test_an_invalid_registry_schema_is_still_refused(document: object) -> None:
    fmt = JSON_SCHEMA if isinstance(document, dict) else AVRO
    expected = fmt.invalid("things", document)
    assert len(expected) == 1 and not isinstance(expected[0], UnsupportedSchema)
    with pytest.raises(SchemaFileError) as caught:
        compile_schema(RegisteredSchema("things", 1, fmt.schema_format, json.dumps(document)))
    assert not isinstance(caught.value, UnsupportedSchema)
    assert (caught.value.problem, caught.value.field) == (expected[0].problem, expected[0].field)


def test_codegen_reports_every_failing_file_in_one_run(tmp_path: Path) -> None:
    schemas = tmp_path / "schemas"
    _write(schemas, "good", "1.json", _json())
    enum_root = _write(schemas, "colors", "1.json", REFUSED["json-enum-root"][1])
    dotted = _write(schemas, "money", "1.json", REFUSED["dotted-$defs"][1])
    bad_json = schemas / "broken" / "1.json"
    bad_json.parent.mkdir()
    bad_json.write_text('{"type": ')
    result = _run("codegen", "--schemas", str(schemas), "--out", str(tmp_path / "out"))
    assert result.exit_code == 1
    assert "3 schema files cannot be generated" in result.output
    for path, words in ((enum_root, "root is an enum"), (dotted, "contains '.'"), (bad_json, "not valid JSON")):
        line = next(line for line in result.output.splitlines() if str(path) in line)
        assert words in line
    assert not (tmp_path / "out").exists()


def test_errors_keep_their_fields_across_processes() -> None:
    error = UnsupportedSchema("schemas/x/1.json", "the root is an enum", field="$.type", fix="use a record")
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is UnsupportedSchema and str(copy) == str(error)
    assert (copy.problem, copy.field, copy.fix) == (error.problem, error.field, error.fix)
    several = pickle.loads(pickle.dumps(CodegenFailures("schemas", [error, error])))
    assert str(several) == str(CodegenFailures("schemas", [error, error])) and len(several.errors) == 2


def test_both_formats_implement_the_protocol() -> None:
    assert set(FORMATS) == {SchemaFormat.JSON, SchemaFormat.AVRO}
    for fmt in FORMATS.values():
        assert isinstance(fmt, Format)
        assert format_for(fmt.schema_format) is fmt and format_for_suffix(fmt.suffix) is fmt
    assert format_for("AVRO") is AVRO and format_for_suffix(".yaml") is None
    writer = _avro()
    reader = _avro({"name": "note", "type": "string"})  # a new field without a default
    assert [issue.rule for issue in AVRO.compatibility(reader, writer)] == ["READER_FIELD_MISSING_DEFAULT_VALUE"]
    assert JSON_SCHEMA.compatibility(_json(), _json()) == []
    assert JSON_SCHEMA.compile("label", "things", 1, _json()).decode({"id": "x"}) == {"id": "x"}


@pytest.mark.parametrize(
    "fields",
    [
        [{"name": "id", "type": "string"}, {"name": "id", "type": "int"}],  # a field twice
        [{"name": "id", "type": {"type": "record", "name": "my-id", "fields": []}}],  # '-' in a name
    ],
)
def test_avro_needs_both_libraries_to_parse(fields: list, tmp_path: Path) -> None:
    # fastavro (which decodes bodies) accepts these; Apache Avro (which decides compatibility) does not.
    # Before there was one check, the runtime and codegen accepted them and `epistle check` did not.
    document = {"type": "record", "name": "Thing", "fields": fields}
    problems = AVRO.problems(tmp_path / "1.avsc", document)
    assert len(problems) == 1 and "not a valid Avro schema (Apache Avro)" in problems[0].problem
    with pytest.raises(SchemaFileError, match="Apache Avro"):
        compile_schema(RegisteredSchema("things", 1, SchemaFormat.AVRO, json.dumps(document)))


def test_known_drafts_are_the_ones_jsonschema_knows() -> None:
    from jsonschema import validators

    from toolkit.formats.json_schema import KNOWN_DRAFTS, validator_class

    for uri in KNOWN_DRAFTS:
        for spelling in (uri, uri + "#"):
            cls = validators.validator_for({"$schema": spelling}, default=None)
            assert cls is not None and cls.META_SCHEMA["$schema" if "draft-0" in uri else "$id"].rstrip("#") == uri
            assert validator_class("x.json", {"$schema": spelling}) is cls
    assert set(KNOWN_DRAFTS) == {uri for uri in validators._META_SCHEMAS}


@pytest.mark.parametrize(
    "draft", ["http://json-schema.org/draft-03/schema#", "http://json-schema.org/draft-07/schema#", DRAFT]
)
def test_meta_schema_problems_name_the_path_in_every_draft(draft: str) -> None:
    document = {"$schema": draft, "type": "object", "properties": {"a": {"minLength": -1}}}
    problems = JSON_SCHEMA.problems("x.json", document)
    assert len(problems) == 1 and problems[0].field == "$.properties.a.minLength"
    assert "does not conform to its meta-schema" in problems[0].problem


def test_checking_a_json_schema_does_not_import_jsonschema() -> None:
    # jsonschema's import compiles a grammar for its format checkers (seconds); codegen of a changed file
    # needs only the meta-schema check, which jsonschema-rs does.
    import subprocess
    import sys

    code = (
        "import sys; from toolkit.formats import JSON_SCHEMA; "
        "assert JSON_SCHEMA.problems('x.json', {'type': 'object', 'properties': {'a': {'$ref': '#/$defs/A'}},"
        " '$defs': {'A': {'type': 'string'}}}) == []; print('jsonschema' in sys.modules)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert result.stdout.strip() == "False"


@pytest.mark.parametrize(
    "branches",
    [[POINT_B, POINT_A], [POINT_A, POINT_B], [POINT_C, POINT_A], ["null", POINT_A, {**POINT_A, "name": "E"}]],
)
def test_a_record_whose_required_fields_another_has_is_ambiguous(branches: list, tmp_path: Path) -> None:
    document = _avro({"name": "point", "type": branches})
    found = AVRO.unsupported(tmp_path / "1.avsc", document)
    assert [problem.field for problem in found] == ["$.fields[1].type"]
    assert "required field" in found[0].fix
    assert AVRO.unsupported(tmp_path / "1.avsc", _avro({"name": "point", "type": [POINT_C, POINT_D]})) == []


@pytest.mark.parametrize(
    ("document", "field"),
    [
        # a dependency's schema applies to the object itself
        ({"type": "object", "dependentSchemas": {"a": {"$ref": "#"}}}, "$"),
        # a loop through a part of the file no keyword names as a schema: located by its pointer
        (
            {
                "type": "object",
                "x-defs": {"A": {"allOf": [{"$ref": "#/x-defs/A"}]}},
                "properties": {"p": {"$ref": "#/x-defs/A"}},
            },
            "$.x-defs.A",
        ),
        # draft-07: $ref's siblings are ignored, but a $ref alone can still loop
        (
            {"$schema": "http://json-schema.org/draft-07/schema#", "definitions": {"A": {"$ref": "#/definitions/A"}}},
            "$.definitions.A",
        ),
    ],
)
def test_loops_that_stay_on_one_value_are_found_and_located(document: dict, field: str) -> None:
    problems = [p for p in JSON_SCHEMA.problems("x.json", document) if "without end" in p.problem]
    assert [p.field for p in problems] == [field] and isinstance(problems[0], UnsupportedSchema)


@pytest.mark.parametrize(
    "document",
    [
        # an anchor names a part of the file, not its root
        {"type": "object", "allOf": [{"$ref": "#base"}], "$defs": {"B": {"$anchor": "base", "required": ["a"]}}},
        {
            "$schema": "http://json-schema.org/draft-04/schema#",
            "type": "object",
            "allOf": [{"$ref": "#base"}],
            "definitions": {"B": {"id": "#base", "required": ["a"]}},
        },
        # draft-07 ignores what stands beside a $ref: the allOf never applies
        {
            "$schema": "http://json-schema.org/draft-07/schema#",
            "type": "object",
            "definitions": {
                "A": {"type": "object"},
                "B": {"$ref": "#/definitions/A", "allOf": [{"$ref": "#/definitions/B"}]},
            },
            "properties": {"b": {"$ref": "#/definitions/B"}},
        },
        # recursion below a property or an item
        {
            "type": "object",
            "$defs": {"L": {"type": ["object", "null"], "properties": {"next": {"$ref": "#/$defs/L"}}}},
            "properties": {"l": {"$ref": "#/$defs/L"}},
        },
    ],
)
def test_references_that_do_not_loop_on_one_value_are_not_refused_for_it(document: dict) -> None:
    assert [p for p in JSON_SCHEMA.problems("x.json", document) if "without end" in p.problem] == []
    compile_schema(RegisteredSchema("things", 1, SchemaFormat.JSON, json.dumps(document)))
