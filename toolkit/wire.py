"""Record values in Confluent's schema-registry wire format, beside the toolkit's ``{header, body}`` envelope.

Confluent's serializers (Java, Go, .NET, Python) write the value as::

    byte 0       magic byte, always 0
    bytes 1-4    the schema id, a big-endian unsigned 32-bit integer, as the registry assigned it
    bytes 5-     the payload: Avro binary (schemaless, the writer's schema is the id's) or UTF-8 JSON

Each topic has a value format (:class:`ValueFormat`): ``envelope`` (the default), ``confluent``, or
``auto`` (a first byte 0 means Confluent's format, anything else an envelope: JSON never starts with 0).

A record in the wire format carries no envelope header; :func:`synthesize_header` makes one (the rules are
in its docstring). Nothing here does I/O: looking the id up in the registry is the pipeline's ``resolve``.
Every failure is a :class:`~toolkit.errors.MessageError`: stage ``decode`` for the bytes (no value, magic
byte not 0, shorter than the 5-byte prefix, a payload that does not decode with the id's schema or leaves
bytes over), ``validation`` for a JSON payload its JSON Schema refuses.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, NamedTuple

from toolkit import _args
from toolkit.envelope import Header, load_json
from toolkit.errors import MessageError, safe_str

MAGIC = 0
PREFIX_BYTES = 5
SETTING = "EPISTLE_VALUE_FORMATS"
DEFAULT_TOPIC = "*"
"""The key of :data:`SETTING` (and of ``value_formats=``) that sets the format of every topic not listed."""


class ValueFormat(StrEnum):
    """How a topic's record values are read."""

    ENVELOPE = "envelope"  # the toolkit's {header, body} JSON (the default)
    CONFLUENT = "confluent"  # magic byte 0, 4-byte schema id, Avro binary or JSON
    AUTO = "auto"  # magic byte 0 -> confluent, anything else -> envelope

    _missing_ = classmethod(_args.not_a_member)


class KeyFormat(StrEnum):
    """How a topic's record keys are read (``EPISTLE_KEY_FORMATS``) or written (``EPISTLE_PRODUCER_KEY_FORMATS``)."""

    RAW = "raw"  # bytes as they are (the default): the handler gets them in Message.key
    CONFLUENT = "confluent"  # magic byte 0, 4-byte schema id, Avro binary or JSON (subject <topic>-key)
    AUTO = "auto"  # magic byte 0 -> confluent, anything else -> raw (reading only)

    _missing_ = classmethod(_args.not_a_member)


KEY_SETTING = "EPISTLE_KEY_FORMATS"
PRODUCER_SETTING = "EPISTLE_PRODUCER_VALUE_FORMATS"
PRODUCER_KEY_SETTING = "EPISTLE_PRODUCER_KEY_FORMATS"


def parse_value_formats(value: Any) -> dict[str, ValueFormat]:
    """``topic -> format`` from a mapping, a JSON object, or ``topic=format`` pairs separated by commas
    (what :data:`SETTING` holds). The topic ``*`` sets the format of every topic not listed.

    Raises:
        ValueError: an entry is not ``topic=format`` or names a format other than envelope, confluent, auto
            (the message quotes the entry and gives an example).
    """
    return parse_formats(value, ValueFormat)


def parse_formats(value: Any, kind: type[StrEnum], allowed: Iterable[StrEnum] | None = None) -> dict[str, Any]:
    """``topic -> format`` of enum ``kind`` (:class:`ValueFormat` or :class:`KeyFormat`), as
    :func:`parse_value_formats` reads it; ``allowed`` narrows the members accepted (a producer writes
    ``envelope`` or ``confluent``, never ``auto``).

    Raises:
        ValueError: an entry is not ``topic=format`` or names a format not allowed (quoted, with an example).
    """
    members = [m.value for m in (allowed if allowed is not None else kind)]  # type: ignore[attr-defined]
    names = ", ".join(members[:-1]) + f" or {members[-1]}" if len(members) > 1 else members[0]
    other = members[-1] if members[-1] != "confluent" else members[0]
    example = f"e.g. payments=confluent,orders={other} (topic=format pairs; * for every other topic)"
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("{"):
            try:
                value = json.loads(text)
            except ValueError as exc:
                raise ValueError(f"not a JSON object ({exc}); use {example}") from None
        else:
            pairs = []
            for item in (part.strip() for part in text.split(",")):
                if not item:
                    continue
                topic, sep, name = item.partition("=")
                if not sep:
                    raise ValueError(f"{item!r} is not topic=format; use {example}")
                pairs.append((topic, name))
            value = pairs
    if isinstance(value, Mapping):
        value = list(value.items())
    if not isinstance(value, Iterable):
        raise ValueError(f"expected topic=format pairs, got a {type(value).__name__}; use {example}")
    formats: dict[str, Any] = {}
    for item in value:
        if not isinstance(item, tuple | list) or len(item) != 2:
            raise ValueError(f"{safe_str(item, repr)[:80]} is not a topic=format pair; use {example}")
        topic, name = item
        if not isinstance(topic, str) or not topic.strip() or any(c.isspace() for c in topic.strip()):
            raise ValueError(f"{topic!r} is not a topic name; use {example}")
        text = name.strip().lower() if isinstance(name, str) else name
        if text not in members:
            raise ValueError(f"{topic.strip()}={name!r}: the format must be {names}; use {example}") from None
        formats[topic.strip()] = kind(text)
    return formats


class SchemaIdKey(NamedTuple):
    """What the pipeline resolves for a record in the wire format: its schema id (a tuple, like the
    ``(subject, version)`` of an envelope, so the runtime looks both up the same way)."""

    schema_id: int


# Not frozen (a frozen dataclass's __init__ costs 3x, and one is made per record), still hashable: never mutated
@dataclass(slots=True, unsafe_hash=True)
class WireRecord:
    """A value in Confluent's wire format, split: the schema id and the payload still undecoded (its schema
    comes from the registry). ``header`` is None: the pipeline synthesizes one once the schema is known."""

    schema_id: int
    payload: bytes
    header: None = None


def looks_confluent(value: Any) -> bool:
    """The ``auto`` test: a value whose first byte is the magic byte 0."""
    return isinstance(value, bytes | bytearray) and len(value) > 0 and value[0] == MAGIC


def key_looks_confluent(key: Any) -> bool:
    """The ``auto`` test for a key: the magic byte 0, the whole 5-byte prefix, and a schema id other than 0
    (registries number schemas from 1). Kafka's Integer and Long serializers write small numbers with
    leading zero bytes; such keys (shorter than the prefix, or with id 0) are left raw rather than taken for
    Confluent's wire format. A large number still looks like a prefix: name such topics ``raw``."""
    return (
        isinstance(key, bytes | bytearray) and len(key) >= PREFIX_BYTES and key[0] == MAGIC and any(key[1:PREFIX_BYTES])
    )


def split(value: bytes | None, part: str = "value") -> WireRecord:
    """The 5-byte prefix checked and read (``part``: ``value`` or ``key``, for the reasons).

    Raises:
        MessageError: stage ``decode``: no value (a tombstone), not bytes, a magic byte other than 0, or
            fewer bytes than the prefix.
    """
    if value.__class__ is bytes and len(value) >= PREFIX_BYTES and value[0] == MAGIC:  # the common case, first
        return WireRecord(int.from_bytes(value[1:PREFIX_BYTES], "big"), value[PREFIX_BYTES:])  # type: ignore[index]
    if value is None:
        raise MessageError("decode", f"the record has no {part}" + (" (a tombstone)" if part == "value" else ""))
    if not isinstance(value, bytes | bytearray):
        raise MessageError("decode", f"the record {part} is a {type(value).__name__}, not bytes")
    if not value:
        raise MessageError(
            "decode",
            f"the record {part} is empty; Confluent's wire format starts with the magic byte 0 and a 4-byte schema id",
        )
    if value[0] != MAGIC:
        seen = f"0x{value[0]:02x}" + (f" ({chr(value[0])!r})" if 32 <= value[0] < 127 else "")
        if part != "value":
            hint = f"; read the topic's keys with the key format auto or raw ({KEY_SETTING})"
        elif value[:1] in (b"{", b"["):
            hint = (
                ": the value looks like JSON, e.g. a {header, body} envelope; read the topic with the value "
                "format auto or envelope"
            )
        else:
            hint = ""
        lead = "" if part == "value" else f"{part} "
        raise MessageError("decode", f"{lead}magic byte is {seen}, not 0: not Confluent's wire format{hint}")
    if len(value) < PREFIX_BYTES:
        raise MessageError(
            "decode",
            f"truncated{'' if part == 'value' else ' ' + part}: {len(value)} byte(s), Confluent's wire format "
            f"needs at least {PREFIX_BYTES} (the magic byte 0 and a 4-byte schema id)",
        )
    return WireRecord(int.from_bytes(value[1:PREFIX_BYTES], "big"), bytes(value[PREFIX_BYTES:]))


def _big_decimal(data: bytes, writer_schema: Any = None, reader_schema: Any = None) -> Any:
    """fastavro calls its logical readers with both schemas."""
    from toolkit.validation.avro import _read_big_decimal

    return _read_big_decimal(data, writer_schema)


def avro_reader(document: Any, schema_id: int) -> Callable[[bytes], Any]:
    """A function from an Avro binary payload to its Python value (records as dicts, unions unwrapped,
    logical types converted, ``big-decimal`` as Java writes it), as fastavro's ``schemaless_reader``
    reads it with the id's schema as the writer's.

    The function raises MessageError stage ``decode`` when the payload does not decode (truncated, an
    invalid union or enum index, a string that is not UTF-8 ...) or leaves bytes over.
    """
    from fastavro import parse_schema, schemaless_reader
    from fastavro.read import LOGICAL_READERS

    LOGICAL_READERS.setdefault("bytes-big-decimal", _big_decimal)  # fastavro's hook for custom types
    parsed = parse_schema(document)  # with fastavro's parsed marker: not parsed again per record
    unbounded = zero_width_repeat(document)

    def read(payload: bytes) -> Any:
        if unbounded:  # refused before fastavro, which would loop over a claimed count of empty items
            raise MessageError(
                "schema",
                f"schema id {schema_id} has an array or map of {unbounded}, which takes no bytes: a record can "
                "claim billions of them in a few bytes, so records of this schema are not read; give the items "
                "a type that takes bytes (e.g. boolean) in a new schema version",
            )
        buffer = io.BytesIO(payload)
        try:
            value = schemaless_reader(buffer, parsed, None)
        except RecursionError:
            raise MessageError("decode", f"Avro payload of schema id {schema_id} nested too deeply to decode") from None
        except Exception as exc:  # noqa: BLE001 - fastavro raises EOFError, IndexError, UnicodeDecodeError ...
            what = f"{type(exc).__name__}: {safe_str(exc)}".rstrip(": ")
            raise MessageError(
                "decode",
                f"the payload is not Avro binary of schema id {schema_id} ({len(payload)} bytes): {what[:300]}",
            ) from None
        left = len(payload) - buffer.tell()
        if left:
            raise MessageError(
                "decode",
                f"{left} byte(s) left over after the Avro value of schema id "
                f"{schema_id} ({len(payload)} bytes): written with another schema?",
            )
        return value

    return read


def zero_width_repeat(document: Any) -> str | None:
    """What an Avro schema repeats (in an array or map) that takes no bytes when written, e.g. ``null`` or an
    empty record, or None. A reader cannot bound how many of those a payload claims."""
    named: dict[str, Any] = {}

    def zero(schema: Any, visiting: frozenset[str]) -> bool:
        if isinstance(schema, str):
            if schema == "null":
                return True
            target = named.get(schema)
            return target is not None and schema not in visiting and zero(target, visiting | {schema})
        if isinstance(schema, list):  # a union writes its branch index
            return False
        if not isinstance(schema, dict):
            return False
        kind = schema.get("type")
        if isinstance(kind, (list, dict)) or (kind in named and kind not in visiting):
            return zero(kind, visiting)
        if kind in ("record", "error"):
            return all(zero(field.get("type"), visiting) for field in schema.get("fields") or [])
        if kind == "fixed":
            return schema.get("size") == 0
        return kind == "null"

    found: list[str] = []

    def walk(schema: Any, seen: set[int]) -> None:
        if found or id(schema) in seen:
            return
        if isinstance(schema, list):
            for branch in schema:
                walk(branch, seen)
            return
        if not isinstance(schema, dict):
            return
        seen.add(id(schema))
        kind = schema.get("type")
        if isinstance(schema.get("name"), str) and kind in ("record", "error", "enum", "fixed"):
            named[schema["name"]] = schema
            namespace = schema.get("namespace")
            if namespace and "." not in schema["name"]:
                named[f"{namespace}.{schema['name']}"] = schema
        if isinstance(kind, (list, dict)):
            walk(kind, seen)
        for field in schema.get("fields") or []:
            if isinstance(field, dict):
                walk(field.get("type"), seen)
        for key in ("items", "values"):
            if key in schema:
                inner = schema[key]
                walk(inner, seen)
                if not found and zero(inner, frozenset()):
                    found.append(f"{'items' if key == 'items' else 'values'} {json.dumps(inner)[:80]}")

    walk(document, set())
    return found[0] if found else None


def json_reader(schema_id: int, max_depth: int) -> Callable[[bytes], Any]:
    """A function from a JSON payload to its decoded JSON (strict UTF-8 JSON, as envelopes are read;
    ``max_depth`` counts the payload's own levels). Raises MessageError stage ``decode``."""

    def read(payload: bytes) -> Any:
        try:
            return load_json(payload, max_depth)
        except MessageError as exc:
            raise MessageError("decode", f"JSON payload of schema id {schema_id}: {exc.reason}") from None

    return read


def schema_message_type(document: Any, format_name: str) -> str | None:
    """The message type a schema names: an Avro named type's full name, a JSON Schema's ``title``."""
    if not isinstance(document, dict):
        return None
    if format_name == "AVRO":
        name = document.get("name")
        if not isinstance(name, str) or not name:
            return None
        namespace = document.get("namespace")
        return name if "." in name or not isinstance(namespace, str) or not namespace else f"{namespace}.{name}"
    title = document.get("title")
    return title.strip() if isinstance(title, str) and title.strip() else None


HEADER_NAMES = ("messageType", "schemaName", "correlationId", "messageId", "timestamp", "producer")


def header_fields(headers: Iterable[tuple[str, Any]] | None) -> dict[str, str]:
    """The envelope header fields a record carries as Kafka headers (what the toolkit's producer writes
    beside a wire-format value): the last of each name, when it is non-empty UTF-8; others are ignored."""
    if not headers:
        return {}
    found: dict[str, str] = {}
    for name, raw in headers:
        if name in HEADER_NAMES and isinstance(raw, bytes | bytearray) and raw:
            try:
                found[name] = bytes(raw).decode("utf-8")
            except UnicodeDecodeError:
                continue
    return found


def _zoned(value: str | None) -> str | None:
    if value is None:
        return None
    try:
        return value if datetime.fromisoformat(value).tzinfo is not None else None
    except ValueError:
        return None


def synthesize_header(
    fields: Mapping[str, str],
    *,
    message_type: str,
    schema_name: str,
    version: int,
    topic: str,
    partition: int,
    offset: int,
    timestamp: int | None,
) -> Header:
    """The envelope header of a record in the wire format.

    - ``messageType``, ``schemaName``, ``schemaVersion``: as given (the pipeline's choice; the version is
      the registry's for the id, never a header's);
    - ``messageId``: the record's ``messageId`` Kafka header, else ``<topic>/<partition>/<offset>``
      (deterministic: a redelivered record has the same id; ``/`` never occurs in a topic name);
    - ``correlationId``: the ``correlationId`` header, else the messageId (the record starts a conversation);
    - ``timestamp``: the ``timestamp`` header when it is ISO-8601 with a timezone, else the broker's
      timestamp (UTC, milliseconds), else the time the record was read;
    - ``producer``: the ``producer`` header, else empty.
    """
    message_id = fields.get("messageId") or f"{topic}/{partition}/{offset}"
    sent = _zoned(fields.get("timestamp")) if fields else None
    if sent is None:
        sent = _broker_time(timestamp)
    return _make_header(
        {
            "message_type": message_type,
            "schema_name": schema_name,
            "schema_version": str(version),
            "correlation_id": fields.get("correlationId") or message_id,
            "message_id": message_id,
            "timestamp": sent,
            "producer": fields.get("producer", ""),
        }
    )


_HEADER_FIELDS = frozenset(Header.model_fields)
_new_header = Header.__new__
_set = object.__setattr__


def _construct(values: dict[str, str]) -> Header:
    """A Header of trusted values: what ``model_construct`` makes (every field given, no extras, no private
    attributes) without its walk over the fields in Python, which cost a wire record more than its Avro
    decode. Used only when :func:`_check_construct` finds it equal to ``model_construct``."""
    header = _new_header(Header)
    _set(header, "__dict__", values)
    _set(header, "__pydantic_fields_set__", set(_HEADER_FIELDS))
    _set(header, "__pydantic_extra__", None)
    _set(header, "__pydantic_private__", None)
    return header


def _check_construct() -> Callable[[dict[str, str]], Header]:
    """:func:`_construct` if it makes what ``model_construct`` makes with this pydantic, else
    ``model_construct`` itself (another pydantic may keep a model's state differently)."""
    values: dict[str, Any] = {name: "1" for name in Header.model_fields}
    try:
        made, reference = _construct(dict(values)), Header.model_construct(**values)
        same = (
            made == reference
            and made.model_dump() == reference.model_dump()
            and made.model_fields_set == reference.model_fields_set
            and made.version == 1
        )
    except Exception:  # noqa: BLE001 - any doubt: the documented constructor
        same = False
    return _construct if same else lambda fields: Header.model_construct(None, **fields)


_make_header = _check_construct()


_last_time: tuple[int | None, str] = (None, "")  # the last broker timestamp formatted: a batch shares a few


def _broker_time(timestamp: int | None) -> str:
    """The broker's timestamp (epoch milliseconds) as ISO-8601 in UTC, else now."""
    global _last_time
    last = _last_time  # one read: another io thread may replace it meanwhile
    if timestamp is not None and last[0] == timestamp:
        return last[1]
    if timestamp is not None:
        try:
            text = datetime.fromtimestamp(timestamp / 1000, UTC).isoformat(timespec="milliseconds")
        except (OverflowError, OSError, ValueError):  # a producer-set time beyond the years datetime holds
            pass
        else:
            _last_time = (timestamp, text)
            return text
    return datetime.now(UTC).isoformat(timespec="milliseconds")


@dataclass(frozen=True, slots=True)
class WireSchema:
    """What the pipeline resolves a schema id to: the registry's answer, the compiled schema (JSON Schema
    validation) and the payload reader, built once per id."""

    schema_id: int
    schema: Any  # toolkit.registry.base.SchemaById
    compiled: Any  # the CompiledSchema
    read: Callable[[bytes], Any]
    message_type: str | None
    avro: bool

    @classmethod
    def build(cls, schema: Any, compiled: Any, max_depth: int) -> WireSchema:
        document = getattr(compiled, "document", None)
        if document is None:
            document = json.loads(schema.text)
        avro = str(schema.format) == "AVRO"
        # An Avro schema using other subjects' named types is read with them inlined (its "standalone" form).
        standalone = getattr(compiled, "standalone", None) or document
        read = avro_reader(standalone, schema.schema_id) if avro else json_reader(schema.schema_id, max_depth)
        return cls(schema.schema_id, schema, compiled, read, schema_message_type(document, str(schema.format)), avro)
