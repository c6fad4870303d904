"""Avro reader/writer compatibility, decided by Apache Avro's own checker.

``avro.compatibility.ReaderWriterCompatibilityChecker`` (the Python port of the Java
``SchemaCompatibility`` class) decides every verdict here. Its result keeps messages and locations as
unordered sets and loses the location inside unions, so this module walks reader and writer side by side
only to *place* each incompatibility on a readable path (``$.origin.city``, ``$.parcels[*].weight``) and to
word it; wherever the walk and the library would disagree, the library wins.

Two additions, where the Python library falls short of what readers need: the reader's short aliases are
resolved in their type's namespace first (as Avro's Java parser does, so verdicts match Java's and
Confluent's), and logical types are compared after the library's verdict (a changed logical type, decimal
scale or narrowed precision breaks readers although every Avro checker, Confluent's included, accepts it).
"""

from __future__ import annotations

import re
from typing import Any

from avro.compatibility import (
    ReaderWriterCompatibilityChecker,
    SchemaCompatibilityResult,
    SchemaCompatibilityType,
    SchemaIncompatibilityType,
    check_schema_names,
    lookup_writer_field,
)
from avro.schema import ArraySchema, MapSchema, NamedSchema, RecordSchema, Schema, UnionSchema

from toolkit.compat.findings import ACCEPTS, Issue
from toolkit.formats.avro import parse_apache

_Kind = SchemaIncompatibilityType
_TYPE_MISMATCH = re.compile(r"reader type: (\S+) not compatible with writer type: (\S+)")


def check(reader: Any, writer: Any) -> list[Issue]:
    """Why ``reader`` cannot read data written with ``writer``; empty when it can.

    Both are parsed Avro schemas or raw schema documents. Before Apache Avro's checker decides, the reader's
    short aliases are resolved in their type's namespace, as Avro's Java implementation does at parse time
    (the Python checker compares them as written). After it, logical types are compared, which the
    checker (Java's too, and so Confluent's) ignores: such findings say Confluent would accept the change.
    """
    reader = parse_apache(qualify_aliases(reader if not isinstance(reader, Schema) else reader.to_json()))
    writer = writer if isinstance(writer, Schema) else parse_apache(writer)
    verdict = _library(reader, writer)
    issues = []
    if verdict.compatibility is not SchemaCompatibilityType.compatible:
        issues = _locate(reader, writer, "$", verdict) or _describe(verdict, "$", reader, writer)
    return issues + _logical(reader, writer, "$", set())


_NAMED = ("record", "error", "enum", "fixed")


def qualify_aliases(document: Any, namespace: str = "") -> Any:
    """A copy of ``document`` whose named types' aliases are full names: an alias without a dot is relative
    to the namespace of the type that declares it (Avro specification; Java's ``Schema`` parser). Field
    aliases are plain names and stay as they are."""
    if isinstance(document, list):
        return [qualify_aliases(branch, namespace) for branch in document]
    if not isinstance(document, dict):
        return document
    out = dict(document)
    if out.get("type") in _NAMED and isinstance(out.get("name"), str):
        name = out["name"]
        space = name.rpartition(".")[0] if "." in name else out.get("namespace", namespace) or ""
        if isinstance(out.get("aliases"), list):
            out["aliases"] = [
                a if not isinstance(a, str) or "." in a or not space else f"{space}.{a}" for a in out["aliases"]
            ]
        namespace = space
    if isinstance(out.get("fields"), list):
        out["fields"] = [
            {**f, "type": qualify_aliases(f.get("type"), namespace)} if isinstance(f, dict) else f
            for f in out["fields"]
        ]
    for key in ("items", "values"):
        if key in out:
            out[key] = qualify_aliases(out[key], namespace)
    if isinstance(out.get("type"), (dict, list)):
        out["type"] = qualify_aliases(out["type"], namespace)
    return out


def _logical(reader: Schema, writer: Schema, path: str, seen: set[tuple[int, int]]) -> list[Issue]:
    """Logical types on both sides of each reader/writer pair that Avro resolves to each other.

    The same bytes mean something else when the logical type changes (timestamp-millis read as
    timestamp-micros is off by 1000; a decimal's scale moves the point), and a decimal read with a smaller
    precision than written may not fit. Avro's resolution rules ignore logical types, so the library
    checker (and Confluent Schema Registry, which runs Java's) accepts all of these."""
    key = (id(reader), id(writer))
    if key in seen:
        return []
    seen.add(key)
    if isinstance(writer, UnionSchema):
        issues = []
        for branch in writer.schemas:
            match = _same_kind_branch(reader, branch) if isinstance(reader, UnionSchema) else reader
            if match is not None:
                issues += _logical(match, branch, path, seen)
        return issues
    if isinstance(reader, UnionSchema):
        match = _same_kind_branch(reader, writer)
        return _logical(match, writer, path, seen) if match is not None else []
    if isinstance(reader, RecordSchema) and isinstance(writer, RecordSchema):
        issues = []
        for field in reader.fields:
            writer_field = lookup_writer_field(writer_schema=writer, reader_field=field)
            if writer_field is not None:
                issues += _logical(field.type, writer_field.type, f"{path}.{field.name}", seen)
        return issues
    if isinstance(reader, ArraySchema) and isinstance(writer, ArraySchema):
        return _logical(reader.items, writer.items, f"{path}[*]", seen)
    if isinstance(reader, MapSchema) and isinstance(writer, MapSchema):
        return _logical(reader.values, writer.values, f"{path}.*", seen)
    return _logical_leaf(reader, writer, path)


_PROMOTIONS = {
    ("int", "long"),
    ("int", "float"),
    ("int", "double"),
    ("long", "float"),
    ("long", "double"),
    ("float", "double"),
    ("string", "bytes"),
    ("bytes", "string"),
}


def _logical_leaf(reader: Schema, writer: Schema, path: str) -> list[Issue]:
    r_type, w_type = reader.props.get("logicalType"), writer.props.get("logicalType")
    if r_type is None and w_type is None:
        return []
    if reader.type != writer.type and (writer.type, reader.type) not in _PROMOTIONS:
        return []  # Avro cannot resolve the values at all: the library's verdict already says so
    if r_type != w_type:
        shown = " to ".join(f"'{t}'" if t else "none" for t in (w_type, r_type))
        return [
            Issue(
                path,
                "LOGICAL_TYPE_CHANGED",
                f"the logical type changed from {shown} (writer to reader), "
                f"so the reader gives the writer's {writer.type} values another meaning",
                confluent=ACCEPTS,
            )
        ]
    if r_type != "decimal":
        return []
    issues = []
    r_scale, w_scale = reader.props.get("scale", 0), writer.props.get("scale", 0)
    if isinstance(r_scale, int) and isinstance(w_scale, int) and r_scale != w_scale:
        issues.append(
            Issue(
                path,
                "DECIMAL_SCALE_CHANGED",
                f"the decimal's scale is {w_scale} in the writer and "
                f"{r_scale} in the reader, so the same unscaled bytes read as a number "
                f"10^{abs(r_scale - w_scale)} times {'smaller' if r_scale > w_scale else 'larger'}",
                confluent=ACCEPTS,
            )
        )
    r_precision, w_precision = reader.props.get("precision"), writer.props.get("precision")
    if isinstance(r_precision, int) and isinstance(w_precision, int) and r_precision < w_precision:
        issues.append(
            Issue(
                path,
                "DECIMAL_PRECISION_NARROWED",
                f"the writer's decimals have up to {w_precision} "
                f"digits and the reader's at most {r_precision}, so larger values do not fit",
                confluent=ACCEPTS,
            )
        )
    return issues


def _library(reader: Schema, writer: Schema) -> SchemaCompatibilityResult:
    # a fresh checker each time: its memo is keyed by object identity and must not outlive one question
    return ReaderWriterCompatibilityChecker().get_compatibility(reader, writer)


def _incompatible(reader: Schema, writer: Schema) -> SchemaCompatibilityResult | None:
    result = _library(reader, writer)
    return None if result.compatibility is SchemaCompatibilityType.compatible else result


def _locate(reader: Schema, writer: Schema, path: str, verdict: SchemaCompatibilityResult) -> list[Issue]:
    """Descend where both sides have the same structure; describe the library's verdict at the leaves."""
    if isinstance(writer, UnionSchema):
        issues = []
        for branch in writer.schemas:
            sub = _incompatible(reader, branch)
            if sub is None:
                continue
            if isinstance(reader, UnionSchema) and not _same_kind_branch(reader, branch):
                issues.append(
                    Issue(
                        path,
                        "MISSING_UNION_BRANCH",
                        f"the writer may write a {_type_name(branch)}, and the reader's union "
                        f"{_union_names(reader)} has no branch that can read it",
                    )
                )
            else:
                issues += _locate(reader, branch, path, sub)
        return issues
    if isinstance(reader, UnionSchema):
        match = _same_kind_branch(reader, writer)
        if match is not None:
            sub = _incompatible(match, writer)
            if sub is not None:
                return _locate(match, writer, path, sub)
        return [
            Issue(
                path,
                "MISSING_UNION_BRANCH",
                f"the writer writes a {_type_name(writer)}, and the reader's union "
                f"{_union_names(reader)} has no branch that can read it",
            )
        ]
    if reader.type != writer.type:
        return _describe(verdict, path, reader, writer)
    if isinstance(reader, RecordSchema) and isinstance(writer, RecordSchema):
        issues = _describe(_named(reader, writer), path, reader, writer)
        for field in reader.fields:
            writer_field = lookup_writer_field(writer_schema=writer, reader_field=field)
            child = f"{path}.{field.name}"
            if writer_field is None:
                if (
                    _Kind.reader_field_missing_default_value in verdict.incompatibilities
                    and field.name in verdict.messages
                ):
                    issues.append(
                        Issue(
                            child,
                            "READER_FIELD_MISSING_DEFAULT_VALUE",
                            f"field '{field.name}' is missing from the writer's records and the "
                            "reader gives it no default",
                        )
                    )
                continue
            sub = _incompatible(field.type, writer_field.type)
            if sub is not None:
                issues += _locate(field.type, writer_field.type, child, sub)
        return issues
    if isinstance(reader, ArraySchema) and isinstance(writer, ArraySchema):
        sub = _incompatible(reader.items, writer.items)
        return _locate(reader.items, writer.items, f"{path}[*]", sub) if sub else []
    if isinstance(reader, MapSchema) and isinstance(writer, MapSchema):
        sub = _incompatible(reader.values, writer.values)
        return _locate(reader.values, writer.values, f"{path}.*", sub) if sub else []
    return _describe(verdict, path, reader, writer)


def _named(reader: NamedSchema, writer: NamedSchema) -> SchemaCompatibilityResult:
    return check_schema_names(reader, writer, [])


def _describe(result: SchemaCompatibilityResult, path: str, reader: Schema, writer: Schema) -> list[Issue]:
    """Word the library's verdict for one node (where the pairing of kinds and messages is unambiguous)."""
    if result.compatibility is SchemaCompatibilityType.compatible:
        return []
    issues = []
    kinds = list(dict.fromkeys(result.incompatibilities))
    for kind in kinds:
        if kind is _Kind.name_mismatch:
            issues.append(
                Issue(
                    path,
                    "NAME_MISMATCH",
                    f"the writer's type is named '{getattr(writer, 'fullname', writer.type)}' and the "
                    f"reader's '{getattr(reader, 'fullname', reader.type)}', and no reader alias "
                    "maps one to the other",
                )
            )
        elif kind is _Kind.fixed_size_mismatch:
            issues.append(
                Issue(
                    path,
                    "FIXED_SIZE_MISMATCH",
                    f"the fixed type holds {getattr(writer, 'size', '?')} bytes in the writer and "
                    f"{getattr(reader, 'size', '?')} in the reader",
                )
            )
        elif kind is _Kind.missing_enum_symbols:
            missing = sorted(set(getattr(writer, "symbols", [])) - set(getattr(reader, "symbols", [])))
            issues.append(
                Issue(
                    path,
                    "MISSING_ENUM_SYMBOLS",
                    f"the writer may write enum symbol(s) {', '.join(missing)}, which the reader "
                    "does not know and has no default symbol for",
                )
            )
        elif kind is _Kind.type_mismatch:
            issues.append(
                Issue(
                    path,
                    "TYPE_MISMATCH",
                    f"the writer writes {_type_name(writer)} where the reader expects "
                    f"{_type_name(reader)}, and Avro's resolution rules cannot promote one to "
                    "the other",
                )
            )
        elif kind is _Kind.missing_union_branch:
            issues.append(
                Issue(
                    path,
                    "MISSING_UNION_BRANCH",
                    f"the writer may write a {_type_name(writer)} that no branch of the reader's union can read",
                )
            )
        elif kind is _Kind.reader_field_missing_default_value:
            for name in sorted(m for m in result.messages if _TYPE_MISMATCH.match(m) is None):
                issues.append(
                    Issue(
                        f"{path}.{name}",
                        "READER_FIELD_MISSING_DEFAULT_VALUE",
                        f"field '{name}' is missing from the writer's records and the reader gives it no default",
                    )
                )
    if not issues:  # a kind this module does not know yet: still never hide the library's verdict
        issues.append(Issue(path, "INCOMPATIBLE", "; ".join(sorted(result.messages)) or "incompatible"))
    return issues


def _same_kind_branch(union: UnionSchema, other: Schema) -> Schema | None:
    """The branch of ``union`` that Avro would resolve ``other`` to by name or type, if any."""
    for branch in union.schemas:
        if branch.type == other.type and getattr(branch, "name", None) == getattr(other, "name", None):
            return branch
    for branch in union.schemas:
        if branch.type == other.type:
            return branch
    return None


def _type_name(schema: Schema) -> str:
    return f"{schema.type} '{schema.fullname}'" if isinstance(schema, NamedSchema) else str(schema.type)


def _union_names(union: UnionSchema) -> str:
    return "[" + ", ".join(_type_name(b) for b in union.schemas) + "]"
