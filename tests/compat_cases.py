"""The compatibility table: schema evolutions with the verdict we expect in each mode.

Each case is a chain of versions (oldest first); the verdict says whether registering the *last* version is
accepted under a mode. Two-version cases list BACKWARD and FORWARD; FULL is both, and the *_TRANSITIVE
modes equal their plain forms with only two versions. Three-version chains list every mode explicitly.
``rule`` names the finding we expect in the failing direction, so the reason is pinned too.

Used by tests/unit/test_compat_table.py (our verdicts) and tests/integration/test_compat_registry.py
(the real registry's verdicts, disagreements recorded).
"""

# ruff: noqa: E501, E741  -- a table reads best with one case per line and short schema names (S, I, N)

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from toolkit.layout import Compatibility as M
from toolkit.layout import SchemaFormat

AVRO, JSON = SchemaFormat.AVRO, SchemaFormat.JSON


@dataclass(frozen=True)
class Case:
    id: str
    format: SchemaFormat
    versions: tuple[Any, ...]
    expected: dict[M, bool]
    rules: tuple[str, ...] = ()  # rule ids expected among the findings of the failing direction(s)
    note: str = ""
    chain: bool = field(default=False)
    registry: bool = True  # False: Apicurio 3.0.9 cannot register it (draft 2020-12), so only our verdict is tested


# Apicurio 3.0.9 parses JSON Schemas without "$schema" as draft-04 and rejects draft 2020-12 ("could not
# determine version"), so the table states draft-07, which both sides read the same way.
DRAFT_07 = "http://json-schema.org/draft-07/schema#"


def _declared_draft(fmt: SchemaFormat, version: Any) -> Any:
    if fmt is SchemaFormat.JSON and isinstance(version, dict) and "$schema" not in version:
        return {"$schema": DRAFT_07, **version}
    return version


def pair(id: str, fmt: SchemaFormat, old: Any, new: Any, *, backward: bool, forward: bool,
         rules: tuple[str, ...] = (), note: str = "", registry: bool = True) -> Case:
    old, new = _declared_draft(fmt, old), _declared_draft(fmt, new)
    expected = {M.BACKWARD: backward, M.FORWARD: forward, M.FULL: backward and forward,
                M.BACKWARD_TRANSITIVE: backward, M.FORWARD_TRANSITIVE: forward,
                M.FULL_TRANSITIVE: backward and forward, M.NONE: True}
    return Case(id, fmt, (old, new), expected, rules, note, registry=registry)


def chain(id: str, fmt: SchemaFormat, versions: tuple[Any, ...], *, b: bool, bt: bool, f: bool, ft: bool,
          rules: tuple[str, ...] = (), note: str = "") -> Case:
    versions = tuple(_declared_draft(fmt, v) for v in versions)
    expected = {M.BACKWARD: b, M.BACKWARD_TRANSITIVE: bt, M.FORWARD: f, M.FORWARD_TRANSITIVE: ft,
                M.FULL: b and f, M.FULL_TRANSITIVE: bt and ft, M.NONE: True}
    return Case(id, fmt, versions, expected, rules, note, chain=True)


# --- Avro -------------------------------------------------------------------------------------------------


def rec(*fields: dict, name: str = "Event", **extra: Any) -> dict:
    return {"type": "record", "name": name, "fields": list(fields), **extra}


def f(name: str, type_: Any, **extra: Any) -> dict:
    return {"name": name, "type": type_, **extra}


def enum(symbols: list[str], name: str = "Status", **extra: Any) -> dict:
    return {"type": "enum", "name": name, "symbols": symbols, **extra}


ID = f("id", "string")
ADDRESS = rec(f("city", "string"), name="Address")
ADDRESS_ZIP = rec(f("city", "string"), f("zip", "string"), name="Address")
ADDRESS_ZIP_DEFAULT = rec(f("city", "string"), f("zip", "string", default=""), name="Address")
ADDRESS_CITY_INT = rec(f("city", "int"), name="Address")

AVRO_CASES = [
    pair("avro-add-field-no-default", AVRO, rec(ID), rec(ID, f("email", "string")), backward=False, forward=True,
         rules=("READER_FIELD_MISSING_DEFAULT_VALUE",), note="trap: a new field without a default"),
    pair("avro-add-field-with-default", AVRO, rec(ID), rec(ID, f("email", "string", default="")),
         backward=True, forward=True),
    pair("avro-add-nullable-field-default-null", AVRO, rec(ID), rec(ID, f("email", ["null", "string"], default=None)),
         backward=True, forward=True),
    pair("avro-remove-field-no-default", AVRO, rec(ID, f("email", "string")), rec(ID), backward=True, forward=False,
         rules=("READER_FIELD_MISSING_DEFAULT_VALUE",), note="trap: a removed required field"),
    pair("avro-remove-field-with-default", AVRO, rec(ID, f("email", "string", default="")), rec(ID),
         backward=True, forward=True),
    pair("avro-int-to-long", AVRO, rec(f("n", "int")), rec(f("n", "long")), backward=True, forward=False,
         rules=("TYPE_MISMATCH",), note="trap: int->long promotes, long->int does not"),
    pair("avro-long-to-int", AVRO, rec(f("n", "long")), rec(f("n", "int")), backward=False, forward=True,
         rules=("TYPE_MISMATCH",)),
    pair("avro-int-to-float", AVRO, rec(f("n", "int")), rec(f("n", "float")), backward=True, forward=False,
         rules=("TYPE_MISMATCH",)),
    pair("avro-long-to-double", AVRO, rec(f("n", "long")), rec(f("n", "double")), backward=True, forward=False,
         rules=("TYPE_MISMATCH",)),
    pair("avro-double-to-float", AVRO, rec(f("n", "double")), rec(f("n", "float")), backward=False, forward=True,
         rules=("TYPE_MISMATCH",)),
    pair("avro-string-to-bytes", AVRO, rec(f("s", "string")), rec(f("s", "bytes")), backward=True, forward=True,
         note="trap: string<->bytes promote both ways"),
    pair("avro-bytes-to-string", AVRO, rec(f("s", "bytes")), rec(f("s", "string")), backward=True, forward=True),
    pair("avro-string-to-int", AVRO, rec(f("s", "string")), rec(f("s", "int")), backward=False, forward=False,
         rules=("TYPE_MISMATCH",)),
    pair("avro-enum-symbol-added", AVRO, rec(f("st", enum(["NEW", "DONE"]))), rec(f("st", enum(["NEW", "DONE", "LOST"]))),
         backward=True, forward=False, rules=("MISSING_ENUM_SYMBOLS",)),
    pair("avro-enum-symbol-removed", AVRO, rec(f("st", enum(["NEW", "DONE", "LOST"]))), rec(f("st", enum(["NEW", "DONE"]))),
         backward=False, forward=True, rules=("MISSING_ENUM_SYMBOLS",), note="trap: an enum symbol removed"),
    pair("avro-enum-symbol-removed-with-default", AVRO, rec(f("st", enum(["NEW", "DONE", "LOST"]))),
         rec(f("st", enum(["NEW", "DONE"], default="NEW"))), backward=True, forward=True,
         note="the new reader maps the unknown symbol to its default"),
    pair("avro-enum-symbol-added-old-has-default", AVRO, rec(f("st", enum(["NEW", "DONE"], default="NEW"))),
         rec(f("st", enum(["NEW", "DONE", "LOST"], default="NEW"))), backward=True, forward=True),
    pair("avro-enum-renamed", AVRO, rec(f("st", enum(["NEW"]))), rec(f("st", enum(["NEW"], name="State"))),
         backward=False, forward=False, rules=("NAME_MISMATCH",)),
    pair("avro-union-branch-removed", AVRO, rec(f("v", ["null", "string", "int"])), rec(f("v", ["null", "string"])),
         backward=False, forward=True, rules=("MISSING_UNION_BRANCH",), note="trap: a union branch removed"),
    pair("avro-union-branch-added", AVRO, rec(f("v", ["null", "string"])), rec(f("v", ["null", "string", "int"])),
         backward=True, forward=False, rules=("MISSING_UNION_BRANCH",)),
    pair("avro-plain-to-nullable", AVRO, rec(f("v", "string")), rec(f("v", ["null", "string"], default=None)),
         backward=True, forward=False, rules=("TYPE_MISMATCH",)),
    pair("avro-nullable-to-plain", AVRO, rec(f("v", ["null", "string"], default=None)), rec(f("v", "string")),
         backward=False, forward=True, rules=("TYPE_MISMATCH",)),
    pair("avro-nested-field-no-default", AVRO, rec(f("addr", ADDRESS)), rec(f("addr", ADDRESS_ZIP)),
         backward=False, forward=True, rules=("READER_FIELD_MISSING_DEFAULT_VALUE",), note="nested records"),
    pair("avro-nested-field-with-default", AVRO, rec(f("addr", ADDRESS)), rec(f("addr", ADDRESS_ZIP_DEFAULT)),
         backward=True, forward=True),
    pair("avro-nested-type-changed", AVRO, rec(f("addr", ADDRESS)), rec(f("addr", ADDRESS_CITY_INT)),
         backward=False, forward=False, rules=("TYPE_MISMATCH",)),
    pair("avro-nullable-record-field-added", AVRO, rec(f("addr", ["null", ADDRESS], default=None)),
         rec(f("addr", ["null", ADDRESS_ZIP], default=None)), backward=False, forward=True,
         rules=("READER_FIELD_MISSING_DEFAULT_VALUE",)),
    pair("avro-array-items-int-to-long", AVRO, rec(f("xs", {"type": "array", "items": "int"})),
         rec(f("xs", {"type": "array", "items": "long"})), backward=True, forward=False, rules=("TYPE_MISMATCH",)),
    pair("avro-array-of-records-field-added", AVRO, rec(f("xs", {"type": "array", "items": ADDRESS})),
         rec(f("xs", {"type": "array", "items": ADDRESS_ZIP})), backward=False, forward=True,
         rules=("READER_FIELD_MISSING_DEFAULT_VALUE",)),
    pair("avro-array-to-map", AVRO, rec(f("xs", {"type": "array", "items": "string"})),
         rec(f("xs", {"type": "map", "values": "string"})), backward=False, forward=False, rules=("TYPE_MISMATCH",)),
    pair("avro-map-values-int-to-long", AVRO, rec(f("m", {"type": "map", "values": "int"})),
         rec(f("m", {"type": "map", "values": "long"})), backward=True, forward=False, rules=("TYPE_MISMATCH",)),
    pair("avro-map-values-int-to-string", AVRO, rec(f("m", {"type": "map", "values": "int"})),
         rec(f("m", {"type": "map", "values": "string"})), backward=False, forward=False, rules=("TYPE_MISMATCH",)),
    pair("avro-fixed-size-changed", AVRO, rec(f("h", {"type": "fixed", "name": "Hash", "size": 16})),
         rec(f("h", {"type": "fixed", "name": "Hash", "size": 32})), backward=False, forward=False,
         rules=("FIXED_SIZE_MISMATCH",)),
    pair("avro-record-renamed", AVRO, rec(ID, name="Order"), rec(ID, name="Purchase"), backward=False, forward=False,
         rules=("NAME_MISMATCH",)),
    pair("avro-record-renamed-with-alias", AVRO, rec(ID, name="Order"), rec(ID, name="Purchase", aliases=["Order"]),
         backward=True, forward=False, rules=("NAME_MISMATCH",), note="aliases: the new reader knows the "
                                                                      "old name"),
    pair("avro-field-renamed-with-alias", AVRO, rec(f("mail", "string")), rec(f("email", "string", aliases=["mail"])),
         backward=True, forward=False, rules=("READER_FIELD_MISSING_DEFAULT_VALUE",)),
    pair("avro-field-renamed-no-alias", AVRO, rec(f("mail", "string")), rec(f("email", "string")),
         backward=False, forward=False, rules=("READER_FIELD_MISSING_DEFAULT_VALUE",)),
    pair("avro-namespace-changed", AVRO, rec(ID, namespace="com.a"), rec(ID, namespace="com.b"),
         backward=True, forward=True, note="Avro's checker compares unqualified names"),
    pair("avro-doc-only", AVRO, rec(ID), rec(ID, doc="An event."), backward=True, forward=True),
    pair("avro-renamed-with-short-alias-in-namespace", AVRO, rec(ID, name="Order", namespace="com.shop"),
         rec(ID, name="Purchase", namespace="com.shop", aliases=["Order"]), backward=True, forward=False,
         rules=("NAME_MISMATCH",), note="a short alias is relative to the type's namespace (Avro Java); "
                                        "avro 1.12's Python checker compared it as written"),
    pair("avro-short-alias-other-namespace", AVRO, rec(ID, name="Order", namespace="com.legacy"),
         rec(ID, name="Purchase", namespace="com.shop", aliases=["Order"]), backward=False, forward=False,
         rules=("NAME_MISMATCH",), note="the short alias means com.shop.Order, not com.legacy.Order"),
    pair("avro-nested-short-alias-inherits-namespace", AVRO,
         rec(f("addr", rec(f("city", "string"), name="Address")), namespace="com.shop"),
         rec(f("addr", rec(f("city", "string"), name="Location", aliases=["Address"])), namespace="com.shop"),
         backward=True, forward=False, rules=("NAME_MISMATCH",),
         note="a nested type's short alias takes the enclosing namespace"),
    pair("avro-union-reordered", AVRO, rec(f("v", ["null", "string"], default=None)),
         rec(f("v", ["string", "null"], default="")), backward=True, forward=True),
    pair("avro-decimal-precision-changed", AVRO,
         rec(f("amount", {"type": "bytes", "logicalType": "decimal", "precision": 10, "scale": 2})),
         rec(f("amount", {"type": "bytes", "logicalType": "decimal", "precision": 12, "scale": 2})),
         backward=True, forward=False, rules=("DECIMAL_PRECISION_NARROWED",),
         note="old readers' precision 10 cannot hold the new 12-digit values; Avro's checker (and Confluent) ignore logical types"),
    pair("avro-decimal-scale-changed", AVRO,
         rec(f("amount", {"type": "bytes", "logicalType": "decimal", "precision": 10, "scale": 2})),
         rec(f("amount", {"type": "bytes", "logicalType": "decimal", "precision": 10, "scale": 3})),
         backward=False, forward=False, rules=("DECIMAL_SCALE_CHANGED",),
         note="the same unscaled bytes read 10 times smaller or larger; Confluent accepts"),
    pair("avro-timestamp-millis-to-micros", AVRO, rec(f("at", {"type": "long", "logicalType": "timestamp-millis"})),
         rec(f("at", {"type": "long", "logicalType": "timestamp-micros"})), backward=False, forward=False,
         rules=("LOGICAL_TYPE_CHANGED",), note="off by a factor of 1000; Confluent accepts"),
    pair("avro-local-timestamp-millis-to-micros", AVRO,
         rec(f("at", {"type": "long", "logicalType": "local-timestamp-millis"})),
         rec(f("at", {"type": "long", "logicalType": "local-timestamp-micros"})), backward=False, forward=False,
         rules=("LOGICAL_TYPE_CHANGED",), note="avro 1.12 (Python) does not know local-timestamp-*; the attribute is compared"),
    pair("avro-time-millis-to-micros", AVRO, rec(f("t", {"type": "int", "logicalType": "time-millis"})),
         rec(f("t", {"type": "long", "logicalType": "time-micros"})), backward=False, forward=False,
         rules=("LOGICAL_TYPE_CHANGED", "TYPE_MISMATCH"), note="int->long promotes, but millis are read as micros"),
    pair("avro-date-to-timestamp-millis", AVRO, rec(f("d", {"type": "int", "logicalType": "date"})),
         rec(f("d", {"type": "long", "logicalType": "timestamp-millis"})), backward=False, forward=False,
         rules=("LOGICAL_TYPE_CHANGED", "TYPE_MISMATCH"), note="days since the epoch read as milliseconds"),
    pair("avro-string-to-uuid", AVRO, rec(f("id", "string")), rec(f("id", {"type": "string", "logicalType": "uuid"})),
         backward=False, forward=False, rules=("LOGICAL_TYPE_CHANGED",),
         note="a uuid reader may get any string; Confluent accepts"),
    pair("avro-logical-type-in-nullable-union", AVRO,
         rec(f("at", ["null", {"type": "long", "logicalType": "timestamp-millis"}], default=None)),
         rec(f("at", ["null", {"type": "long", "logicalType": "timestamp-micros"}], default=None)),
         backward=False, forward=False, rules=("LOGICAL_TYPE_CHANGED",), note="found inside a union branch"),
    chain("avro-chain-default-then-required", AVRO,
          (rec(ID), rec(ID, f("b", "int", default=0)), rec(ID, f("b", "int"))), b=True, bt=False, f=True, ft=True,
          rules=("READER_FIELD_MISSING_DEFAULT_VALUE",),
          note="v3 reads v2 (which has b) but not v1 (which has none)"),
    chain("avro-chain-drop-default-field", AVRO,
          (rec(ID, f("b", "int")), rec(ID, f("b", "int", default=0)), rec(ID)), b=True, bt=True, f=True, ft=False,
          rules=("READER_FIELD_MISSING_DEFAULT_VALUE",),
          note="v2 gave b a default so v2 readers cope with v3, but v1 readers do not"),
    chain("avro-chain-int-long-double", AVRO,
          (rec(f("n", "int")), rec(f("n", "long")), rec(f("n", "double"))), b=True, bt=True, f=False, ft=False,
          rules=("TYPE_MISMATCH",)),
    chain("avro-chain-enum-grows", AVRO,
          (rec(f("st", enum(["A"]))), rec(f("st", enum(["A", "B"]))), rec(f("st", enum(["A", "B", "C"])))),
          b=True, bt=True, f=False, ft=False, rules=("MISSING_ENUM_SYMBOLS",)),
]

# --- JSON Schema ------------------------------------------------------------------------------------------


def obj(props: dict, required: tuple[str, ...] = (), closed: bool | None = True, **extra: Any) -> dict:
    schema: dict[str, Any] = {"type": "object", "properties": props, **extra}
    if required:
        schema["required"] = list(required)
    if closed is not None:
        schema["additionalProperties"] = not closed
    return schema


S, I, N = {"type": "string"}, {"type": "integer"}, {"type": "number"}

JSON_CASES = [
    pair("json-optional-added-closed", JSON, obj({"id": S}, ("id",)), obj({"id": S, "email": S}, ("id",)),
         backward=True, forward=False, rules=("PROPERTY_REMOVED_FROM_CLOSED_CONTENT_MODEL",)),
    pair("json-optional-added-open", JSON, obj({"id": S}, ("id",), closed=None), obj({"id": S, "email": S}, ("id",), closed=None),
         backward=False, forward=True, rules=("PROPERTY_ADDED_TO_OPEN_CONTENT_MODEL",),
         note="Confluent: an open writer may already carry 'email' with any value"),
    pair("json-required-added-closed", JSON, obj({"id": S}, ("id",)), obj({"id": S, "email": S}, ("id", "email")),
         backward=False, forward=False,
         rules=("REQUIRED_PROPERTY_ADDED_TO_UNOPEN_CONTENT_MODEL", "PROPERTY_REMOVED_FROM_CLOSED_CONTENT_MODEL"),
         note="trap: a new required property"),
    pair("json-required-with-default-added-closed", JSON, obj({"id": S}, ("id",)),
         obj({"id": S, "email": {"type": "string", "default": ""}}, ("id", "email")), backward=True, forward=False,
         rules=("PROPERTY_REMOVED_FROM_CLOSED_CONTENT_MODEL",), note="Confluent accepts a default; we warn"),
    pair("json-required-removed-closed", JSON, obj({"id": S, "email": S}, ("id", "email")), obj({"id": S}, ("id",)),
         backward=False, forward=False,
         rules=("PROPERTY_REMOVED_FROM_CLOSED_CONTENT_MODEL", "REQUIRED_PROPERTY_ADDED_TO_UNOPEN_CONTENT_MODEL"),
         note="trap: a removed required property"),
    pair("json-required-removed-open", JSON, obj({"id": S, "email": S}, ("id", "email"), closed=None),
         obj({"id": S}, ("id",), closed=None), backward=True, forward=False, rules=("REQUIRED_ATTRIBUTE_ADDED",)),
    pair("json-required-made-optional", JSON, obj({"id": S, "email": S}, ("id", "email")),
         obj({"id": S, "email": S}, ("id",)), backward=True, forward=False, rules=("REQUIRED_ATTRIBUTE_ADDED",)),
    pair("json-optional-made-required", JSON, obj({"id": S, "email": S}, ("id",)),
         obj({"id": S, "email": S}, ("id", "email")), backward=False, forward=True, rules=("REQUIRED_ATTRIBUTE_ADDED",)),
    pair("json-additional-false-to-true", JSON, obj({"id": S}, ("id",), closed=True), obj({"id": S}, ("id",), closed=False),
         backward=True, forward=False, rules=("ADDITIONAL_PROPERTIES_REMOVED",),
         note="trap: opening the content model"),
    pair("json-additional-true-to-false", JSON, obj({"id": S}, ("id",), closed=False), obj({"id": S}, ("id",), closed=True),
         backward=False, forward=True, rules=("ADDITIONAL_PROPERTIES_REMOVED",)),
    pair("json-integer-to-number", JSON, obj({"n": I}), obj({"n": N}), backward=True, forward=False,
         rules=("TYPE_NARROWED",)),
    pair("json-number-to-integer", JSON, obj({"n": N}), obj({"n": I}), backward=False, forward=True,
         rules=("TYPE_NARROWED",), note="trap: a narrower type"),
    pair("json-string-to-integer", JSON, obj({"n": S}), obj({"n": I}), backward=False, forward=False,
         rules=("TYPE_CHANGED",)),
    pair("json-nullable-to-plain", JSON, obj({"s": {"type": ["string", "null"]}}), obj({"s": S}),
         backward=False, forward=True, rules=("TYPE_NARROWED",)),
    pair("json-enum-value-added", JSON, obj({"st": {"enum": ["NEW", "DONE"]}}), obj({"st": {"enum": ["NEW", "DONE", "LOST"]}}),
         backward=True, forward=False, rules=("ENUM_ARRAY_NARROWED",)),
    pair("json-enum-value-removed", JSON, obj({"st": {"enum": ["NEW", "DONE", "LOST"]}}), obj({"st": {"enum": ["NEW", "DONE"]}}),
         backward=False, forward=True, rules=("ENUM_ARRAY_NARROWED",)),
    pair("json-const-changed", JSON, obj({"kind": {"const": "card"}}), obj({"kind": {"const": "invoice"}}),
         backward=False, forward=False, rules=("ENUM_ARRAY_NARROWED",)),
    pair("json-max-length-decreased", JSON, obj({"s": {"type": "string", "maxLength": 20}}),
         obj({"s": {"type": "string", "maxLength": 10}}), backward=False, forward=True, rules=("MAX_LENGTH_DECREASED",)),
    pair("json-max-length-increased", JSON, obj({"s": {"type": "string", "maxLength": 10}}),
         obj({"s": {"type": "string", "maxLength": 20}}), backward=True, forward=False, rules=("MAX_LENGTH_DECREASED",)),
    pair("json-min-length-added", JSON, obj({"s": S}), obj({"s": {"type": "string", "minLength": 1}}),
         backward=False, forward=True, rules=("MIN_LENGTH_ADDED",)),
    pair("json-pattern-added", JSON, obj({"s": S}), obj({"s": {"type": "string", "pattern": "^[A-Z]+$"}}),
         backward=False, forward=True, rules=("PATTERN_ADDED",)),
    pair("json-minimum-increased", JSON, obj({"n": {"type": "integer", "minimum": 0}}),
         obj({"n": {"type": "integer", "minimum": 1}}), backward=False, forward=True, rules=("MINIMUM_INCREASED",)),
    pair("json-maximum-removed", JSON, obj({"n": {"type": "number", "maximum": 100}}), obj({"n": N}),
         backward=True, forward=False, rules=("MAXIMUM_ADDED",)),
    pair("json-exclusive-minimum-added", JSON, obj({"n": N}), obj({"n": {"type": "number", "exclusiveMinimum": 0}}),
         backward=False, forward=True, rules=("EXCLUSIVE_MINIMUM_ADDED",)),
    pair("json-multiple-of-added", JSON, obj({"n": I}), obj({"n": {"type": "integer", "multipleOf": 5}}),
         backward=False, forward=True, rules=("MULTIPLE_OF_ADDED",)),
    pair("json-min-items-increased", JSON, obj({"xs": {"type": "array", "items": S, "minItems": 0}}),
         obj({"xs": {"type": "array", "items": S, "minItems": 1}}), backward=False, forward=True,
         rules=("MIN_ITEMS_INCREASED",)),
    pair("json-max-items-increased", JSON, obj({"xs": {"type": "array", "items": S, "maxItems": 5}}),
         obj({"xs": {"type": "array", "items": S, "maxItems": 50}}), backward=True, forward=False,
         rules=("MAX_ITEMS_DECREASED",)),
    pair("json-unique-items-added", JSON, obj({"xs": {"type": "array", "items": S}}),
         obj({"xs": {"type": "array", "items": S, "uniqueItems": True}}), backward=False, forward=True,
         rules=("UNIQUE_ITEMS_ADDED",)),
    pair("json-items-narrowed", JSON, obj({"xs": {"type": "array", "items": N}}), obj({"xs": {"type": "array", "items": I}}),
         backward=False, forward=True, rules=("TYPE_NARROWED",)),
    pair("json-items-object-optional-added", JSON, obj({"xs": {"type": "array", "items": obj({"sku": S}, ("sku",))}}),
         obj({"xs": {"type": "array", "items": obj({"sku": S, "qty": I}, ("sku",))}}), backward=True, forward=False,
         rules=("PROPERTY_REMOVED_FROM_CLOSED_CONTENT_MODEL",)),
    pair("json-nested-widened", JSON, obj({"c": obj({"age": I}, ("age",))}), obj({"c": obj({"age": N}, ("age",))}),
         backward=True, forward=False, rules=("TYPE_NARROWED",)),
    pair("json-nested-required-added", JSON, obj({"c": obj({"age": I})}), obj({"c": obj({"age": I}, ("age",))}),
         backward=False, forward=True, rules=("REQUIRED_ATTRIBUTE_ADDED",)),
    pair("json-oneof-branch-added", JSON, obj({"p": {"oneOf": [S, I]}}), obj({"p": {"oneOf": [S, I, {"type": "boolean"}]}}),
         backward=True, forward=False, rules=("SUM_TYPE_NARROWED",)),
    pair("json-anyof-branch-removed", JSON, obj({"p": {"anyOf": [S, {"type": "null"}]}}), obj({"p": {"anyOf": [S]}}),
         backward=False, forward=True, rules=("SUM_TYPE_NARROWED",)),
    pair("json-allof-conjunct-added", JSON, obj({"s": {"allOf": [S]}}), obj({"s": {"allOf": [S, {"maxLength": 10}]}}),
         backward=False, forward=True, rules=("MAX_LENGTH_ADDED",)),
    pair("json-ref-enum-extended", JSON,
         obj({"st": {"$ref": "#/$defs/St"}}, **{"$defs": {"St": {"type": "string", "enum": ["A", "B"]}}}),
         obj({"st": {"$ref": "#/$defs/St"}}, **{"$defs": {"St": {"type": "string", "enum": ["A", "B", "C"]}}}),
         backward=True, forward=False, rules=("ENUM_ARRAY_NARROWED",)),
    pair("json-ref-target-stricter", JSON,
         obj({"q": {"$ref": "#/$defs/Qty"}}, **{"$defs": {"Qty": {"type": "integer"}}}),
         obj({"q": {"$ref": "#/$defs/Qty"}}, **{"$defs": {"Qty": {"type": "integer", "minimum": 1}}}),
         backward=False, forward=True, rules=("MINIMUM_ADDED",)),
    pair("json-description-only", JSON, obj({"id": S}), obj({"id": {"type": "string", "description": "The id."}},
                                                            description="An event."),
         backward=True, forward=True),
    pair("json-open-type-changed", JSON, obj({"v": S}, closed=None), obj({"v": {"type": "boolean"}}, closed=None),
         backward=False, forward=False, rules=("TYPE_CHANGED",)),
    pair("json-partially-open-property-added", JSON, obj({"id": S}, closed=None, additionalProperties=S),
         obj({"id": S, "note": S}, closed=None, additionalProperties=S), backward=True, forward=True,
         note="the new property is covered by the partially open content model"),
    pair("json-oneof-to-anyof", JSON, obj({"p": {"oneOf": [S, I]}}), obj({"p": {"anyOf": [S, I]}}),
         backward=True, forward=False, rules=("COMBINED_TYPE_CHANGED",),
         note="FORWARD: no value is both a string and an integer, so old readers' oneOf reads every value of the new anyOf; Confluent refuses the changed combinator (COMBINED_TYPE_CHANGED)"),
    pair("json-typeless-to-typed", JSON, obj({"v": {}}), obj({"v": S}), backward=False, forward=True,
         rules=("TYPE_NARROWED",)),
    pair("json-integer-exclusive-bound-equivalent", JSON, obj({"n": {"type": "integer", "minimum": 1}}),
         obj({"n": {"type": "integer", "exclusiveMinimum": 0}}), backward=False, forward=False,
         rules=("EXCLUSIVE_MINIMUM_ADDED", "MINIMUM_ADDED"),
         note="on integers, > 0 and >= 1 are the same set, so readers cope; Confluent compares keyword by keyword (NumberSchemaDiff) and refuses both ways; Apicurio folds the bounds and accepts BACKWARD"),
    chain("json-chain-max-length-grows", JSON,
          tuple(obj({"s": {"type": "string", "maxLength": n}}) for n in (10, 20, 30)), b=True, bt=True, f=False, ft=False,
          rules=("MAX_LENGTH_DECREASED",)),
    chain("json-chain-optional-added-then-removed", JSON,
          (obj({"id": S}), obj({"id": S, "note": S}), obj({"id": S}, title="Event")), b=False, bt=False, f=True,
          ft=True,
          rules=("PROPERTY_REMOVED_FROM_CLOSED_CONTENT_MODEL",)),
    chain("json-chain-enum-grows", JSON,
          tuple(obj({"st": {"enum": values}}) for values in (["A"], ["A", "B"], ["A", "B", "C"])),
          b=True, bt=True, f=False, ft=False, rules=("ENUM_ARRAY_NARROWED",)),
]

# --- The JSON Schema keyword audit (docs/schema-checks.md, "Keyword audit"): one case per row -----------------
# Each old -> new pair gives BACKWARD (new reads old) and FORWARD (old reads new, Confluent's check with the
# roles swapped); FULL is both. Rows already covered above are named in the doc's table.

DRAFT_2020 = "https://json-schema.org/draft/2020-12/schema"


def d2020(schema: dict) -> dict:
    return {"$schema": DRAFT_2020, **schema}


ARR_S = {"type": "array", "items": S}
CARD = obj({"kind": S, "card": S, "expiry": S}, closed=None)
IS_CARD = {"properties": {"kind": {"const": "card"}}, "required": ["kind"]}

AUDIT_CASES = [
    pair("audit-const-removed", JSON, obj({"kind": {"const": "card"}}), obj({"kind": S}), backward=False, forward=False,
         rules=("TYPE_CHANGED", "ENUM_ARRAY_NARROWED"),
         note="BACKWARD: readers cope, but Confluent reads const -> string as TYPE_CHANGED"),
    pair("audit-enum-to-typed-enum", JSON, obj({"st": {"enum": ["A", "B"]}}), obj({"st": {"type": "string", "enum": ["A", "B", "C"]}}),
         backward=False, forward=False, rules=("TYPE_CHANGED", "ENUM_ARRAY_NARROWED"),
         note="BACKWARD: readers cope, but Confluent reads a plain enum -> type + enum as TYPE_CHANGED"),
    pair("audit-additional-properties-schema-added", JSON, obj({"id": S}, closed=None),
         obj({"id": S}, closed=None, additionalProperties=S), backward=False, forward=True,
         rules=("ADDITIONAL_PROPERTIES_NARROWED",)),
    pair("audit-pattern-properties-added", JSON, obj({"id": S}, closed=None),
         obj({"id": S}, closed=None, patternProperties={"^x_": S}), backward=False, forward=True,
         rules=("PATTERN_PROPERTIES_NARROWED",),
         note="an open writer may carry x_... with any value; Confluent never compares patternProperties and accepts"),
    pair("audit-pattern-properties-model-property-added", JSON, obj({"id": S}, closed=None, patternProperties={"^x_": S}),
         obj({"id": S, "note": S}, closed=None, patternProperties={"^x_": S}), backward=False, forward=False,
         rules=("PROPERTY_ADDED_TO_OPEN_CONTENT_MODEL", "PROPERTY_REMOVED_FROM_CLOSED_CONTENT_MODEL"),
         note="we treat patternProperties as open for other names (Confluent accepts BACKWARD); Confluent's isOpenContentModel treats it as closed and refuses FORWARD, where readers cope; Apicurio accepts FORWARD"),
    pair("audit-property-names-added", JSON, obj({"id": S}, closed=None),
         obj({"id": S}, closed=None, propertyNames={"pattern": "^[a-z]+$"}), backward=False, forward=True,
         rules=("PROPERTY_NAMES_NARROWED",), note="Confluent does not compare propertyNames and accepts"),
    pair("audit-max-properties-added", JSON, obj({"id": S}, closed=None), obj({"id": S}, closed=None, maxProperties=5),
         backward=False, forward=True, rules=("MAX_PROPERTIES_ADDED",)),
    pair("audit-min-properties-increased", JSON, obj({"id": S}, minProperties=0), obj({"id": S}, minProperties=1),
         backward=False, forward=True, rules=("MIN_PROPERTIES_INCREASED",)),
    pair("audit-tuple-item-added-open", JSON, obj({"t": {"type": "array", "items": [S]}}),
         obj({"t": {"type": "array", "items": [S, I]}}), backward=False, forward=True, rules=("TYPE_NARROWED",)),
    pair("audit-additional-items-opened", JSON, obj({"t": {"type": "array", "items": [S], "additionalItems": False}}),
         obj({"t": {"type": "array", "items": [S]}}), backward=True, forward=False,
         rules=("ADDITIONAL_ITEMS_REMOVED",)),
    pair("audit-contains-added", JSON, obj({"xs": ARR_S}), obj({"xs": {**ARR_S, "contains": {"const": "main"}}}),
         backward=False, forward=True, rules=("CONTAINS_ADDED",),
         note="Confluent compares minContains/maxContains, never the contains schema: it accepts"),
    pair("audit-contains-added-already-met", JSON, obj({"xs": {**ARR_S, "minItems": 1}}),
         obj({"xs": {**ARR_S, "minItems": 1, "contains": S}}), backward=True, forward=True,
         note="every old item is a string and there is at least one, so the new 'contains' holds; Confluent does not compare contains and accepts; Apicurio refuses any contains added"),
    pair("audit-min-contains-increased", JSON, d2020(obj({"xs": {**ARR_S, "contains": S, "minContains": 1}})),
         d2020(obj({"xs": {**ARR_S, "contains": S, "minContains": 2}})), backward=False, forward=True,
         rules=("MIN_CONTAINS_INCREASED",), registry=False),
    pair("audit-max-contains-added", JSON, d2020(obj({"xs": {**ARR_S, "contains": S}})),
         d2020(obj({"xs": {**ARR_S, "contains": S, "maxContains": 3}})), backward=False, forward=True,
         rules=("MAX_CONTAINS_ADDED",), registry=False),
    pair("audit-format-added", JSON, obj({"mail": S}), obj({"mail": {"type": "string", "format": "email"}}),
         backward=True, forward=True, note="a warning: format is an annotation unless a validator asserts it; Confluent's StringSchemaDiff does not compare format and accepts; Apicurio refuses"),
    pair("audit-multiple-of-expanded", JSON, obj({"n": {"type": "integer", "multipleOf": 2}}),
         obj({"n": {"type": "integer", "multipleOf": 4}}), backward=False, forward=True, rules=("MULTIPLE_OF_CHANGED",)),
    pair("audit-exclusive-maximum-decreased", JSON, obj({"n": {"type": "number", "exclusiveMaximum": 10}}),
         obj({"n": {"type": "number", "exclusiveMaximum": 5}}), backward=False, forward=True,
         rules=("EXCLUSIVE_MAXIMUM_DECREASED",)),
    pair("audit-anyof-to-oneof", JSON, obj({"p": {"anyOf": [S, I]}}), obj({"p": {"oneOf": [S, I]}}),
         backward=False, forward=True, rules=("COMBINED_TYPE_CHANGED",),
         note="BACKWARD: string and integer never overlap, so the new oneOf reads every old value; Confluent refuses the changed combinator"),
    pair("audit-anyof-to-oneof-overlapping", JSON, obj({"p": {"anyOf": [N, I]}}), obj({"p": {"oneOf": [N, I]}}),
         backward=False, forward=True, rules=("COMBINED_TYPE_CHANGED",),
         note="BACKWARD: an integer matches both the number and the integer branch, which the new oneOf rejects; Confluent refuses"),
    pair("audit-anyof-to-single-allof", JSON, obj({"p": {"anyOf": [S, I]}}),
         obj({"p": {"allOf": [{"type": ["string", "integer"]}]}}), backward=False, forward=True,
         rules=("COMBINED_TYPE_CHANGED",),
         note="BACKWARD: the single conjunct takes both types, so readers cope; Confluent refuses a two-branch anyOf turned into a one-branch allOf"),
    pair("audit-allof-to-oneof", JSON, obj({"s": {"allOf": [S, {"maxLength": 5}]}}),
         obj({"s": {"oneOf": [S, {"maxLength": 5}]}}), backward=False, forward=False, rules=("COMBINED_TYPE_CHANGED",),
         note="every old value matches both branches, which the new oneOf rejects"),
    pair("audit-anyof-branch-merged", JSON, obj({"p": {"anyOf": [S, I]}}),
         obj({"p": {"anyOf": [{"type": ["string", "integer"]}]}}), backward=False, forward=False,
         rules=("SUM_TYPE_NARROWED", "COMBINED_TYPE_SUBSCHEMAS_CHANGED"),
         note="readers cope both ways (one branch takes both types); Confluent counts branches (BACKWARD) and pairs them one to one (FORWARD), and refuses"),
    pair("audit-not-added", JSON, obj({"s": S}), obj({"s": {"type": "string", "not": {"const": ""}}}),
         backward=False, forward=True, rules=("NOT_TYPE_EXTENDED",)),
    pair("audit-not-added-other-type", JSON, obj({"s": S}), obj({"s": {"type": "string", "not": I}}),
         backward=False, forward=True, rules=("NOT_TYPE_EXTENDED",),
         note="BACKWARD: the 'not' excludes integers, which the old strings never are, so readers cope; Confluent refuses a 'not' added"),
    pair("audit-if-then-else-added", JSON, CARD, {**CARD, "if": IS_CARD, "then": {"required": ["card"]}},
         backward=False, forward=True, rules=("CONDITIONAL_ADDED",),
         note="BACKWARD: old card payments may lack 'card', Confluent refuses (TYPE_CHANGED). FORWARD: Confluent's current SchemaDiff accepts a dropped conditional (PRODUCT_TYPE_NARROWED); Apicurio refuses, as Confluent releases before that rule did"),
    pair("audit-then-narrowed", JSON, {**CARD, "if": IS_CARD, "then": {"required": ["card"]}},
         {**CARD, "if": IS_CARD, "then": {"required": ["card", "expiry"]}}, backward=False, forward=True,
         rules=("CONDITIONAL_NARROWED",), note="Confluent does not compare a conditional's branches and accepts"),
    pair("audit-else-added", JSON, {**CARD, "if": IS_CARD, "then": {"required": ["card"]}},
         {**CARD, "if": IS_CARD, "then": {"required": ["card"]}, "else": {"properties": {"card": False}}},
         backward=False, forward=True, rules=("CONDITIONAL_NARROWED",)),
    pair("audit-dependency-array-added", JSON, CARD, {**CARD, "dependencies": {"card": ["expiry"]}},
         backward=False, forward=True, rules=("DEPENDENCY_ARRAY_ADDED",)),
    pair("audit-dependency-array-extended", JSON, {**CARD, "dependencies": {"card": ["expiry"]}},
         {**CARD, "dependencies": {"card": ["expiry", "kind"]}}, backward=False, forward=True,
         rules=("DEPENDENCY_ARRAY_EXTENDED",)),
    pair("audit-dependency-schema-removed", JSON, {**CARD, "dependencies": {"card": {"required": ["expiry"]}}}, CARD,
         backward=True, forward=False, rules=("DEPENDENCY_SCHEMA_ADDED",),
         note="new producers may send 'card' without 'expiry', which old readers reject; Confluent refuses"),
    pair("audit-dependency-schema-narrowed", JSON, {**CARD, "dependencies": {"card": {"properties": {"expiry": S}}}},
         {**CARD, "dependencies": {"card": {"properties": {"expiry": {"type": "string", "maxLength": 5}}}}},
         backward=False, forward=True, rules=("MAX_LENGTH_ADDED",)),
    pair("audit-dependent-required-added", JSON, d2020(CARD), d2020({**CARD, "dependentRequired": {"card": ["expiry"]}}),
         backward=False, forward=True, rules=("DEPENDENCY_ARRAY_ADDED",), registry=False),
    pair("audit-dependent-schemas-removed", JSON, d2020({**CARD, "dependentSchemas": {"card": {"required": ["expiry"]}}}),
         d2020(CARD), backward=True, forward=False, rules=("DEPENDENCY_SCHEMA_ADDED",), registry=False),
    pair("audit-definitions-ref-narrowed", JSON,
         obj({"q": {"$ref": "#/definitions/Qty"}}, definitions={"Qty": {"type": "number"}}),
         obj({"q": {"$ref": "#/definitions/Qty"}}, definitions={"Qty": {"type": "integer"}}),
         backward=False, forward=True, rules=("TYPE_NARROWED",)),
    pair("audit-unevaluated-properties-closed", JSON, d2020(obj({"id": S}, closed=None)),
         d2020(obj({"id": S}, closed=None, unevaluatedProperties=False)), backward=False, forward=True,
         rules=("UNEVALUATED_PROPERTIES_REMOVED",), registry=False),
    pair("audit-unevaluated-items-closed", JSON, d2020(obj({"t": {"type": "array", "prefixItems": [S]}})),
         d2020(obj({"t": {"type": "array", "prefixItems": [S], "unevaluatedItems": False}})), backward=False,
         forward=True, rules=("UNEVALUATED_ITEMS_REMOVED",), registry=False),
]

JSON_CASES += AUDIT_CASES
CASES = AVRO_CASES + JSON_CASES
