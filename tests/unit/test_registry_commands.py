"""register_schemas / verify_schemas against the in-memory registry."""

from __future__ import annotations

import json

import pytest

from tests.unit.test_registry_local import ORDER_V1, ORDER_V2, write_schemas
from toolkit.errors import ConfigError
from toolkit.layout import Compatibility, SchemaFormat, load_schemas
from toolkit.registry.commands import register_schemas, registry_subjects, verify_schemas
from toolkit.testing import InMemoryRegistry


def refuse_when(marker: str):
    return lambda old, new: f"{marker} breaks readers" if marker in new else None


@pytest.fixture
def subjects(tmp_path):
    return load_schemas(write_schemas(tmp_path / "schemas"))


def actions(steps):
    return [(step.subject, step.version, step.action) for step in steps]


def test_register_pushes_every_version_in_order_then_is_a_no_op(subjects):
    registry = InMemoryRegistry()
    steps = register_schemas(registry, subjects)
    assert actions(steps) == [("orders", 1, "registered"), ("orders", 2, "registered"), ("shipments", 1, "registered")]
    assert registry.versions("orders") == [1, 2] and registry.get("shipments", 1).format == SchemaFormat.AVRO
    registry.calls.clear()
    again = register_schemas(registry, subjects)
    assert [step.action for step in again] == ["unchanged"] * 3
    assert registry.calls["register"] == 0
    assert verify_schemas(registry, subjects).drifts == []


def test_register_stops_at_a_refused_version_with_the_registry_reason(subjects):
    registry = InMemoryRegistry(incompatible=refuse_when('"note"'))
    seen = []
    steps = register_schemas(registry, subjects, on_step=seen.append)
    assert seen == steps
    assert actions(steps) == [("orders", 1, "registered"), ("orders", 2, "refused")]
    assert steps[-1].failed and '"note" breaks readers' in str(steps[-1])
    assert "shipments" not in registry.store  # nothing after the failure


def test_dry_run_changes_nothing_and_checks_the_first_new_version(subjects):
    registry = InMemoryRegistry(incompatible=refuse_when('"note"'))
    registry.register("orders", json.dumps(ORDER_V1), SchemaFormat.JSON)
    registry.calls.clear()
    steps = register_schemas(registry, subjects, dry_run=True)
    assert actions(steps) == [("orders", 1, "unchanged"), ("orders", 2, "would be refused")]
    assert "breaks readers" in steps[-1].detail
    assert registry.calls["register"] == 0


def test_dry_run_on_an_empty_registry_plans_everything(subjects):
    registry = InMemoryRegistry()
    steps = register_schemas(registry, subjects, dry_run=True)
    assert [step.action for step in steps] == ["would register"] * 3
    assert registry.store == {}


def test_different_content_under_a_published_version_is_a_conflict(subjects):
    registry = InMemoryRegistry()
    registry.register("orders", '{"type": "object"}', SchemaFormat.JSON)
    steps = register_schemas(registry, subjects)
    assert actions(steps) == [("orders", 1, "conflict")]
    assert "immutable" in steps[-1].detail


def test_a_version_identical_to_an_earlier_one_cannot_get_its_own_number(tmp_path):
    root = write_schemas(tmp_path / "schemas")
    (root / "orders" / "3.json").write_text(json.dumps(ORDER_V1))  # a revert to v1
    registry = InMemoryRegistry()
    steps = register_schemas(registry, load_schemas(root))
    assert actions(steps)[-1] == ("orders", 3, "conflict")
    assert "identical to its version 1" in steps[-1].detail


def test_verify_lists_every_drift(subjects):
    registry = InMemoryRegistry()
    registry.register("orders", json.dumps(ORDER_V1), SchemaFormat.JSON)
    registry.register("orders", '{"type": "object", "title": "changed"}', SchemaFormat.JSON)
    registry.register("orders", json.dumps(ORDER_V2), SchemaFormat.JSON)
    report = verify_schemas(registry, subjects)
    assert [str(d) for d in report.drifts] == [
        "orders v2: content differs from 2.json",
        "orders v3: in the registry but not in the local folder",
        "shipments: subject missing in the registry (local versions 1..1)",
    ]
    assert report.checked == 2


def test_verify_compares_parsed_json_not_text(subjects):
    registry = InMemoryRegistry()
    register_schemas(registry, subjects)
    registry.store["orders"][0] = registry.store["orders"][0].__class__(
        "orders", 1, SchemaFormat.JSON, json.dumps(ORDER_V1, sort_keys=True, separators=(",", ":"))
    )
    assert verify_schemas(registry, subjects).drifts == []


def test_verify_reports_a_format_difference(subjects):
    registry = InMemoryRegistry()
    register_schemas(registry, subjects)
    held = registry.store["orders"][0]
    registry.store["orders"][0] = held.__class__("orders", 1, SchemaFormat.AVRO, held.text)
    assert [str(d) for d in verify_schemas(registry, subjects).drifts] == [
        "orders v1: format differs: local JSON, registry AVRO"
    ]


def test_topic_value_subjects_come_from_subject_toml(subjects):
    assert registry_subjects(subjects["orders"], "topic_value") == ["orders-value"]
    with pytest.raises(ConfigError, match="topics"):
        registry_subjects(subjects["shipments"], "topic_value")
    registry = InMemoryRegistry()
    register_schemas(registry, {"orders": subjects["orders"]}, strategy="topic_value")
    assert registry.versions("orders-value") == [1, 2]


def test_the_compatibility_mode_is_set_where_the_registry_supports_it(subjects):
    class ConfigurableRegistry(InMemoryRegistry):
        def __init__(self) -> None:
            super().__init__()
            self.modes: dict[str, Compatibility] = {}

        def set_compatibility(self, subject: str, mode: Compatibility) -> None:
            self.modes[subject] = mode

    registry = ConfigurableRegistry()
    steps = register_schemas(registry, subjects)
    assert registry.modes == {"orders": Compatibility.BACKWARD, "shipments": Compatibility.BACKWARD}
    assert ("orders", None, "compatibility") in actions(steps)
    planned = ConfigurableRegistry()
    register_schemas(planned, subjects, dry_run=True)
    assert planned.modes == {}


def test_a_registry_error_on_a_version_is_a_failed_step_naming_it(subjects):
    from toolkit.errors import RegistryUnavailable

    class BrokenChecker(InMemoryRegistry):
        def register(self, subject, text, schema_format):
            if self.store.get(subject):
                raise RegistryUnavailable("HTTP 500 #: could not determine version", attempts=4)
            return super().register(subject, text, schema_format)

        def check_compatibility(self, subject, text, schema_format, version="latest"):
            raise RegistryUnavailable("HTTP 500 #: could not determine version", attempts=4)

    steps = register_schemas(BrokenChecker(), subjects)
    assert actions(steps)[-1] == ("orders", 2, "failed") and "could not determine" in steps[-1].detail
    registry = BrokenChecker()
    registry.register("orders", json.dumps(ORDER_V1), SchemaFormat.JSON)
    planned = register_schemas(registry, subjects, dry_run=True)
    assert actions(planned)[-1] == ("orders", 2, "failed")
