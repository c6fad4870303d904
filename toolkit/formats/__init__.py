"""One :class:`~toolkit.formats.base.Format` per schema language: the single place that decides whether a
schema file is valid *and* usable, for ``epistle check`` and ``epistle codegen``, and whether it is valid,
for the runtime registry load.

    from toolkit.formats import format_for
    fmt = format_for(SchemaFormat.AVRO)      # or format_for_suffix(".avsc")
    fmt.validate(path, document)             # SchemaFileError / UnsupportedSchema (file, JSON path, fix)
    fmt.validate(path, document, codegen=False)  # SchemaFileError only: not a valid schema
    compiled = fmt.compile(label, subject, version, document)  # refuses invalid schemas only
    issues = fmt.compatibility(reader_document, writer_document)
"""

from __future__ import annotations

from toolkit import _args
from toolkit.formats.avro import AvroFormat
from toolkit.formats.base import Format
from toolkit.formats.json_schema import JsonSchemaFormat
from toolkit.layout import SchemaFormat

JSON_SCHEMA = JsonSchemaFormat()
AVRO = AvroFormat()
FORMATS: dict[SchemaFormat, Format] = {SchemaFormat.JSON: JSON_SCHEMA, SchemaFormat.AVRO: AVRO}

__all__ = [
    "AVRO",
    "FORMATS",
    "JSON_SCHEMA",
    "AvroFormat",
    "Format",
    "JsonSchemaFormat",
    "format_for",
    "format_for_suffix",
]


def format_for(schema_format: SchemaFormat | str) -> Format:
    """The format of a ``SchemaFormat`` (or its value, ``"JSON"`` / ``"AVRO"``)."""
    return FORMATS[SchemaFormat(schema_format)]


def format_for_suffix(suffix: str) -> Format | None:
    """The format of a version file suffix (``.json``, ``.avsc``), None for any other."""
    _args.text("suffix", suffix)
    return next((fmt for fmt in FORMATS.values() if fmt.suffix == suffix), None)
