"""Validation of message bodies against a schema version, for both formats (pure: no I/O).

Two entry points:

- :func:`check_schema_text` checks a schema document with its :mod:`toolkit.formats` format (the one
  check ``epistle check`` and codegen apply; :func:`compile_schema` applies its validity part) and raises
  :class:`~toolkit.errors.SchemaFileError` naming the file, the JSON path and the fix.
- :func:`compile_schema` turns a :class:`~toolkit.registry.base.RegisteredSchema` into a
  :class:`CompiledSchema`, built once per (subject, version) and cached by the registry. Its
  :meth:`CompiledSchema.decode` is the hot path: it validates a body that came from ``json.loads`` and
  returns the Python value to build the generated model from. It never raises anything but
  :class:`~toolkit.errors.MessageError` (stage ``"validation"``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from toolkit import _args
from toolkit.errors import SchemaFileError
from toolkit.formats import format_for
from toolkit.layout import SchemaFormat
from toolkit.registry.base import RegisteredSchema
from toolkit.validation.avro import AvroSchema
from toolkit.validation.base import STAGE, CompiledSchema
from toolkit.validation.json_schema import JsonSchema

__all__ = ["STAGE", "AvroSchema", "CompiledSchema", "JsonSchema", "check_schema_text", "compile_schema"]


def check_schema_text(path_or_label: Path | str, schema_format: SchemaFormat, document: Any) -> None:
    """Check one parsed schema document (the JSON value of the file).

    Raises:
        SchemaFileError: the document is not a valid schema of ``schema_format``; ``path`` is
            ``path_or_label``, ``field`` the JSON path of the problem where known.
    """
    format_for(schema_format).validate(_args.path("path_or_label", path_or_label), document)


def compile_schema(schema: RegisteredSchema) -> CompiledSchema:
    """Parse, check and compile a registered schema once, for many :meth:`CompiledSchema.decode` calls.

    Only an invalid schema is refused: a valid one using a construct codegen cannot express
    (:class:`~toolkit.errors.UnsupportedSchema` for ``epistle check`` and codegen) validates bodies all the
    same; a consumer with generated models has none for it, so its records fail at stage ``model``.

    A schema with ``references`` is compiled with the referenced schemas of ``schema.referenced`` (which
    :class:`~toolkit.registry.cache.CachedRegistry` fills from the registry).

    Raises:
        SchemaFileError: the schema text is not JSON or not a valid schema (the same problem ``epistle check``
            reports for that text in a file), or its references were not looked up; the path is
            ``registry:<subject>/<version>``.
    """
    _args.instance("schema", schema, RegisteredSchema, "a RegisteredSchema (from a registry)")
    label = f"registry:{schema.subject}/{schema.version}"
    fmt = format_for(schema.format)
    if schema.references and not schema.referenced:
        names = ", ".join(str(ref.get("name", ref)) if isinstance(ref, dict) else str(ref) for ref in schema.references)
        raise SchemaFileError(
            label,
            f"uses schema references ({names}) that were not looked up",
            field="references",
            fix="compile it through a CachedRegistry (it fetches the referenced versions), or fill "
            "RegisteredSchema.referenced",
        )
    references = tuple(
        (name, fmt.parse(f"registry:{ref.subject}/{ref.version}", ref.text)) for name, ref in schema.referenced
    )
    return fmt.compile(label, schema.subject, schema.version, fmt.parse(label, schema.text), references)
