"""Bad input to `epistle codegen`: one clear message naming the file and the problem, exit 1, no traceback,
and the previous output left as it was."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from toolkit.cli import app

GOOD_JSON = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "Thing",
    "type": "object",
    "properties": {"id": {"type": "string"}},
}
GOOD_AVRO = {"type": "record", "name": "Thing", "fields": [{"name": "id", "type": "string"}]}


def _write(folder: Path, files: dict[str, object]) -> None:
    for relative, content in files.items():
        path = folder / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content if isinstance(content, str) else json.dumps(content))


CASES = {
    "not-json": ({"things/1.json": '{"type": "object",'}, "things/1.json", "not valid JSON"),
    "meta-schema": (
        {"things/1.json": {**GOOD_JSON, "properties": {"id": {"type": "text"}}}},
        "things/1.json",
        "does not conform to its meta-schema",
    ),
    "ref-does-not-resolve": (
        {"things/1.json": {**GOOD_JSON, "properties": {"id": {"$ref": "#/$defs/Id"}}}},
        "things/1.json",
        "$ref '#/$defs/Id' does not resolve",
    ),
    "avro-unparseable": (
        {"things/1.avsc": {"type": "record", "name": "Thing", "fields": [{"name": "id", "type": "uuid"}]}},
        "things/1.avsc",
        "not a valid Avro schema",
    ),
    "avro-not-json": ({"things/1.avsc": "record Thing { string id; }"}, "things/1.avsc", "not valid JSON"),
    "version-not-integer": (
        {"things/1.json": GOOD_JSON, "things/v2.json": GOOD_JSON},
        "things/v2.json",
        "not a positive integer",
    ),
    "version-zero": ({"things/0.avsc": GOOD_AVRO}, "things/0.avsc", "not a positive integer"),
    "version-gap": ({"things/1.avsc": GOOD_AVRO, "things/3.avsc": GOOD_AVRO}, "things", "gap: missing [2]"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_reported_and_output_untouched(case: str, tmp_path: Path) -> None:
    files, culprit, problem = CASES[case]
    schemas = tmp_path / "schemas"
    _write(schemas, {"good/1.json": GOOD_JSON, **files})
    out = tmp_path / "generated_models"
    out.mkdir()
    (out / "previous.py").write_text("# previous output\n")

    for args in (["codegen"], ["codegen", "--check"]):
        result = CliRunner().invoke(app, [*args, "--schemas", str(schemas), "--out", str(out)])
        assert result.exit_code == 1, result.output
        assert str(schemas / culprit) in result.output
        assert problem in result.output
        assert "Traceback" not in result.output
        assert result.exception is None or isinstance(result.exception, SystemExit)
    assert sorted(p.name for p in out.iterdir()) == ["previous.py"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["generated_models", "schemas"]


def test_missing_schemas_folder(tmp_path: Path) -> None:
    where = ["--schemas", str(tmp_path / "nope"), "--out", str(tmp_path / "o")]
    result = CliRunner().invoke(app, ["codegen", *where])
    assert result.exit_code == 1 and "schemas folder not found" in result.output


def test_good_input_succeeds(tmp_path: Path) -> None:
    schemas = tmp_path / "schemas"
    _write(schemas, {"good/1.json": GOOD_JSON, "good-avro/1.avsc": GOOD_AVRO})
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["codegen", "--schemas", str(schemas), "--out", str(out)])
    assert result.exit_code == 0, result.output
    index = (out / "_index.py").read_text()
    assert '("good", 1): "good.v1:Thing"' in index and '("good-avro", 1): "good_avro.v1:Thing"' in index


OPEN_MODEL = """from pydantic import BaseModel, ConfigDict


class Order(BaseModel):
    model_config = ConfigDict(
        extra="allow",
        populate_by_name=True,
    )
    order_id: str
"""


def test_an_open_model_is_populated_by_alias_only() -> None:
    from toolkit.codegen.render import _open_models_by_alias_only

    text = _open_models_by_alias_only(OPEN_MODEL, "orders/1.json")
    assert "populate_by_name" not in text and text == OPEN_MODEL.replace("        populate_by_name=True,\n", "")
    closed = OPEN_MODEL.replace('extra="allow"', 'extra="forbid"')
    assert _open_models_by_alias_only(closed, "orders/1.json") == closed


@pytest.mark.parametrize(
    "config",
    [
        'ConfigDict(extra="allow", populate_by_name=True)',
        'ConfigDict(\n        extra="allow", populate_by_name=True\n    )',
        'ConfigDict(\n        extra="allow",\n        populate_by_name=(\n            True\n        ),\n    )',
    ],
)
def test_an_open_model_config_laid_out_otherwise_is_a_codegen_error(config: str) -> None:
    from toolkit.codegen.render import _open_models_by_alias_only
    from toolkit.errors import CodegenError

    text = OPEN_MODEL.replace('ConfigDict(\n        extra="allow",\n        populate_by_name=True,\n    )', config)
    assert config in text
    with pytest.raises(CodegenError, match="Order") as caught:
        _open_models_by_alias_only(text, "orders/1.json")
    assert str(caught.value.path) == "orders/1.json"
