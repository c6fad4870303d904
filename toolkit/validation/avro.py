"""Avro: decode bodies in the Avro JSON encoding (whether a schema is valid: :mod:`toolkit.formats.avro`).

A body arrives as ``json.loads`` of the Avro specification's JSON encoding (what kafka-avro-console-producer,
Confluent's REST Proxy and ``fastavro.json_writer`` write): unions wrapped as ``{"<type name>": value}``
(the full name for named types), ``bytes``/``fixed``/decimals as strings of code points 0-255,
``timestamp-millis`` as epoch milliseconds. A missing field takes its schema default, as in fastavro's
JSON reader; an unknown field is an error, as in Avro's Java ``JsonDecoder``.

The decoder is a tree of small closures built once per schema from ``fastavro.parse_schema``'s output;
logical types are converted by fastavro's own logical readers (Decimal, datetime, UUID, date, time),
``big-decimal`` (which fastavro does not know) by :func:`_read_big_decimal`.
fastavro's ``json_reader`` does the same job per file, but it rebuilds its grammar per call, mutates its
input, does not check primitive types and reads arrays in quadratic time; on the shipments/2 sample it took
170 us per body against 14 us here (and fastavro.validate on the result another 84 us), so it is not used
on the hot path. Tests check both agree on the golden samples.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

from fastavro.read import LOGICAL_READERS

from toolkit.errors import MessageError
from toolkit.formats import AVRO
from toolkit.layout import SchemaFormat
from toolkit.references import Referenced
from toolkit.validation.base import STAGE, CompiledSchema, shorten, unexpected

Decoder = Callable[[Any], Any]

_INT = (-(2**31), 2**31 - 1)
_LONG = (-(2**63), 2**63 - 1)
_PRIMITIVES = frozenset({"null", "boolean", "int", "long", "float", "double", "bytes", "string"})


class _Mismatch(Exception):
    """The body does not match the schema; ``segments`` is the path, innermost first."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message
        self.segments: list[str] = []

    @property
    def path(self) -> str:
        return "$" + "".join(reversed(self.segments))


def check_avro_schema(path: Path | str, document: Any, references: Referenced = ()) -> dict | list | str:
    """The one validity check (:meth:`toolkit.formats.avro.AvroFormat.invalid`); return fastavro's parsed
    schema. A valid schema using a construct codegen cannot express is not refused: bodies decode with it.

    Raises:
        SchemaFileError: Apache Avro or fastavro cannot parse it.
    """
    AVRO.validate(path, document, codegen=False, references=references)
    return AVRO.parse_fastavro(path, document, references=references)


class AvroSchema(CompiledSchema):
    """An Avro schema version with its JSON-encoding decoder built once."""

    format = SchemaFormat.AVRO

    def __init__(
        self, subject: str, version: int, document: Any, parsed: Any, decoder: Decoder, standalone: Any = None
    ) -> None:
        super().__init__(subject, version, document)
        self.parsed = parsed  # fastavro.parse_schema's output, for fastavro readers and writers
        self._decoder = decoder
        # The document with its referenced named types inlined: what a binary reader is built from.
        self.standalone = document if standalone is None else standalone

    @classmethod
    def compile(cls, label: str, subject: str, version: int, document: Any, references: Referenced = ()) -> AvroSchema:
        """Raises: SchemaFileError naming ``label`` when Apache Avro or fastavro cannot parse the schema
        (never UnsupportedSchema: a valid schema codegen cannot express decodes bodies all the same).

        ``references`` (``(name, document)``, :mod:`toolkit.references`) define the named types the schema
        uses from other subjects: fastavro parses them first into the same ``named_schemas``. ``parsed`` is
        then fastavro's parse of the schema with them inlined (:func:`toolkit.references.expand_avro`), so a
        fastavro reader needs nothing else."""
        from toolkit.references import expand_avro

        check_avro_schema(label, document, references)
        named: dict[str, Any] = {}
        parsed = AVRO.parse_fastavro(label, document, named, references)
        standalone = expand_avro(document, references)
        if references:
            parsed = AVRO.parse_fastavro(label, standalone)
        return cls(subject, version, document, parsed, _Builder(named).build(parsed), standalone)

    def decode(self, body: Any) -> Any:
        """Decode the Avro JSON encoding into Python values (logical types converted, unions unwrapped).

        Raises:
            MessageError: stage ``"validation"``, with the path of the first mismatch.
        """
        try:
            return self._decoder(body)
        except _Mismatch as exc:
            message = shorten(exc.message)
            raise MessageError(
                STAGE, f"{exc.path}: {message}", details=[{"path": exc.path, "message": message}]
            ) from None
        except Exception as exc:  # noqa: BLE001 - the contract: a body never crashes the decoder
            raise unexpected(exc) from None


def _kind(value: Any) -> str:
    return {
        dict: "an object",
        list: "an array",
        str: "a string",
        bool: "a boolean",
        int: "an integer",
        float: "a number",
        type(None): "null",
    }.get(type(value), type(value).__name__)


class _Builder:
    """Builds the decoder tree; named types are built once and shared (recursion goes through a cell)."""

    def __init__(self, named: dict[str, Any]) -> None:
        self.named = named
        self.built: dict[str, Decoder] = {}

    def build(self, schema: Any) -> Decoder:
        if isinstance(schema, list):
            return self._union(schema)
        if isinstance(schema, str):
            if schema in _PRIMITIVES:
                return self._primitive(schema)
            return self._named(schema)
        kind = schema["type"]
        if isinstance(kind, (dict, list)) or (
            isinstance(kind, str)
            and kind not in _PRIMITIVES
            and kind not in ("record", "error", "enum", "fixed", "array", "map")
        ):
            return self.build(kind)
        if kind in ("record", "error", "enum", "fixed"):
            return self._named(schema["name"], schema)
        if kind == "array":
            return self._array(self.build(schema["items"]))
        if kind == "map":
            return self._map(self.build(schema["values"]))
        return self._logical(schema, self._primitive(kind))

    def _named(self, name: str, schema: Any = None) -> Decoder:
        if name in self.built:
            return self.built[name]
        schema = self.named[name] if schema is None else schema
        cell: list[Decoder] = []
        self.built[name] = lambda value: cell[0](value)  # a recursive reference resolves later
        kind = schema["type"]
        if kind in ("record", "error"):
            decoder = self._record(schema)
        elif kind == "enum":
            decoder = self._enum(schema)
        else:
            decoder = self._logical(schema, self._fixed(schema))
        cell.append(decoder)
        self.built[name] = decoder
        return decoder

    def _record(self, schema: dict) -> Decoder:
        fields = []
        for field in schema["fields"]:
            decoder = self.build(field["type"])
            if "default" in field:
                branch = field["type"][0] if isinstance(field["type"], list) else field["type"]
                default: tuple[Decoder, Any] | None = (self.build(branch), field["default"])
            else:
                default = None
            fields.append((field["name"], decoder, default))
        known = frozenset(name for name, _, _ in fields)
        record_name = schema["name"]

        def decode_record(value: Any) -> dict:
            if type(value) is not dict:
                raise _Mismatch(f"expected an object (record {record_name}), got {_kind(value)}")
            out = {}
            for name, decoder, default in fields:
                try:
                    item = value[name]
                except KeyError:
                    if default is None:
                        mismatch = _Mismatch("required field is missing")
                        mismatch.segments.append(f".{name}")
                        raise mismatch from None
                    out[name] = default[0](default[1])
                    continue
                try:
                    out[name] = decoder(item)
                except _Mismatch as exc:
                    exc.segments.append(f".{name}")
                    raise
            if len(value) > len(out) or not known.issuperset(value):
                unknown = sorted(str(key) for key in value if key not in known)
                raise _Mismatch(f"unknown field(s) {', '.join(unknown)} in record {record_name}")
            return out

        return decode_record

    def _union(self, branches: list) -> Decoder:
        decoders: dict[str, Decoder] = {}
        for branch in branches:
            label = _union_label(branch)
            if label != "null":
                decoders[label] = self.build(branch)
        nullable = "null" in (_union_label(b) for b in branches)
        expected = " or ".join([f'{{"{label}": ...}}' for label in decoders] + (["null"] if nullable else []))

        def decode_union(value: Any) -> Any:
            if value is None:
                if nullable:
                    return None
            elif type(value) is dict and len(value) == 1:
                ((label, inner),) = value.items()
                decoder = decoders.get(label)
                if decoder is not None:
                    try:
                        return decoder(inner)
                    except _Mismatch as exc:
                        exc.segments.append(f"[{label!r}]")
                        raise
            raise _Mismatch(f"expected a union value {expected}, got {shorten(_kind(value), 60)}")

        return decode_union

    @staticmethod
    def _enum(schema: dict) -> Decoder:
        symbols = frozenset(schema["symbols"])
        name = schema["name"]

        def decode_enum(value: Any) -> str:
            if type(value) is str and value in symbols:
                return value
            raise _Mismatch(f"{shorten(repr(value), 80)} is not a symbol of enum {name}")

        return decode_enum

    @staticmethod
    def _array(items: Decoder) -> Decoder:
        def decode_array(value: Any) -> list:
            if type(value) is not list:
                raise _Mismatch(f"expected an array, got {_kind(value)}")
            out = []
            for index, item in enumerate(value):
                try:
                    out.append(items(item))
                except _Mismatch as exc:
                    exc.segments.append(f"[{index}]")
                    raise
            return out

        return decode_array

    @staticmethod
    def _map(values: Decoder) -> Decoder:
        def decode_map(value: Any) -> dict:
            if type(value) is not dict:
                raise _Mismatch(f"expected an object (map), got {_kind(value)}")
            out = {}
            for key, item in value.items():
                try:
                    out[key] = values(item)
                except _Mismatch as exc:
                    exc.segments.append(f"[{shorten(repr(key), 60)}]")
                    raise
            return out

        return decode_map

    @staticmethod
    def _fixed(schema: dict) -> Decoder:
        size = schema["size"]
        decode_bytes = _Builder._primitive("bytes")

        def decode_fixed(value: Any) -> bytes:
            data = decode_bytes(value)
            if len(data) != size:
                raise _Mismatch(f"expected {size} bytes (fixed {schema['name']}), got {len(data)}")
            return data

        return decode_fixed

    @staticmethod
    def _logical(schema: dict, base: Decoder) -> Decoder:
        logical = schema.get("logicalType")
        reader = _LOGICAL_READERS.get(f"{schema['type']}-{logical}") if logical else None
        if reader is None:
            return base  # the spec: an unknown logical type is read as its underlying type
        precision = schema.get("precision") if logical == "decimal" else None

        def decode_logical(value: Any) -> Any:
            data = base(value)
            if precision is not None:
                digits = len(str(abs(int.from_bytes(data, "big", signed=True))))
                if digits > precision:
                    raise _Mismatch(f"decimal has {digits} digits, more than its precision {precision}")
            try:
                return reader(data, schema)
            except (ValueError, TypeError, OverflowError, ArithmeticError) as exc:
                raise _Mismatch(f"not a valid {logical}: {shorten(str(exc), 120)}") from None

        return decode_logical

    @staticmethod
    def _primitive(kind: str) -> Decoder:
        return _PRIMITIVE_DECODERS[kind]


def _union_label(branch: Any) -> str:
    """The key of a wrapped union value: the type name, the full name for named types."""
    if isinstance(branch, str):
        return branch
    if isinstance(branch, dict):
        if branch.get("type") in ("record", "error", "enum", "fixed"):
            return branch["name"]
        return _union_label(branch["type"])
    return "union"


def _read_varint(data: bytes, position: int) -> tuple[int, int]:
    """An Avro int/long (zig-zag varint) at ``position``: (value, next position)."""
    result = shift = 0
    while True:
        if position >= len(data) or shift > 63:
            raise ValueError("truncated or overlong varint")
        byte = data[position]
        position += 1
        result |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return (result >> 1) ^ -(result & 1), position


def _read_big_decimal(data: bytes, schema: Any = None) -> Decimal:
    """Avro 1.12 ``big-decimal`` (bytes): the unscaled value as Avro ``bytes`` (a length, then two's complement
    big-endian), then the scale as an Avro ``int``, as Java's ``Conversions.BigDecimalConversion`` writes
    it. fastavro has no reader for it: without this the body would reach the model as raw bytes, where the
    generated field is a Decimal."""
    length, position = _read_varint(data, 0)
    if length < 1 or position + length > len(data):
        raise ValueError("the unscaled value's length does not fit the bytes")
    unscaled = int.from_bytes(data[position : position + length], "big", signed=True)
    scale, position = _read_varint(data, position + length)
    if position != len(data):
        raise ValueError("bytes left over after the scale")
    if not _INT[0] <= scale <= _INT[1]:
        raise ValueError("the scale is out of range for an int")
    return Decimal(f"{unscaled}E{-scale}")  # exact: Decimal arithmetic would round to 28 digits


_LOGICAL_READERS: dict[str, Callable[..., Any]] = {**LOGICAL_READERS, "bytes-big-decimal": _read_big_decimal}


def _decode_null(value: Any) -> None:
    if value is not None:
        raise _Mismatch(f"expected null, got {_kind(value)}")


def _decode_boolean(value: Any) -> bool:
    if type(value) is not bool:
        raise _Mismatch(f"expected a boolean, got {_kind(value)}")
    return value


def _integer(kind: str, low: int, high: int) -> Decoder:
    def decode_integer(value: Any) -> int:
        if type(value) is not int:
            raise _Mismatch(f"expected an integer ({kind}), got {_kind(value)}")
        if not low <= value <= high:
            raise _Mismatch(f"{shorten(str(value), 40)} is out of range for {kind}")
        return value

    return decode_integer


# The smallest magnitude that rounds to infinity in IEEE 754 single precision (2**128 - 2**103).
_FLOAT_OVERFLOW = 2.0**128 - 2.0**103


def _out_of_range(value: float, kind: str) -> _Mismatch:
    if math.isnan(value):
        return _Mismatch(
            f"NaN cannot be a {kind}: JSON has no NaN, and the Avro JSON encoding carries a {kind} as a finite number"
        )
    if math.isinf(value):
        sign = "-" if value < 0 else ""
        return _Mismatch(
            f"number beyond the double range (JSON text such as {sign}1e400 decodes to {sign}inf); "
            f"a {kind} cannot hold it"
        )
    return _Mismatch(f"{shorten(repr(value), 40)} is beyond the range of a {kind} (it would be stored as infinity)")


def _number(kind: str, limit: float) -> Decoder:
    """float/double: an int or a finite float below ``limit`` in magnitude (JSON 1e400 decodes to inf)."""

    def decode_number(value: Any) -> float:
        if type(value) is float:
            if -limit < value < limit:  # False for inf, -inf and NaN
                return value
            raise _out_of_range(value, kind)
        if type(value) is int:
            try:
                result = float(value)
            except OverflowError:
                raise _Mismatch(f"integer is too large for a {kind}") from None
            if not -limit < result < limit:
                raise _Mismatch(f"integer is too large for a {kind}")
            return result
        raise _Mismatch(f"expected a number, got {_kind(value)}")

    return decode_number


def _decode_string(value: Any) -> str:
    if type(value) is not str:
        raise _Mismatch(f"expected a string, got {_kind(value)}")
    return value


def _decode_bytes(value: Any) -> bytes:
    if type(value) is not str:
        raise _Mismatch(f"expected a string of code points 0-255 (bytes), got {_kind(value)}")
    try:
        return value.encode("iso-8859-1")
    except UnicodeEncodeError:
        raise _Mismatch("bytes must be a string of code points 0-255 (Avro JSON encoding)") from None


_PRIMITIVE_DECODERS: dict[str, Decoder] = {
    "null": _decode_null,
    "boolean": _decode_boolean,
    "int": _integer("int", *_INT),
    "long": _integer("long", *_LONG),
    "float": _number("float", _FLOAT_OVERFLOW),
    "double": _number("double", math.inf),
    "string": _decode_string,
    "bytes": _decode_bytes,
}
