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
    _subject(tmp_path, "orders", {"2.json": OBJECT, "1.json": OBJECT, "10.json": OBJECT,
                                  **{f"{v}.json": OBJECT for v in range(3, 10)},
                                  "subject.toml": 'compatibility = "full_transitive"\ntopics = ["orders"]\n'})
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
