"""Two verdicts in one report: each compatibility finding says whether readers break and what
Confluent Schema Registry is expected to answer; plus Avro's short aliases and logical types."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.compat_cases import CASES, Case
from toolkit.compat import avro as avro_compat
from toolkit.compat import check_subject, json_schema
from toolkit.compat.check import run_check
from toolkit.compat.findings import ACCEPTS, REFUSES, UNKNOWN, Severity, finding_for
from toolkit.compat.report import render_json
from toolkit.layout import Compatibility, load_subject


def _case(case_id: str) -> Case:
    return next(case for case in CASES if case.id == case_id)


def _findings(tmp_path: Path, case: Case, mode: Compatibility) -> list:
    folder = tmp_path / "schemas" / "events"
    folder.mkdir(parents=True)
    (folder / "subject.toml").write_text(f'compatibility = "{mode.value}"\n')
    suffix = ".avsc" if case.format.value.lower() == "avro" else ".json"
    for number, document in enumerate(case.versions, start=1):
        (folder / f"{number}{suffix}").write_text(json.dumps(document))
    return check_subject(load_subject(folder))


@pytest.mark.parametrize("case_id,mode,rule,severity,readers,confluent,words", [
    # we are stricter: the finding says Confluent would accept it
    ("audit-format-added", Compatibility.BACKWARD, "FORMAT_CHANGED", Severity.WARNING, "may break", ACCEPTS,
     "Confluent Schema Registry would accept this change"),
    ("json-required-with-default-added-closed", Compatibility.BACKWARD, "REQUIRED_ATTRIBUTE_WITH_DEFAULT_ADDED",
     Severity.WARNING, "may break", ACCEPTS, "Confluent Schema Registry would accept this change"),
    ("audit-pattern-properties-model-property-added", Compatibility.BACKWARD, "PROPERTY_ADDED_TO_OPEN_CONTENT_MODEL",
     Severity.ERROR, "breaks", ACCEPTS, "Confluent Schema Registry would accept this change"),
    ("avro-timestamp-millis-to-micros", Compatibility.BACKWARD, "LOGICAL_TYPE_CHANGED", Severity.ERROR, "breaks",
     ACCEPTS, "Confluent Schema Registry would accept this change"),
    # Confluent refuses what readers cope with: flagged, the registration would fail at deploy time
    ("audit-pattern-properties-model-property-added", Compatibility.FORWARD,
     "PROPERTY_REMOVED_FROM_CLOSED_CONTENT_MODEL", Severity.ERROR, "copes", REFUSES,
     "registering the new version will fail at deploy time"),
    ("json-integer-exclusive-bound-equivalent", Compatibility.BACKWARD, "EXCLUSIVE_MINIMUM_ADDED", Severity.ERROR,
     "copes", REFUSES, "registering the new version will fail at deploy time"),
    # both agree it breaks
    ("json-oneof-to-anyof", Compatibility.FORWARD, "COMBINED_TYPE_CHANGED", Severity.ERROR, "breaks", REFUSES,
     "Confluent Schema Registry refuses it too"),
    ("audit-dependency-schema-removed", Compatibility.FORWARD, "DEPENDENCY_SCHEMA_ADDED", Severity.ERROR, "breaks",
     REFUSES, "Confluent Schema Registry refuses it too"),
])
def test_a_finding_carries_both_verdicts(tmp_path, case_id, mode, rule, severity, readers, confluent, words):
    findings = [f for f in _findings(tmp_path, _case(case_id), mode) if f.rule == rule]
    assert findings, f"no {rule} finding"
    finding = findings[0]
    assert (finding.severity, finding.readers, finding.confluent) == (severity, readers, confluent)
    assert words in finding.message
    assert finding.to_dict()["confluent"] == confluent and finding.to_dict()["readers"] == readers


def test_the_json_report_has_both_verdicts(tmp_path):
    _findings(tmp_path, _case("json-oneof-to-anyof"), Compatibility.FORWARD)
    report = json.loads(render_json(run_check(tmp_path / "schemas")))
    found = [f for f in report["findings"] if f["rule"] == "COMBINED_TYPE_CHANGED"]
    assert found and found[0]["readers"] == "breaks" and found[0]["confluent"] == "refuses"
    assert found[0]["path"] == "$.p" and found[0]["reader_version"] == 1 and found[0]["writer_version"] == 2


def test_forward_dependency_removed_is_found_where_it_was_declared():
    old = {"type": "object", "properties": {"card": {"type": "string"}, "expiry": {"type": "string"}},
           "dependentSchemas": {"card": {"required": ["expiry"]}}}
    new = {k: v for k, v in old.items() if k != "dependentSchemas"}
    issues = [i for i in json_schema.check(old, new) if i.severity is Severity.ERROR]  # reader old, writer new
    assert [(i.path, i.rule) for i in issues] == [("$.card", "DEPENDENCY_SCHEMA_ADDED")]
    assert "'expiry'" in issues[0].what


@pytest.mark.parametrize("document,expected", [
    ({"type": "record", "name": "P", "namespace": "com.shop", "aliases": ["O", "x.Y"], "fields": []},
     ["com.shop.O", "x.Y"]),
    ({"type": "record", "name": "com.shop.P", "aliases": ["O"], "fields": []}, ["com.shop.O"]),
    ({"type": "record", "name": "P", "aliases": ["O"], "fields": []}, ["O"]),
])
def test_short_aliases_take_the_namespace_of_their_type(document, expected):
    assert avro_compat.qualify_aliases(document)["aliases"] == expected


def test_a_nested_type_inherits_the_enclosing_namespace_for_its_aliases():
    outer = {"type": "record", "name": "E", "namespace": "com.shop", "fields": [
        {"name": "a", "aliases": ["b"], "type": {"type": "record", "name": "L", "aliases": ["A"], "fields": []}}]}
    field = avro_compat.qualify_aliases(outer)["fields"][0]
    assert field["type"]["aliases"] == ["com.shop.A"] and field["aliases"] == ["b"]  # field aliases stay names


def test_a_decimal_read_with_a_wider_precision_is_fine_and_a_narrower_one_is_not():
    def amount(precision: int) -> dict:
        return {"type": "record", "name": "E", "fields": [
            {"name": "amount", "type": {"type": "bytes", "logicalType": "decimal", "precision": precision,
                                        "scale": 2}}]}

    assert avro_compat.check(amount(12), amount(10)) == []
    issues = avro_compat.check(amount(10), amount(12))
    assert [(i.path, i.rule, i.confluent) for i in issues] == [("$.amount", "DECIMAL_PRECISION_NARROWED", ACCEPTS)]


def test_an_unresolved_reference_does_not_guess_confluents_verdict():
    issues = json_schema.check({"$ref": "common.json#/$defs/Id"}, {"type": "string"})
    finding = finding_for("ids", 2, 1, issues[0])
    assert (finding.rule, finding.severity, finding.confluent) == ("UNRESOLVED_REF", Severity.WARNING, UNKNOWN)
    assert "depends on what this check could not compare" in finding.message


def test_a_logical_type_is_compared_only_where_avro_resolves_the_values():
    micros = {"type": "long", "logicalType": "timestamp-micros"}
    reader = {"type": "record", "name": "E", "fields": [{"name": "at", "type": micros}]}
    writer = {"type": "record", "name": "E", "fields": [
        {"name": "at", "type": ["null", {"type": "long", "logicalType": "timestamp-millis"}], "default": None}]}
    rules = sorted((i.path, i.rule) for i in avro_compat.check(reader, writer))
    # the null branch is the library's type mismatch, not a logical-type change; the long branch is one
    assert rules == [("$.at", "LOGICAL_TYPE_CHANGED"), ("$.at", "TYPE_MISMATCH")]


def test_an_explicit_default_min_contains_is_a_confluent_only_refusal():
    reader = {"type": "array", "items": {"type": "string"}, "contains": {"type": "string"}, "minContains": 1}
    writer = {"type": "array", "items": {"type": "string"}, "contains": {"type": "string"}}
    issues = json_schema.check(reader, writer)
    assert [(i.rule, i.readers_break, i.confluent_accepts) for i in issues] == [("MIN_CONTAINS_ADDED", False, False)]
    assert json_schema.check(writer, reader) == []  # dropping it: Confluent's MIN_CONTAINS_REMOVED is fine


def test_a_conditional_the_writer_already_satisfies_is_a_confluent_only_refusal():
    writer = {"type": "object", "properties": {"kind": {"type": "string"}}, "required": ["kind"]}
    reader = {**writer, "if": {"properties": {"kind": {"const": "card"}}}, "then": {"required": ["kind"]}}
    issues = json_schema.check(reader, writer)
    assert [(i.rule, i.readers_break) for i in issues] == [("TYPE_CHANGED", False)]
    assert json_schema.check(writer, reader) == []  # a writer's conditional only restricts what it writes
