"""Schema validity is decided once: `epistle check` (a version file), `epistle codegen` and the runtime's registry
load (compile_schema, the registered text) parse the text and check the schema with the same code, so they refuse
the same texts with the same problem. The runtime alone accepts a valid schema codegen cannot express."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from toolkit.cli import app
from toolkit.compat import check_pair
from toolkit.compat.check import run_check
from toolkit.errors import SchemaFileError
from toolkit.layout import SchemaFormat
from toolkit.registry.base import RegisteredSchema
from toolkit.validation import compile_schema

DEEP = "[" * 100_000 + "]" * 100_000  # beyond any recursion limit the consumer sets (EPISTLE_MAX_NESTING_DEPTH)
OBJECT = {"type": "object", "properties": {"id": {"type": "string"}}}
RECORD = {"type": "record", "name": "Thing", "fields": [{"name": "id", "type": "string"}]}

CASES = {  # name: (file name, text, refused: the words of the problem, or None when the runtime accepts it)
    "too-deep": ("1.json", DEEP, "nested too deeply"),
    "too-deep-avro": ("1.avsc", DEEP, "nested too deeply"),
    "not-json": ("1.json", '{"type": "object",', "not valid JSON"),
    "not-a-schema": ("1.json", json.dumps({"type": "strin"}), "meta-schema"),
    "bad-ref": ("1.json", json.dumps({"type": "object", "properties": {"a": {"$ref": "#/$defs/A"}}}), "$ref"),
    "unknown-avro-type": (
        "1.avsc",
        json.dumps({**RECORD, "fields": [{"name": "a", "type": "Nope"}]}),
        "not a valid Avro schema",
    ),
    "integer-too-long": ("1.json", '{"type": "integer", "maximum": ' + "9" * 5000 + "}", "more than 4300 digits"),
    "valid": ("1.json", json.dumps(OBJECT), None),
    "valid-avro": ("1.avsc", json.dumps(RECORD), None),
    "codegen-cannot-express": ("1.json", json.dumps({"properties": {"id": {"type": "string"}}}), None),
}


@pytest.mark.parametrize("case", list(CASES))
def test_check_codegen_and_the_runtime_agree(case: str, tmp_path: Path) -> None:
    name, text, words = CASES[case]
    schemas = tmp_path / "schemas"
    (schemas / "things").mkdir(parents=True)
    (schemas / "things" / name).write_text(text)
    fmt = SchemaFormat.from_suffix(Path(name).suffix)

    try:
        compile_schema(RegisteredSchema("things", 1, fmt, text))
        runtime = None
    except SchemaFileError as exc:
        runtime = exc.problem
    checked = [f for f in run_check(schemas).findings if f.rule in ("INVALID_LAYOUT", "INVALID_SCHEMA")]
    codegen = CliRunner().invoke(app, ["codegen", "--schemas", str(schemas), "--out", str(tmp_path / "out")])

    if words is None:
        assert runtime is None and checked == []
        assert (codegen.exit_code == 0) == (case != "codegen-cannot-express"), codegen.output
        return
    assert runtime is not None and words in runtime
    assert len(checked) == 1 and runtime in checked[0].message
    assert codegen.exit_code == 1 and "Traceback" not in codegen.output
    assert runtime in " ".join(codegen.output.split())


def test_compatibility_checks_refuse_what_the_runtime_refuses() -> None:
    # check_pair refuses an invalid reader or writer with the problem the runtime's load gives.
    invalid = {"type": "strin"}
    with pytest.raises(SchemaFileError) as compared:
        check_pair(SchemaFormat.JSON, OBJECT, invalid)
    with pytest.raises(SchemaFileError) as loaded:
        compile_schema(RegisteredSchema("things", 2, SchemaFormat.JSON, json.dumps(invalid)))
    assert compared.value.problem == loaded.value.problem and str(compared.value.path) == "writer"
    unsupported = {"properties": {"id": {"type": "string"}}}  # valid: compared, as the runtime loads it
    assert check_pair(SchemaFormat.JSON, unsupported, unsupported) == []
