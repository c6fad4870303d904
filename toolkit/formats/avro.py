"""Avro as a :class:`~toolkit.formats.base.Format`: the one validity check for ``.avsc`` schemas.

A document is refused when (a document that is not a valid schema gets that one problem):

1. Apache Avro (``avro.schema.parse``, the library that decides compatibility) or fastavro (the library
   that decodes bodies) cannot parse it;
2. it uses a construct the toolkit cannot turn into one usable pydantic model, or one whose model cannot
   follow the validator (:class:`~toolkit.errors.UnsupportedSchema`, every occurrence reported; the runtime
   refuses only 1, :meth:`AvroFormat.invalid`):

   - an ``error`` type, anywhere: errors belong to Avro RPC protocols, and datamodel-code-generator does not
     know the type;
   - a union with two branches the model cannot tell apart once the validator has unwrapped the value
     (records where the required fields of one are all fields of the other, a record and a map, enums
     sharing a symbol, an enum and a string, fixed types of one size, a fixed and bytes): the model takes
     the first branch that fits.

   A root that is not a record (an ``enum``, a union, an array ...) is generated as a ``RootModel``
   (:func:`toolkit.codegen.prepare.prepare_avro_schema`), so the model index can use it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from toolkit.errors import SchemaFileError, UnsupportedSchema
from toolkit.formats.base import BaseFormat, child, shorten
from toolkit.layout import SchemaFormat

if TYPE_CHECKING:
    from toolkit.compat.findings import Issue
    from toolkit.references import Referenced
    from toolkit.validation.avro import AvroSchema

SPECIFICATION = "https://avro.apache.org/docs/1.12.0/specification/"


class AvroFormat(BaseFormat):
    schema_format = SchemaFormat.AVRO
    suffix = ".avsc"
    label = "Avro"
    codegen_input = "avro"

    def invalid(self, path: Path | str, document: Any, references: Referenced = ()) -> list[SchemaFileError]:
        from toolkit.references import check_avro_names, expand_avro

        try:
            if references:
                check_avro_names(path, document, [(name, name, doc) for name, doc in references])
            self.parse_fastavro(path, document, references=references)
            _parse_apache(path, expand_avro(document, references))
        except SchemaFileError as exc:
            return [exc]
        return []

    def unsupported(self, path: Path | str, document: Any, references: Referenced = ()) -> list[UnsupportedSchema]:
        return list(_unsupported(path, document, references))

    def parse_fastavro(
        self, path: Path | str, document: Any, named: dict | None = None, references: Referenced = ()
    ) -> Any:
        """fastavro's parsed schema (what the decoder is built from); fills ``named`` with the named types,
        those of the ``references`` (parsed first, dependencies first) included.

        Raises:
            SchemaFileError: fastavro cannot parse it (unknown type, missing name or fields, bad default ...).
        """
        import fastavro

        try:
            if named is None and not references:
                return fastavro.parse_schema(document, _write_hint=False)
            named = {} if named is None else named
            for name, referenced in references:
                try:
                    fastavro.parse_schema(referenced, named_schemas=named, _write_hint=False)
                except Exception as exc:  # noqa: BLE001 - as below, naming the reference
                    raise SchemaFileError(
                        path,
                        f"the referenced schema {name!r} does not parse: {shorten(f'{type(exc).__name__}: {exc}')}",
                        field="references",
                        fix="correct the referenced schema, or reference another version",
                    ) from None
            return fastavro.parse_schema(document, named_schemas=named, _write_hint=False)
        except RecursionError:
            raise SchemaFileError(path, "schema is nested too deeply", fix="flatten it with named types") from None
        except SchemaFileError:
            raise
        except Exception as exc:  # noqa: BLE001 - fastavro raises many types (SchemaParseException, KeyError ...)
            raise SchemaFileError(
                path,
                f"not a valid Avro schema: {shorten(f'{type(exc).__name__}: {exc}')}",
                fix=f"correct the schema (see {SPECIFICATION})",
            ) from None

    def compile(self, label: str, subject: str, version: int, document: Any, references: Referenced = ()) -> AvroSchema:
        from toolkit.validation.avro import AvroSchema

        return AvroSchema.compile(label, subject, version, document, references)

    def compatibility(self, reader: Any, writer: Any) -> list[Issue]:
        from toolkit.compat import avro as avro_compat

        return avro_compat.check(reader, writer)


def parse_apache(document: Any) -> Any:
    """Apache Avro's parse of a schema document (the library that decides compatibility, so the parse both
    :meth:`AvroFormat.invalid` and :mod:`toolkit.compat.avro` use). Raises what ``avro.schema.parse`` raises.

    A logical type avro 1.12 does not know (``local-timestamp-*``) stays in the schema's attributes, where
    the logical-type comparison reads it, without the library's warning."""
    import warnings

    from avro.errors import IgnoredLogicalType
    from avro.schema import parse

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", IgnoredLogicalType)
        return parse(json.dumps(document))


def _parse_apache(path: Path | str, document: Any) -> None:
    from avro.errors import AvroException

    try:
        parse_apache(document)
    except RecursionError:
        raise SchemaFileError(path, "schema is nested too deeply", fix="flatten it with named types") from None
    except (AvroException, ValueError, TypeError, KeyError) as exc:
        raise SchemaFileError(
            path,
            f"not a valid Avro schema (Apache Avro): {shorten(f'{type(exc).__name__}: {exc}')}",
            fix=f"correct the schema (see {SPECIFICATION})",
        ) from None


def _unsupported(path: Path | str, document: Any, references: Referenced = ()) -> Iterator[UnsupportedSchema]:
    # A root that is not a record (an enum, a union, an array ...) is generated as a RootModel
    # (toolkit.codegen.prepare.prepare_avro_schema), which the model index can use.
    yield from _errors(path, document, "$")
    yield from _ambiguous_unions(path, document, references)


def _errors(path: Path | str, node: Any, json_path: str) -> Iterator[UnsupportedSchema]:
    if isinstance(node, list):
        for index, item in enumerate(node):
            yield from _errors(path, item, child(json_path, index))
        return
    if not isinstance(node, dict):
        return
    if node.get("type") == "error":
        yield UnsupportedSchema(
            path,
            f"{node.get('name')!r} is an Avro error type: errors belong to Avro RPC protocols and codegen "
            "cannot generate a model for them",
            field=child(json_path, "type"),
            fix='write "type": "record" (same name and fields)',
        )
    for key in ("type", "items", "values", "fields"):
        if key in node and not isinstance(node[key], str):
            yield from _errors(path, node[key], child(json_path, key))


def _ambiguous_unions(path: Path | str, document: Any, references: Referenced = ()) -> Iterator[UnsupportedSchema]:
    """Unions whose branches the model cannot tell apart: the validator unwraps ``{"Name": value}`` and hands
    the model the bare value, so of two branches of the same shape (records where the required fields of one
    are all fields of the other, a record and a map, two enums sharing a symbol, an enum and a string, two
    fixed of one size, a fixed and bytes) the model takes the first that fits, which may not be the branch
    the producer wrote."""
    named: dict[str, Any] = {}
    found: list[UnsupportedSchema] = []

    def resolve(branch: Any) -> Any:
        if isinstance(branch, str):
            return named.get(branch, named.get(branch.rsplit(".", 1)[-1], branch))
        return branch

    def walk(node: Any, json_path: str, owner: str) -> None:
        if isinstance(node, list):
            shapes = [
                (index, shape) for index, branch in enumerate(node) if (shape := _shape(resolve(branch))) is not None
            ]
            for position, (i, a) in enumerate(shapes):
                for j, b in shapes[position + 1 :]:
                    if _overlap(a, b):
                        found.append(
                            _ambiguous(path, json_path, owner, (i, resolve(node[i]), a), (j, resolve(node[j]), b))
                        )
            for index, branch in enumerate(node):
                walk(branch, child(json_path, index), owner)
        elif isinstance(node, dict):
            if node.get("type") in ("record", "error", "enum", "fixed") and isinstance(node.get("name"), str):
                named[node["name"]] = node
                if isinstance(node.get("namespace"), str) and "." not in node["name"]:
                    named[f"{node['namespace']}.{node['name']}"] = node
            fields = node["fields"] if isinstance(node.get("fields"), list) else []
            for index, field in enumerate(fields):
                if isinstance(field, dict):
                    walk(
                        field.get("type"),
                        child(child(child(json_path, "fields"), index), "type"),
                        f"field {field.get('name')!r}",
                    )
            for key in ("type", "items", "values"):
                if isinstance(node.get(key), (dict, list)):
                    walk(node[key], child(json_path, key), owner)

    for _, referenced in references:  # their named types, for the branches naming them (their own unions are
        walk(referenced, "$", "the root")  # checked with their own files)
    found.clear()
    walk(document, "$", "the root")
    return iter(found)


# A branch's shape once unwrapped: (kind, detail). Two branches of one kind overlap when either detail is
# None (a map, a string, bytes take every value of the other branch) or the details meet: for records
# (detail: the required field names, those without a default, and all field names) when one record's
# required fields are all fields of the other, so that a value of the other fits it (missing fields take
# their defaults, extra keys are not refused).
def _shape(branch: Any) -> tuple[str, Any] | None:
    if isinstance(branch, str):
        return {"string": ("text", None), "bytes": ("bytes", None), "map": ("object", None)}.get(branch)
    if not isinstance(branch, dict):
        return None
    kind = branch.get("type")
    if kind in ("record", "error"):
        fields = [f for f in branch.get("fields", ()) if isinstance(f, dict)]
        return "object", (
            frozenset(f.get("name") for f in fields if "default" not in f),
            frozenset(f.get("name") for f in fields),
        )
    if kind == "map":
        return "object", None
    if kind == "enum":
        return "text", frozenset(branch.get("symbols", ()))
    if kind == "fixed":
        return "bytes", branch.get("size")
    if isinstance(kind, str):
        return _shape(kind)
    return None


def _overlap(a: tuple[str, Any], b: tuple[str, Any]) -> bool:
    if a[0] != b[0]:
        return False
    if a[1] is None or b[1] is None:
        return True
    if a[0] == "text":
        return bool(a[1] & b[1])
    if a[0] == "object":
        (a_required, a_fields), (b_required, b_fields) = a[1], b[1]
        return a_required <= b_fields or b_required <= a_fields
    return a[1] == b[1]


def _label(branch: Any) -> str:
    if isinstance(branch, dict):
        kind = branch.get("type")
        if kind in ("record", "error", "enum", "fixed"):
            return f"{kind} {branch.get('name')}"
        return _label(kind)
    return str(branch)


def _ambiguous(
    path: Path | str,
    json_path: str,
    owner: str,
    first: tuple[int, Any, tuple[str, Any]],
    second: tuple[int, Any, tuple[str, Any]],
) -> UnsupportedSchema:
    (i, a, (kind, a_detail)), (j, b, (_, b_detail)) = first, second
    a_label, b_label = _label(a), _label(b)
    if a_detail is not None and b_detail is not None:
        if kind == "object":
            fix = (
                f"give each of {a_label} and {b_label} a required field (one without a default) the other "
                "does not have, or merge them into one record"
            )
        elif kind == "text":
            fix = (
                f"remove the shared symbols ({', '.join(sorted(a_detail & b_detail))}) from one of the "
                "enums, or merge them into one enum"
            )
        else:
            fix = f"give {a_label} and {b_label} different sizes, or merge them"
    else:
        wide, narrow = (a_label, b_label) if a_detail is None else (b_label, a_label)
        fix = (
            f"keep only one of the two branches ({wide} takes every value of {narrow}), or wrap one of them "
            "in a record with a field name of its own"
        )
    return UnsupportedSchema(
        path,
        f"the union of {owner} has branches {i} ({a_label}) and {j} ({b_label}) that hold the same "
        "value once the validator unwraps it: the model takes the first that fits, which may not be "
        "the branch the producer wrote",
        field=json_path,
        fix=fix,
    )
