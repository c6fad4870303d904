"""The schemas/ folder loader: every problem names the file, the field and the fix."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from toolkit.errors import SchemaFileError
from toolkit.layout import Compatibility, SchemaFormat, load_schemas

OBJECT = json.dumps({"type": "object"})


def _subject(root: Path, name: str, files: dict[str, str]) -> Path:
    folder = root / name
    folder.mkdir(parents=True)
    for file_name, text in files.items():
        (folder / file_name).write_text(text)
    return folder


def test_loads_versions_in_order_with_config(tmp_path: Path) -> None:
    _subject(
        tmp_path,
        "orders",
        {
            "2.json": OBJECT,
            "1.json": OBJECT,
            "10.json": OBJECT,
            **{f"{v}.json": OBJECT for v in range(3, 10)},
            "subject.toml": 'compatibility = "full_transitive"\ntopics = ["orders"]\n',
        },
    )
    subjects = load_schemas(tmp_path)
    orders = subjects["orders"]
    assert [v.version for v in orders.versions] == list(range(1, 11))
    assert orders.format is SchemaFormat.JSON
    assert orders.config.compatibility is Compatibility.FULL_TRANSITIVE
    assert orders.config.topics == ("orders",)
    assert orders.latest.version == 10 and orders.version(3).path.name == "3.json"


def test_samples_subfolder_is_ignored(tmp_path: Path) -> None:
    folder = _subject(tmp_path, "shipments", {"1.avsc": '"string"'})
    (folder / "samples" / "1").mkdir(parents=True)
    assert load_schemas(tmp_path)["shipments"].format is SchemaFormat.AVRO


@pytest.mark.parametrize(
    ("files", "fragment", "field"),
    [
        ({"1.json": "{not json"}, "not valid JSON", None),
        ({"01.json": OBJECT}, "not a positive integer", "version"),
        ({"0.json": OBJECT}, "not a positive integer", "version"),
        ({"v1.json": OBJECT}, "not a positive integer", "version"),
        ({"1.json": OBJECT, "3.json": OBJECT}, "gap: missing [2]", "version"),
        ({"1.json": OBJECT, "999999999.json": OBJECT}, "missing [2, 3, 4, 5, 6, 7, 8, 9, 10, 11] ...", "version"),
        ({"1.json": OBJECT, "2.avsc": '"int"'}, "mixes JSON Schema", None),
        ({"1.yaml": "x"}, "unexpected file type", None),
        ({"1.json": OBJECT, "subject.toml": 'compatibility = "SIDEWAYS"'}, "unknown compatibility", "compatibility"),
        ({"1.json": OBJECT, "subject.toml": "topics = 'orders'"}, "topics must be a list", "topics"),
        ({"1.json": OBJECT, "subject.toml": "colour = 1"}, "unknown key", "colour"),
        ({"1.json": OBJECT, "subject.toml": "compatibility = "}, "not valid TOML", None),
        ({}, "no schema versions", None),
    ],
)
def test_problems_name_file_field_and_fix(tmp_path: Path, files, fragment, field) -> None:
    _subject(tmp_path, "orders", files)
    with pytest.raises(SchemaFileError) as err:
        load_schemas(tmp_path)
    assert fragment in str(err.value)
    assert err.value.field == field
    assert err.value.fix, "every error tells the user how to fix it"
    assert str(tmp_path / "orders") in str(err.value)


def test_missing_schemas_folder(tmp_path: Path) -> None:
    with pytest.raises(SchemaFileError, match="schemas folder not found"):
        load_schemas(tmp_path / "nope")


# One rule for a schema version written as text: a version file's name, an envelope's schemaVersion, and the
# published version files `epistle check` compares with git all accept and refuse the same spellings.
@pytest.mark.parametrize(
    ("text", "accepted"),
    [
        ("1", True),
        ("10", True),
        ("999999999", True),
        ("0", False),
        ("01", False),
        ("-1", False),
        ("+1", False),
        ("1.0", False),
        ("1e3", False),
        (" 1", False),
        ("\u0661", False),  # ARABIC-INDIC DIGIT ONE: str.isdigit() says yes
        ("1000000000", False),
        ("9" * 200, False),  # past any registry's 32-bit version numbers
    ],
)
def test_a_version_is_spelled_the_same_everywhere(tmp_path: Path, text: str, accepted: bool) -> None:
    from pydantic import ValidationError

    from toolkit.compat.history import _VERSION_FILE
    from toolkit.envelope import Header

    folder = _subject(tmp_path, "orders", {f"{text}.json": OBJECT})
    try:
        load_schemas(tmp_path)
        as_file = True
    except SchemaFileError as exc:  # a lone version other than 1 is a gap, not a misspelling
        as_file = "gap" in exc.problem
    header = {
        "messageType": "T",
        "schemaName": "orders",
        "schemaVersion": text,
        "correlationId": "",
        "messageId": "m",
        "timestamp": "2024-05-01T12:00:00Z",
        "producer": "p",
    }
    try:
        in_envelope = Header.model_validate(header).version == int(text)
    except ValidationError:
        in_envelope = False
    published = _VERSION_FILE.match(f"orders/{text}.json") is not None
    assert (as_file, in_envelope, published) == (accepted,) * 3, folder


@pytest.mark.parametrize("name", ["orders\n", "1orders", "or ders"])
def test_a_folder_whose_name_is_not_a_schema_name_is_refused(tmp_path: Path, name: str) -> None:
    _subject(tmp_path, name, {"1.json": OBJECT})
    with pytest.raises(SchemaFileError, match="is not a valid schemaName"):
        load_schemas(tmp_path)


@pytest.mark.parametrize(
    ("name", "content", "fragment", "field"),
    [
        ("1.json", b'\xff\xfe{"type": "object"}', "not UTF-8 text (invalid start byte at byte 0)", None),
        ("1.avsc", b'{"type": "record", "name": "Caf\xe9", "fields": []}', "not UTF-8 text", None),
        ("1.json", b'{"type": "integer", "maximum": ' + b"9" * 5000 + b"}", "an integer of more than 4300", None),
        ("1.json", b'{"type": "object", "type": "string"}', "the key 'type' is given twice", "$"),
        (
            "1.json",
            b'{"type": "object", "properties": {"a": {"type": "string", "maxLength": 3, "maxLength": 5}}}',
            "the key 'maxLength' is given twice",
            "$.properties.a",
        ),
        (
            "1.avsc",
            b'{"type": "record", "name": "R", "fields": [{"name": "a", "type": "int", "type": "string"}]}',
            "the key 'type' is given twice",
            "$.fields[0]",
        ),
    ],
)
def test_a_version_file_that_cannot_mean_one_thing_is_refused(
    tmp_path: Path, name: str, content: bytes, fragment: str, field: str | None
) -> None:
    folder = _subject(tmp_path, "orders", {})
    (folder / name).write_bytes(content)
    with pytest.raises(SchemaFileError) as err:
        load_schemas(tmp_path)
    assert fragment in err.value.problem
    assert err.value.field == field and err.value.fix
    assert err.value.path == folder / name


def test_a_registry_schema_with_a_key_twice_is_read_as_its_other_clients_read_it() -> None:
    # Already registered and in use: the last value counts, as in Python's json and Jackson.
    from toolkit.layout import parse_json_file

    assert parse_json_file(Path("orders/1"), '{"type": "object", "type": "string"}') == {"type": "string"}


def test_the_check_names_the_field_of_a_layout_problem(tmp_path: Path) -> None:
    from toolkit.compat.check import run_check

    folder = _subject(tmp_path, "orders", {"subject.toml": 'compatibility = "SIDEWAYS"'})
    (folder / "1.json").write_text('{"type": "object", "properties": {"a": {"type": "string"}}}')
    other = _subject(tmp_path, "shipments", {})
    (other / "1.json").write_text('{"type": "object", "properties": {"a": {"type": "string", "type": "integer"}}}')
    found = {(f.subject, f.rule, f.path) for f in run_check(tmp_path).findings if f.rule.startswith("INVALID")}
    assert found == {
        ("orders", "INVALID_SUBJECT_CONFIG", "compatibility"),
        ("shipments", "INVALID_LAYOUT", "$.properties.a"),
    }
