"""Avro as a :class:`~toolkit.formats.base.Format`: the one validity check for ``.avsc`` schemas.

A document is refused when (a document that is not a valid schema gets that one problem):

1. Apache Avro (``avro.schema.parse``, the library that decides compatibility) or fastavro (the library
   that decodes bodies) cannot parse it;
2. it uses a construct the toolkit cannot turn into one usable pydantic model
   (:class:`~toolkit.errors.UnsupportedSchema`, every occurrence reported):

   - an ``error`` type, anywhere: errors belong to Avro RPC protocols, and datamodel-code-generator does not
     know the type.

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
    from toolkit.validation.avro import AvroSchema

SPECIFICATION = "https://avro.apache.org/docs/1.12.0/specification/"


class AvroFormat(BaseFormat):
    schema_format = SchemaFormat.AVRO
    suffix = ".avsc"
    label = "Avro"
    codegen_input = "avro"

    def problems(self, path: Path | str, document: Any) -> list[SchemaFileError]:
        try:
            self.parse_fastavro(path, document)
            _parse_apache(path, document)
        except SchemaFileError as exc:
            return [exc]
        return list(_unsupported(path, document))

    def parse_fastavro(self, path: Path | str, document: Any, named: dict | None = None) -> Any:
        """fastavro's parsed schema (what the decoder is built from); fills ``named`` with the named types.

        Raises:
            SchemaFileError: fastavro cannot parse it (unknown type, missing name or fields, bad default ...).
        """
        import fastavro

        try:
            if named is None:
                return fastavro.parse_schema(document, _write_hint=False)
            return fastavro.parse_schema(document, named_schemas=named, _write_hint=False)
        except RecursionError:
            raise SchemaFileError(path, "schema is nested too deeply", fix="flatten it with named types") from None
        except Exception as exc:  # noqa: BLE001 - fastavro raises many types (SchemaParseException, KeyError ...)
            raise SchemaFileError(path, f"not a valid Avro schema: {shorten(f'{type(exc).__name__}: {exc}')}",
                                  fix=f"correct the schema (see {SPECIFICATION})") from None

    def compile(self, label: str, subject: str, version: int, document: Any) -> AvroSchema:
        from toolkit.validation.avro import AvroSchema

        return AvroSchema.compile(label, subject, version, document)

    def compatibility(self, reader: Any, writer: Any) -> list[Issue]:
        from toolkit.compat import avro as avro_compat

        return avro_compat.check(reader, writer)


def _parse_apache(path: Path | str, document: Any) -> None:
    from avro.errors import AvroException
    from avro.schema import parse

    try:
        parse(json.dumps(document))
    except RecursionError:
        raise SchemaFileError(path, "schema is nested too deeply", fix="flatten it with named types") from None
    except (AvroException, ValueError, TypeError, KeyError) as exc:
        raise SchemaFileError(path, f"not a valid Avro schema (Apache Avro): "
                                    f"{shorten(f'{type(exc).__name__}: {exc}')}",
                              fix=f"correct the schema (see {SPECIFICATION})") from None


def _unsupported(path: Path | str, document: Any) -> Iterator[UnsupportedSchema]:
    # A root that is not a record (an enum, a union, an array ...) is generated as a RootModel
    # (toolkit.codegen.prepare.prepare_avro_schema), which the model index can use.
    yield from _errors(path, document, "$")


def _errors(path: Path | str, node: Any, json_path: str) -> Iterator[UnsupportedSchema]:
    if isinstance(node, list):
        for index, item in enumerate(node):
            yield from _errors(path, item, child(json_path, index))
        return
    if not isinstance(node, dict):
        return
    if node.get("type") == "error":
        yield UnsupportedSchema(
            path, f"{node.get('name')!r} is an Avro error type: errors belong to Avro RPC protocols and codegen "
                  "cannot generate a model for them",
            field=child(json_path, "type"), fix='write "type": "record" (same name and fields)')
    for key in ("type", "items", "values", "fields"):
        if key in node and not isinstance(node[key], str):
            yield from _errors(path, node[key], child(json_path, key))
