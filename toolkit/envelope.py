"""The envelope every record carries, and the pure step from record bytes to (header, body).

    {"header": {"messageType", "schemaName", "schemaVersion", "correlationId", "messageId", "timestamp",
                "producer"},
     "body": {...}}

All header fields are strings on the wire (camelCase); in Python they are snake_case attributes of
:class:`Header`. ``timestamp`` is ISO-8601 with a timezone; ``schemaVersion`` is a positive integer written
without sign, leading zeros or decimals ("1", "2"; not "01", "-1", "1.0").

Nothing here does I/O. Every failure is a :class:`~toolkit.errors.MessageError` with stage ``"decode"``
(bytes are not UTF-8 / not JSON / in Confluent's schema-registry wire format / nested too deep / rejected
by a custom serializer) or ``"envelope"``
(the document is not an envelope).

The default decoder refuses the ``NaN``/``Infinity`` tokens (not JSON). A number beyond the double range
(``1e400``) is valid JSON text and decodes to ``inf``: the body's schema decides, and the validators refuse a
non-finite number wherever the type is a number (Avro ``float``/``double``, JSON Schema ``number``/``integer``),
naming its path; they refuse NaN/inf too when a custom serializer lets the tokens through.
"""

from __future__ import annotations

import json
import sys
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, Protocol, cast, runtime_checkable

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints, ValidationError
from pydantic.alias_generators import to_camel

from toolkit import _args
from toolkit.errors import MessageError, json_error_text, safe_str
from toolkit.layout import SCHEMA_VERSION

MAX_DEPTH = 4096
"""The default of ``EPISTLE_MAX_NESTING_DEPTH``: the deepest JSON nesting accepted in a record, counted over
the whole envelope (the envelope object is level 1, the body object level 2, each object or array inside
it one more). An Avro recursive record nests two levels per node (the record, then its union wrapper
``{"Node": ...}``), so 4096 admits a linked list of about 2,000 nodes."""
LIMIT_DEPTH = 5000
"""The highest accepted setting. Deeper documents may exhaust a thread's 8 MB stack in the C and Rust
parsers and validators (a crash, not an exception: jsonschema explaining a 10,000-level body did; 8,000
did not)."""


def _iso_timestamp_with_zone(value: str) -> str:
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError("not an ISO-8601 timestamp (e.g. 2024-05-01T12:00:00Z)") from None
    if parsed.tzinfo is None:
        raise ValueError("ISO-8601 timestamp without a timezone; add Z or +hh:mm")
    return value


def _positive_integer_string(value: str) -> str:
    if not SCHEMA_VERSION.fullmatch(value):
        raise ValueError('must be a positive integer without sign, leading zeros or decimals, e.g. "1"')
    return value


NonEmpty = Annotated[str, StringConstraints(min_length=1)]


class Header(BaseModel):
    """The envelope header: camelCase on the wire, snake_case attributes, every field a string."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, strict=True, frozen=True, extra="ignore")

    message_type: NonEmpty
    schema_name: NonEmpty
    schema_version: Annotated[str, AfterValidator(_positive_integer_string)]
    correlation_id: str
    message_id: NonEmpty
    timestamp: Annotated[str, AfterValidator(_iso_timestamp_with_zone)]
    producer: str

    @property
    def version(self) -> int:
        """``schemaVersion`` as an int (int() is cheaper than a cached_property, which locks in 3.11)."""
        return int(self.schema_version)

    @property
    def sent_at(self) -> datetime:
        """``timestamp`` as an aware datetime."""
        return datetime.fromisoformat(self.timestamp)


class Envelope(BaseModel):
    """A whole envelope with the body left as decoded JSON (for producers and tests)."""

    model_config = ConfigDict(strict=True, frozen=True)

    header: Header
    body: Any = Field(...)

    def to_bytes(self) -> bytes:
        """What a producer puts in the record value: :func:`encode_envelope` of the camelCase header."""
        return encode_envelope(self.header.model_dump(by_alias=True), self.body)


def header_fields(
    schema_name: str,
    version: int | str,
    *,
    message_type: str,
    producer: str,
    message_id: str | None = None,
    correlation_id: str | None = None,
    timestamp: str | None = None,
) -> dict[str, str]:
    """The wire header (camelCase) of a new message, defaults filled: a new UUID as ``message_id``, the message
    id as ``correlation_id`` (the message starts a conversation), now (UTC, milliseconds) as ``timestamp``.

    Not checked: ``Header.model_validate(header_fields(...))`` checks it, while tests and the demo send headers a
    consumer must refuse.
    """
    message_id = message_id or str(uuid.uuid4())
    return {
        "messageType": message_type,
        "schemaName": schema_name,
        "schemaVersion": str(version),
        "correlationId": correlation_id or message_id,
        "messageId": message_id,
        "timestamp": timestamp or datetime.now(UTC).isoformat(timespec="milliseconds"),
        "producer": producer,
    }


def encode_envelope(header: Mapping[str, Any], body: Any) -> bytes:
    """``{"header": ..., "body": ...}`` as record value bytes (:func:`compact_json`)."""
    return compact_json({"header": dict(header), "body": body})


def compact_json(value: Any) -> bytes:
    """Compact strict JSON in UTF-8: what the toolkit writes in record values (envelopes, dead letters, JSON
    bodies in Confluent's framing). Strings UTF-8 cannot hold (lone surrogates) make the whole document ASCII
    with \\u escapes, which every JSON reader turns back into the same strings.

    Raises:
        ValueError: ``value`` holds NaN or an infinity (JSON has neither).
    """
    try:
        return json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode("utf-8")
    except UnicodeEncodeError:
        return json.dumps(value, ensure_ascii=True, allow_nan=False, separators=(",", ":")).encode("ascii")


@runtime_checkable
class EnvelopeSerializer(Protocol):
    """Turns record bytes into the envelope document (a dict with ``header`` and ``body``).

    Any exception it raises is reported as a ``decode`` failure of the record.
    """

    def loads(self, data: bytes) -> Any: ...


def reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


class JsonSerializer:
    """The default: strict UTF-8 JSON (no NaN/Infinity, no BOM, no UTF-16/32 guessing)."""

    # One decoder for every record: json.loads with an option builds a new JSONDecoder per call.
    _decoder = json.JSONDecoder(parse_constant=reject_constant)

    def loads(self, data: bytes) -> Any:
        return self._decoder.decode(data.decode("utf-8"))


SerializerLike = EnvelopeSerializer | Callable[[bytes], Any]


@dataclass(slots=True)  # (not frozen: a frozen dataclass's __init__ costs 3x, and one is made per record)
class DecodedRecord:
    """The result of :func:`decode_record`: a valid header and the body as decoded JSON."""

    header: Header
    body: Any


def depth_exceeds(value: Any, limit: int = MAX_DEPTH) -> bool:
    """True when ``value`` nests lists/dicts deeper than ``limit`` (iterative, safe on any depth)."""
    _args.integer("limit", limit)
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children: Iterable[Any]
        if isinstance(item, dict):
            children = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))
    return False


def allow_depth(max_depth: int) -> None:
    """Raise Python's recursion limit (never lower it) so that documents ``max_depth`` levels deep can be
    parsed, validated and decoded: ``json`` and the Avro decoder use up to two frames per level."""
    needed = 2 * _args.integer("max_depth", max_depth, low=1, high=LIMIT_DEPTH) + 2000
    if sys.getrecursionlimit() < needed:
        sys.setrecursionlimit(needed)


def _too_deep(max_depth: int) -> MessageError:
    return MessageError(
        "decode",
        f"nested deeper than {max_depth} levels (EPISTLE_MAX_NESTING_DEPTH counts the "
        "JSON nesting levels of the whole envelope)",
    )


def load_json(value: bytes, max_depth: int = MAX_DEPTH) -> Any:
    """Bytes -> decoded JSON, as a record is read: strict UTF-8 JSON (no NaN/Infinity), at most ``max_depth``
    levels (for the JSON payload of a record in Confluent's wire format, :mod:`toolkit.wire`).

    Raises:
        MessageError: stage ``"decode"`` (not UTF-8, not JSON, too deep).
    """
    return _load(value, None, max_depth, wire_hint=False)


def _load(
    value: bytes, serializer: SerializerLike | None, max_depth: int = MAX_DEPTH, *, wire_hint: bool = True
) -> Any:
    # An attribute look-up, not isinstance(serializer, EnvelopeSerializer): a runtime-checkable Protocol
    # check costs ~9 us per record (a third of the runtime's own overhead in the benchmark profile).
    loads = (
        _DEFAULT.loads if serializer is None else cast(Callable[[bytes], Any], getattr(serializer, "loads", serializer))
    )
    try:
        document = loads(value)
    except RecursionError:
        raise _too_deep(max_depth) from None
    except Exception as exc:
        raise MessageError(
            "decode", _load_failure(value, exc, custom=serializer is not None, wire_hint=wire_hint)
        ) from None
    # Counting brackets is a cheap upper bound on the depth; walk only when it could be too deep.
    if value.count(b"[") + value.count(b"{") > max_depth and depth_exceeds(document, max_depth):
        raise _too_deep(max_depth)
    return document


load_document = _load  # (the consumer's fast lane: its serializer and max_depth checked once, not per record)


def _load_failure(value: bytes, exc: Exception, *, custom: bool, wire_hint: bool = True) -> str:
    """Why the bytes did not load. A custom serializer's error is its own (the record is still at
    fault) and is kept as it is; the default JSON reader's error names Confluent's wire format when the
    bytes are in it, since that, not the JSON error, is what the producer got wrong."""
    wire = None if custom or not wire_hint else _wire_format(value)
    if wire is not None:
        return wire
    if isinstance(exc, UnicodeDecodeError) and not custom:
        return f"not UTF-8 ({exc.reason} at byte {exc.start})"
    if isinstance(exc, json.JSONDecodeError) and not custom:
        return f"not JSON: {json_error_text(exc)}"
    return f"{type(exc).__name__}: {safe_str(exc)}"  # e.g. NaN refused, or the custom serializer's words


def _wire_format(value: bytes) -> str | None:
    """The reason for a record in Confluent's wire format (what its schema-registry serializers write:
    magic byte 0, the schema id as a 4-byte big-endian int, then Avro binary, JSON or Protobuf), else
    None. Asked only once decoding failed, so it costs nothing on the way of a good record."""
    if len(value) < 5 or value[0] != 0:
        return None
    schema_id = int.from_bytes(value[1:5], "big")
    return (
        f"Confluent wire format (magic byte 0, schema id {schema_id}, {len(value) - 5} bytes of "
        "Avro, JSON or Protobuf after it): the topic is read as {header, body} envelopes of UTF-8 JSON; "
        "set its value format to confluent or auto (EPISTLE_VALUE_FORMATS) to read such records"
    )


def _error_details(exc: ValidationError, prefix: str) -> list[dict[str, str]]:
    details = []
    for error in exc.errors(include_url=False):
        path = "/".join([prefix, *(str(part) for part in error["loc"])])
        details.append({"path": "/" + path, "message": error["msg"].removeprefix("Value error, ")})
    return details


def parse_envelope(document: Any) -> DecodedRecord:
    """Check the envelope shape and the header.

    Raises:
        MessageError: stage ``"envelope"``; ``details`` lists ``{"path", "message"}`` per problem.
    """
    if not isinstance(document, dict):
        raise MessageError(
            "envelope",
            f"the record is a JSON {_json_type(document)}, not an envelope object",
            details=[{"path": "/", "message": "expected an object with header and body"}],
        )
    missing = [name for name in ("header", "body") if name not in document]
    if missing:
        raise MessageError(
            "envelope",
            f"missing {' and '.join(missing)}",
            details=[{"path": f"/{name}", "message": "required"} for name in missing],
        )
    raw_header = document["header"]
    if not isinstance(raw_header, dict):
        raise MessageError(
            "envelope",
            f"header is a JSON {_json_type(raw_header)}, not an object",
            details=[{"path": "/header", "message": "expected an object"}],
        )
    try:
        header = Header.model_validate(raw_header, by_alias=True, by_name=False)
    except ValidationError as exc:
        details = _error_details(exc, "header")
        raise MessageError(
            "envelope", "invalid header: " + "; ".join(f"{d['path']}: {d['message']}" for d in details), details=details
        ) from None
    return DecodedRecord(header, document["body"])


def decode_record(
    value: bytes | None, serializer: SerializerLike | None = None, *, max_depth: int = MAX_DEPTH
) -> DecodedRecord:
    """Bytes of a record value -> header and body; ``max_depth`` is ``EPISTLE_MAX_NESTING_DEPTH`` (see
    :data:`MAX_DEPTH`; call :func:`allow_depth` once with it, as the consumer does, for more than Python's
    default recursion limit allows).

    Raises:
        MessageError: stage ``"decode"`` (not UTF-8, not JSON, too deep, serializer failed) or
            ``"envelope"`` (not an envelope object, header or body missing, header invalid).
    """
    if value is None:
        raise MessageError("decode", "the record has no value (a tombstone)")
    if value.__class__ is not bytes and not isinstance(value, bytes | bytearray):
        raise MessageError("decode", f"the record value is a {type(value).__name__}, not bytes")
    if max_depth.__class__ is not int or max_depth < 1:  # cheap on the hot path: a class identity check
        _args.integer("max_depth", max_depth, low=1, fix=" (EPISTLE_MAX_NESTING_DEPTH)")
    return parse_envelope(_load(value, serializer, max_depth))


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    return _JSON_TYPES.get(type(value), type(value).__name__)


_JSON_TYPES: dict[type, str] = {str: "string", list: "array", dict: "object"}


_DEFAULT = JsonSerializer()
