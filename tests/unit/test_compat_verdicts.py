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
from toolkit.compat.findings import ACCEPTS, REFUSES, UNKNOWN, Issue, Severity, finding_for
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


@pytest.mark.parametrize(
    "case_id,mode,rule,severity,readers,confluent,words",
    [
        # a warning Confluent accepts: both let it through, so the finding says they agree
        (
            "audit-format-added",
            Compatibility.BACKWARD,
            "FORMAT_CHANGED",
            Severity.WARNING,
            "may break",
            ACCEPTS,
            "Confluent Schema Registry accepts it too",
        ),
        (
            "json-required-with-default-added-closed",
            Compatibility.BACKWARD,
            "REQUIRED_ATTRIBUTE_WITH_DEFAULT_ADDED",
            Severity.WARNING,
            "may break",
            ACCEPTS,
            "Confluent Schema Registry accepts it too",
        ),
        # we are stricter: the finding says Confluent would accept it
        (
            "audit-pattern-properties-model-property-added",
            Compatibility.BACKWARD,
            "PROPERTY_ADDED_TO_OPEN_CONTENT_MODEL",
            Severity.ERROR,
            "breaks",
            ACCEPTS,
            "Confluent Schema Registry would accept this change",
        ),
        (
            "avro-timestamp-millis-to-micros",
            Compatibility.BACKWARD,
            "LOGICAL_TYPE_CHANGED",
            Severity.ERROR,
            "breaks",
            ACCEPTS,
            "Confluent Schema Registry would accept this change",
        ),
        # Confluent refuses what readers cope with: flagged, the registration would fail at deploy time
        (
            "audit-pattern-properties-model-property-added",
            Compatibility.FORWARD,
            "PROPERTY_REMOVED_FROM_CLOSED_CONTENT_MODEL",
            Severity.ERROR,
            "copes",
            REFUSES,
            "registering the new version will fail at deploy time",
        ),
        (
            "json-integer-exclusive-bound-equivalent",
            Compatibility.BACKWARD,
            "EXCLUSIVE_MINIMUM_ADDED",
            Severity.ERROR,
            "copes",
            REFUSES,
            "registering the new version will fail at deploy time",
        ),
        # a changed combinator readers cope with: no value is both a string and an integer, and a single conjunct
        # takes both types
        (
            "json-oneof-to-anyof",
            Compatibility.FORWARD,
            "COMBINED_TYPE_CHANGED",
            Severity.ERROR,
            "copes",
            REFUSES,
            "registering the new version will fail at deploy time",
        ),
        (
            "audit-anyof-to-oneof",
            Compatibility.BACKWARD,
            "COMBINED_TYPE_CHANGED",
            Severity.ERROR,
            "copes",
            REFUSES,
            "registering the new version will fail at deploy time",
        ),
        (
            "audit-anyof-to-single-allof",
            Compatibility.BACKWARD,
            "COMBINED_TYPE_CHANGED",
            Severity.ERROR,
            "copes",
            REFUSES,
            "registering the new version will fail at deploy time",
        ),
        # both agree it breaks
        (
            "audit-anyof-to-oneof-overlapping",
            Compatibility.BACKWARD,
            "COMBINED_TYPE_CHANGED",
            Severity.ERROR,
            "breaks",
            REFUSES,
            "Confluent Schema Registry refuses it too",
        ),
        (
            "audit-allof-to-oneof",
            Compatibility.BACKWARD,
            "COMBINED_TYPE_CHANGED",
            Severity.ERROR,
            "breaks",
            REFUSES,
            "Confluent Schema Registry refuses it too",
        ),
        (
            "audit-dependency-schema-removed",
            Compatibility.FORWARD,
            "DEPENDENCY_SCHEMA_ADDED",
            Severity.ERROR,
            "breaks",
            REFUSES,
            "Confluent Schema Registry refuses it too",
        ),
    ],
)
def test_a_finding_carries_both_verdicts(tmp_path, case_id, mode, rule, severity, readers, confluent, words):
    findings = [f for f in _findings(tmp_path, _case(case_id), mode) if f.rule == rule]
    assert findings, f"no {rule} finding"
    finding = findings[0]
    assert (finding.severity, finding.readers, finding.confluent) == (severity, readers, confluent)
    assert words in finding.message
    assert finding.to_dict()["confluent"] == confluent and finding.to_dict()["readers"] == readers


def test_the_json_report_has_both_verdicts(tmp_path):
    _findings(tmp_path, _case("audit-anyof-to-oneof-overlapping"), Compatibility.BACKWARD)
    report = json.loads(render_json(run_check(tmp_path / "schemas")))
    found = [f for f in report["findings"] if f["rule"] == "COMBINED_TYPE_CHANGED"]
    assert found and found[0]["readers"] == "breaks" and found[0]["confluent"] == "refuses"
    assert found[0]["path"] == "$.p" and found[0]["reader_version"] == 2 and found[0]["writer_version"] == 1
    assert "both admit 'integer' values" in found[0]["message"]


@pytest.mark.parametrize(
    "reader,writer,breaks,words",
    [
        (
            {"oneOf": [{"type": "string"}, {"type": "integer"}]},
            {"anyOf": [{"type": "string"}, {"type": "integer"}]},
            False,
            "their types do not overlap",
        ),
        (
            {"oneOf": [{"type": "number"}, {"type": "integer"}]},
            {"anyOf": [{"type": "number"}, {"type": "integer"}]},
            True,
            "branches 1 and 2 of the reader's oneOf both admit 'integer' values",
        ),
        # the branches overlap on strings, but this writer writes only integers and booleans
        (
            {"oneOf": [{"type": ["string", "integer"]}, {"type": ["string", "boolean"]}]},
            {"anyOf": [{"type": "integer"}, {"type": "boolean"}]},
            False,
            "their types do not overlap",
        ),
        (
            {"oneOf": [{"type": "string"}, {"maxLength": 3}]},
            {"anyOf": [{"type": "string"}, {"type": "integer"}]},
            True,
            "both admit 'string' values",
        ),
        (
            {"oneOf": [{"enum": ["a", 1]}, {"const": 2.5}]},
            {"anyOf": [{"const": "a"}, {"const": 2.5}]},
            False,
            "their types do not overlap",
        ),
        # disjoint branches, but a writer branch no reader branch takes: breaks, and says why
        (
            {"oneOf": [{"type": "string"}, {"type": "integer"}]},
            {"anyOf": [{"type": "string"}, {"type": "integer"}, {"type": "boolean"}]},
            True,
            "the reader rejects values the writer allows: the writer may write values that match none",
        ),
        (
            {"allOf": [{"type": ["string", "integer"]}]},
            {"oneOf": [{"type": "string"}, {"type": "integer"}]},
            False,
            "satisfies each of the reader's allOf conjuncts",
        ),
        (
            {"allOf": [{"type": "string"}]},
            {"anyOf": [{"type": "string"}, {"type": "integer"}]},
            True,
            "the reader rejects values the writer allows: the writer may write 'integer'",
        ),
    ],
)
def test_a_changed_combinator_breaks_readers_only_with_a_reason(reader, writer, breaks, words):
    changed = [i for i in json_schema.check(reader, writer) if i.rule == "COMBINED_TYPE_CHANGED"]
    assert len(changed) == 1 and changed[0].readers_break is breaks and not changed[0].confluent_accepts
    assert words in changed[0].what


def test_forward_dependency_removed_is_found_where_it_was_declared():
    old = {
        "type": "object",
        "properties": {"card": {"type": "string"}, "expiry": {"type": "string"}},
        "dependentSchemas": {"card": {"required": ["expiry"]}},
    }
    new = {k: v for k, v in old.items() if k != "dependentSchemas"}
    issues = [i for i in json_schema.check(old, new) if i.severity is Severity.ERROR]  # reader old, writer new
    assert [(i.path, i.rule) for i in issues] == [("$.card", "DEPENDENCY_SCHEMA_ADDED")]
    assert "'expiry'" in issues[0].what


@pytest.mark.parametrize(
    "document,expected",
    [
        (
            {"type": "record", "name": "P", "namespace": "com.shop", "aliases": ["O", "x.Y"], "fields": []},
            ["com.shop.O", "x.Y"],
        ),
        ({"type": "record", "name": "com.shop.P", "aliases": ["O"], "fields": []}, ["com.shop.O"]),
        ({"type": "record", "name": "P", "aliases": ["O"], "fields": []}, ["O"]),
    ],
)
def test_short_aliases_take_the_namespace_of_their_type(document, expected):
    assert avro_compat.qualify_aliases(document)["aliases"] == expected


def test_a_nested_type_inherits_the_enclosing_namespace_for_its_aliases():
    outer = {
        "type": "record",
        "name": "E",
        "namespace": "com.shop",
        "fields": [
            {"name": "a", "aliases": ["b"], "type": {"type": "record", "name": "L", "aliases": ["A"], "fields": []}}
        ],
    }
    field = avro_compat.qualify_aliases(outer)["fields"][0]
    assert field["type"]["aliases"] == ["com.shop.A"] and field["aliases"] == ["b"]  # field aliases stay names


def test_a_decimal_read_with_a_wider_precision_is_fine_and_a_narrower_one_is_not():
    def amount(precision: int) -> dict:
        return {
            "type": "record",
            "name": "E",
            "fields": [
                {
                    "name": "amount",
                    "type": {"type": "bytes", "logicalType": "decimal", "precision": precision, "scale": 2},
                }
            ],
        }

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
    writer = {
        "type": "record",
        "name": "E",
        "fields": [
            {"name": "at", "type": ["null", {"type": "long", "logicalType": "timestamp-millis"}], "default": None}
        ],
    }
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


def test_a_warning_is_agreement_when_confluent_accepts_and_a_disagreement_when_it_refuses():
    accepted = finding_for("ids", 2, 1, Issue("$", "FORMAT_CHANGED", "the reader expects a format", Severity.WARNING))
    assert (accepted.readers, accepted.confluent) == ("may break", ACCEPTS)
    assert "accepts it too" in accepted.message and "stricter" not in accepted.message
    refused = finding_for("ids", 2, 1, Issue("$", "X", "a change", Severity.WARNING, confluent=REFUSES))
    assert (refused.readers, refused.confluent) == ("may break", REFUSES)
    assert "will fail at deploy time" in refused.message and "too" not in refused.message


_S, _I = {"type": "string"}, {"type": "integer"}
_CLOSED = {"type": "object", "properties": {"a": {}}, "additionalProperties": False}


@pytest.mark.parametrize(
    "reader,writer,expected",
    [
        # a branch reads the value; only Confluent's enum-replaced-by-a-type rule objects
        ({"anyOf": [{"type": "string", "enum": ["a", "b"]}, _I]}, {"const": "a"}, [("$", "TYPE_CHANGED", False)]),
        # 'not' added: excludes only integers, the writer writes strings; or none of the writer's values
        ({"type": "string", "not": _I}, _S, [("$", "NOT_TYPE_EXTENDED", False)]),
        ({"not": {"const": ""}}, {"enum": ["a", "b"]}, [("$", "NOT_TYPE_EXTENDED", False)]),
        ({"type": "string", "not": {"const": ""}}, _S, [("$", "NOT_TYPE_EXTENDED", True)]),
        ({"not": {"const": "a"}}, {"enum": ["a", "b"]}, [("$", "NOT_TYPE_EXTENDED", True)]),
        # both 'not' exclude the same integers, written with another keyword
        (
            {"not": {"type": "integer", "exclusiveMinimum": 0}},
            {"not": {"type": "integer", "minimum": 1}},
            [("$", "NOT_TYPE_EXTENDED", False)],
        ),
        # a warning inside an additionalProperties / additionalItems schema stays a warning
        (
            {"type": "object", "additionalProperties": {"type": "string", "format": "email"}},
            {"type": "object", "additionalProperties": _S},
            [("$.*", "FORMAT_CHANGED", True)],
        ),
        (
            {"type": "array", "items": [_S], "additionalItems": {"type": "string", "format": "email"}},
            {"type": "array", "items": [_S], "additionalItems": _S},
            [("$[*]", "FORMAT_CHANGED", True)],
        ),
        # an equivalent integer bound inside a dependency schema or an additionalProperties schema covering a
        # dropped property: Confluent-only, not a break
        (
            {
                "type": "object",
                "dependencies": {"card": {"properties": {"n": {"type": "integer", "exclusiveMinimum": 0}}}},
            },
            {"type": "object", "dependencies": {"card": {"properties": {"n": {"type": "integer", "minimum": 1}}}}},
            [("$.n", "EXCLUSIVE_MINIMUM_ADDED", False)],
        ),
        (
            {"type": "object", "additionalProperties": {"type": "integer", "exclusiveMinimum": 0}},
            {
                "type": "object",
                "properties": {"n": {"type": "integer", "minimum": 1}},
                "additionalProperties": {"type": "integer", "exclusiveMinimum": 0},
            },
            [("$.n", "EXCLUSIVE_MINIMUM_ADDED", False)],
        ),
        # a fixed list of values where the writer had a type: fine where it lists every boolean (and null)
        ({"enum": [True, False]}, {"type": "boolean"}, [("$", "ENUM_ARRAY_NARROWED", False)]),
        (
            {"type": ["boolean", "null"], "enum": [True, False, None]},
            {"type": ["boolean", "null"]},
            [("$", "ENUM_ARRAY_NARROWED", False)],
        ),
        ({"enum": [True]}, {"type": "boolean"}, [("$", "ENUM_ARRAY_NARROWED", True)]),
        ({"enum": ["a"]}, _S, [("$", "ENUM_ARRAY_NARROWED", True)]),
        # uniqueItems added: arrays of at most one item cannot hold a duplicate
        (
            {"type": "array", "uniqueItems": True},
            {"type": "array", "maxItems": 1},
            [("$", "UNIQUE_ITEMS_ADDED", False)],
        ),
        ({"type": "array", "uniqueItems": True}, {"type": "array", "maxItems": 2}, [("$", "UNIQUE_ITEMS_ADDED", True)]),
        # a dependency on a property the writer's closed model never carries never applies
        ({**_CLOSED, "dependencies": {"card": ["a"]}}, _CLOSED, [("$.card", "DEPENDENCY_ARRAY_ADDED", False)]),
        (
            {**_CLOSED, "dependencies": {"card": {"required": ["a"]}}},
            _CLOSED,
            [("$.card", "DEPENDENCY_SCHEMA_ADDED", False)],
        ),
        (
            {**_CLOSED, "properties": {"a": {}, "card": {}}, "dependencies": {"card": ["a"]}},
            {**_CLOSED, "properties": {"a": {}, "card": {}}},
            [("$.card", "DEPENDENCY_ARRAY_ADDED", True)],
        ),
    ],
)
def test_readers_break_only_where_a_value_is_rejected(reader, writer, expected):
    issues = json_schema.check(reader, writer)
    assert [(i.path, i.rule, i.readers_break) for i in issues] == expected


_STRINGS = {"type": "array", "items": _S}


@pytest.mark.parametrize(
    "reader,writer,expected",
    [
        ({**_STRINGS, "contains": _S}, {**_STRINGS, "minItems": 1}, []),  # every item matches, and there is one
        ({**_STRINGS, "contains": _S}, _STRINGS, [("CONTAINS_ADDED", True)]),  # the writer may write []
        ({**_STRINGS, "contains": {"const": "main"}}, {**_STRINGS, "minItems": 3}, [("CONTAINS_ADDED", True)]),
        (
            {"type": "array", "prefixItems": [_I], "items": _S, "contains": _S},
            {"type": "array", "prefixItems": [_I], "items": _S, "minItems": 2},
            [("CONTAINS_ADDED", True)],
        ),  # the first item is an integer
        # two matching items needed: minItems 2 meets it; Confluent still refuses a minContains added
        ({**_STRINGS, "contains": _S, "minContains": 2}, {**_STRINGS, "minItems": 2}, [("MIN_CONTAINS_ADDED", False)]),
        ({**_STRINGS, "contains": _S, "minContains": 2}, {**_STRINGS, "minItems": 1}, [("CONTAINS_ADDED", True)]),
    ],
)
def test_contains_holds_where_every_written_item_matches_and_min_items_suffice(reader, writer, expected):
    assert [(i.rule, i.readers_break) for i in json_schema.check(reader, writer)] == expected
