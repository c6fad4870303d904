"""LocalFolderRegistry over a tmp_path schemas folder: lookups, not found, and a read-only register."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from toolkit.errors import RegistryError, RegistryRejected, SchemaFileError, SchemaNotFound
from toolkit.layout import SchemaFormat
from toolkit.registry import LocalFolderRegistry, SchemaRegistry

ORDER_V1 = {"type": "object", "properties": {"id": {"type": "string"}}, "required": ["id"]}
ORDER_V2 = {"type": "object", "properties": {"id": {"type": "string"}, "note": {"type": "string"}}, "required": ["id"]}
SHIPMENT_V1 = {"type": "record", "name": "Shipment", "fields": [{"name": "id", "type": "string"}]}


def write_schemas(root: Path) -> Path:
    (root / "orders").mkdir(parents=True)
    (root / "orders" / "1.json").write_text(json.dumps(ORDER_V1, indent=2))
    (root / "orders" / "2.json").write_text(json.dumps(ORDER_V2, indent=2))
    (root / "orders" / "subject.toml").write_text('topics = ["orders"]\n')
    (root / "shipments").mkdir()
    (root / "shipments" / "1.avsc").write_text(json.dumps(SHIPMENT_V1))
    return root


@pytest.fixture
def registry(tmp_path) -> LocalFolderRegistry:
    return LocalFolderRegistry(write_schemas(tmp_path / "schemas"))


def test_it_is_a_registry(registry):
    assert isinstance(registry, SchemaRegistry)


def test_lookup_by_version_and_latest_for_json_schema_and_avro(registry):
    first = registry.get("orders", 1)
    assert (first.subject, first.version, first.format) == ("orders", 1, SchemaFormat.JSON)
    assert json.loads(first.text) == ORDER_V1
    assert registry.latest("orders").version == 2
    shipment = registry.latest("shipments")
    assert (shipment.version, shipment.format) == (1, SchemaFormat.AVRO)
    assert json.loads(shipment.text) == SHIPMENT_V1
    assert registry.subjects() == ["orders", "shipments"]
    assert registry.versions("orders") == [1, 2]


@pytest.mark.parametrize("subject, version", [("nope", 1), ("orders", 3), ("orders", 0), ("orders", -1)])
def test_unknown_subject_or_version_is_not_found(registry, subject, version):
    with pytest.raises(SchemaNotFound) as raised:
        registry.get(subject, version)
    assert raised.value.subject == subject


def test_topic_value_subjects_resolve_through_subject_toml(registry):
    schema = registry.get("orders-value", 2)
    assert schema.subject == "orders-value" and json.loads(schema.text) == ORDER_V2
    with pytest.raises(SchemaNotFound):
        registry.latest("shipments-value")  # shipments lists no topics


def test_register_of_an_existing_schema_returns_it_and_anything_else_is_refused(registry, tmp_path):
    same = registry.register("orders", json.dumps(ORDER_V1), SchemaFormat.JSON)  # other whitespace
    assert same.version == 1
    before = sorted(p.name for p in (tmp_path / "schemas" / "orders").iterdir())
    with pytest.raises(RegistryRejected) as raised:
        registry.register("orders", '{"type": "object"}', SchemaFormat.JSON)
    assert "3.json" in str(raised.value) and raised.value.reasons
    assert sorted(p.name for p in (tmp_path / "schemas" / "orders").iterdir()) == before


def test_compatibility_is_only_answered_for_an_identical_schema(registry):
    assert registry.check_compatibility("orders", json.dumps(ORDER_V2), SchemaFormat.JSON).compatible
    with pytest.raises(RegistryError, match="epistle check"):
        registry.check_compatibility("orders", '{"type": "object"}', SchemaFormat.JSON)


def test_the_folder_is_read_once_until_reload(registry, tmp_path):
    assert registry.versions("shipments") == [1]
    (tmp_path / "schemas" / "shipments" / "2.avsc").write_text(json.dumps({**SHIPMENT_V1, "doc": "v2"}))
    assert registry.versions("shipments") == [1]
    registry.reload()
    assert registry.versions("shipments") == [1, 2]


def test_a_broken_folder_raises_the_layout_error(tmp_path):
    with pytest.raises(SchemaFileError):
        LocalFolderRegistry(tmp_path / "missing").subjects()


def test_a_file_vanishing_during_the_re_read_keeps_the_previous_view(tmp_path, monkeypatch):
    import toolkit.registry.local as local_module

    registry = LocalFolderRegistry(write_schemas(tmp_path / "schemas"), rescan_interval_s=0)
    assert registry.get("orders", 1).version == 1

    def vanished(root):
        raise FileNotFoundError(2, "No such file or directory", str(root / "orders" / "2.json"))

    monkeypatch.setattr(local_module, "load_schemas", vanished)
    with pytest.raises(SchemaNotFound):
        registry.get("orders", 3)  # the miss re-reads, the re-read fails: still a miss, not an OSError
    assert registry.get("orders", 2).version == 2  # the previous view is kept


def test_registering_under_a_name_the_folder_can_never_hold_says_so_not_add_a_file(tmp_path) -> None:
    (tmp_path / "schemas").mkdir()
    with pytest.raises(RegistryRejected) as raised:
        LocalFolderRegistry(tmp_path / "schemas").register("../x", '{"type": "object"}', SchemaFormat.JSON)
    assert "can never be in" in str(raised.value) and "add the schema as" not in str(raised.value)
