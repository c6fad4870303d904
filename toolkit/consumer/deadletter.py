"""The dead-letter record (docs/contracts.md, field by field in docs/dead-letters.md) and its inverse, the
original record it was made from.

Value (JSON)::

    {"original_message": <the original value as JSON, or base64 of its bytes when it is not JSON>,
     "original_encoding": "json" | "base64" | "null",
     "original_bytes": <base64 of the exact original value bytes; present when original_encoding is json>,
     "error": {"timestamp", "reason", "stage", "type", "message", "cause", "details"},
     "source": {"topic", "partition", "offset", "key", "keyEncoding", "timestamp", "timestampType",
                "consumerGroup", "attempts", "headers", and the broker's own coordinates, e.g. "amqp"},
     "shortened": <why; only in the shortened form of a dead letter too large for the producer>}

Re-serialising JSON is not byte-exact in general (spacing, key order, escapes, number forms), so the exact
bytes are always kept, and :func:`original_record` gives the record back from them: value, key, headers
(``source.headers``: ``[name, base64 | null]`` pairs, in order, null values and ``kafka_dlt-*`` ones
included) and timestamp. Key: the original key. Headers: the original headers less any ``kafka_dlt-*``
ones, then the ones Spring's ``DeadLetterPublishingRecoverer`` writes, with its encodings (partition as a
4-byte big-endian int, offset and timestamp as 8-byte big-endian longs, the rest UTF-8), so existing DLT
tooling reads ours.

Building is total: any value, key, headers and exception (lone surrogates, NaN, huge, deeply nested, an
exception whose ``str()`` raises) yields a record. Pure: building and parsing only; producing is the
runtime's job.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import reprlib
import struct
import traceback
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from toolkit import _args
from toolkit.envelope import compact_json, depth_exceeds, reject_constant
from toolkit.errors import InvalidArgument, InvalidArgumentType, safe_str

H_TOPIC = "kafka_dlt-original-topic"
H_PARTITION = "kafka_dlt-original-partition"
H_OFFSET = "kafka_dlt-original-offset"
H_TIMESTAMP = "kafka_dlt-original-timestamp"
H_TIMESTAMP_TYPE = "kafka_dlt-original-timestamp-type"
H_GROUP = "kafka_dlt-original-consumer-group"
H_FQCN = "kafka_dlt-exception-fqcn"
H_CAUSE_FQCN = "kafka_dlt-exception-cause-fqcn"
H_MESSAGE = "kafka_dlt-exception-message"
H_STACKTRACE = "kafka_dlt-exception-stacktrace"
DLT_PREFIX = "kafka_dlt-"

# confluent_kafka.TIMESTAMP_* -> Kafka's TimestampType names, as Spring writes them
TIMESTAMP_TYPES = {0: "NoTimestampType", 1: "CreateTime", 2: "LogAppendTime"}

MAX_TEXT = 64 * 1024
"""Longest reason, exception message or stack trace kept (characters); longer ones are cut and say so."""
SHORT_TEXT = 1024
"""The same in the shortened form of a dead letter too large for the dead-letter producer."""

Headers = list[tuple[str, bytes | None]]


@dataclass(frozen=True, slots=True)
class SourceRecord:
    """The consumed record a dead letter is about."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: Headers
    timestamp: int | None  # epoch milliseconds, None when the broker gave none
    timestamp_type: int = 0  # confluent_kafka.TIMESTAMP_* (0 none, 1 create time, 2 log append time)
    details: dict[str, Any] | None = None
    """Broker-specific coordinates added to the value's ``source`` (e.g. ``{"amqp": {...}}``: exchange,
    routing key, delivery tag ...); they never replace one of the fields above."""


@dataclass(frozen=True, slots=True)
class DeadLetterRecord:
    """What the runtime produces: ``topic``, ``key``, ``value`` and ``headers``."""

    topic: str
    key: bytes | None
    value: bytes
    headers: Headers


@dataclass(frozen=True, slots=True)
class OriginalRecord:
    """The record a dead letter was made from, as :func:`original_record` recovers it."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: Headers
    timestamp: int | None
    timestamp_type: str | None = None  # "CreateTime", "LogAppendTime", "NoTimestampType"; None if unknown


def dead_letter_topic(topic: str, suffix: str = ".dlq") -> str:
    return f"{topic}{suffix}"


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _finite(text: str) -> float:
    number = float(text)
    if not math.isfinite(number):  # 1e400 parses as inf, which JSON cannot write back
        raise ValueError(text)
    return number


# Deeper originals are kept as base64, not embedded, whatever EPISTLE_MAX_NESTING_DEPTH admits: readers of
# the dead-letter topic must parse the value (Jackson refuses more than 1000 levels by default, Python's
# json more than its recursion limit).
_MAX_EMBEDDED_DEPTH = 256


def _as_json(value: bytes | None) -> tuple[bool, Any]:
    """(True, document) when the bytes are UTF-8 JSON that can be embedded safely, else (False, None)."""
    if value is None:
        return False, None
    try:
        document = json.loads(value.decode("utf-8"), parse_constant=reject_constant, parse_float=_finite)
    except (ValueError, RecursionError):  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        return False, None
    if depth_exceeds(document, _MAX_EMBEDDED_DEPTH):
        return False, None
    return True, document


def _fqcn(obj: Any) -> str:
    try:
        cls = type(obj)
        return f"{cls.__module__}.{cls.__qualname__}"
    except Exception:  # noqa: BLE001
        return "builtins.object"


def _clip(text: str, limit: int = MAX_TEXT) -> str:
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text) - limit} more characters)"


def _cause(error: BaseException) -> BaseException | None:
    """The exception's cause as Python shows it: ``raise ... from cause``, else the one being handled."""
    cause = getattr(error, "__cause__", None)
    if cause is None and not getattr(error, "__suppress_context__", False):
        cause = getattr(error, "__context__", None)
    return cause if isinstance(cause, BaseException) else None


def _trace(error: BaseException) -> str:
    try:
        return "".join(traceback.format_exception(error))
    except Exception:  # noqa: BLE001 - e.g. a traceback object a library forged
        return f"{_fqcn(error)}: {safe_str(error)}\n"


_repr = reprlib.Repr()
_repr.maxlevel, _repr.maxstring, _repr.maxother, _repr.maxlist, _repr.maxdict = 8, 2000, 2000, 100, 100


def _jsonable(details: Any) -> Any:
    """``details`` when strict JSON can write it, else a bounded repr of it."""
    try:
        json.dumps(details, allow_nan=False)
    except (TypeError, ValueError, RecursionError):
        return _clip(safe_str(details, _repr.repr), 10_000)
    return details


def _utf8(text: str) -> bytes:
    """UTF-8 for a header; lone surrogates written as \\udxxx (the value keeps the exact text)."""
    return text.encode("utf-8", "backslashreplace")


def _header_name(name: Any) -> str:
    text = name if isinstance(name, str) else safe_str(name)
    return _utf8(text).decode("utf-8")


def _header_value(value: Any) -> bytes | None:
    if value is None or isinstance(value, bytes):
        return value
    return _utf8(value if isinstance(value, str) else safe_str(value))


def _headers_field(headers: Headers) -> list[list[Any]]:
    """The original headers for the value: ``[name, base64 | null]`` pairs, in order."""
    out = []
    for name, value in headers:
        data = _header_value(value)
        out.append([name if isinstance(name, str) else safe_str(name), None if data is None else _b64(data)])
    return out


def build_dead_letter(
    source: SourceRecord,
    *,
    stage: str,
    reason: str,
    error: BaseException | None = None,
    details: Any = None,
    consumer_group: str,
    attempts: int,
    suffix: str = ".dlq",
    now: datetime | None = None,
    max_embedded_bytes: int = 256 * 1024,
    max_bytes: int | None = None,
) -> DeadLetterRecord:
    """The dead-letter record for ``source``; total: any record and any exception give one.

    JSON originals larger than ``max_embedded_bytes`` are kept as base64 only, so a large record does not
    travel twice in its dead letter. When the record is over ``max_bytes`` (the dead-letter producer's
    ``message.max.bytes``, as :func:`record_size` counts), the shortened form is returned instead: the
    original value once, as base64; texts cut to ``SHORT_TEXT`` characters; no ``error.details``; and a
    ``shortened`` field that says so. It may still be over ``max_bytes`` (the original alone can be).
    """
    when = (now or datetime.now(UTC)).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    args = (source, stage, reason, error, details, consumer_group, attempts, suffix, when)
    record = _build(*args, embed_bytes=max_embedded_bytes, text_limit=MAX_TEXT, shortened=None)
    if max_bytes is None or record_size(record) <= max_bytes:
        return record
    note = (
        f"the full dead letter was {record_size(record)} bytes, over the dead-letter producer's limit of "
        f"{max_bytes}: the original is kept as base64 only, texts are cut to {SHORT_TEXT} characters and "
        "error.details is left out"
    )
    return _build(*args, embed_bytes=-1, text_limit=SHORT_TEXT, shortened=note)


def record_size(record: DeadLetterRecord) -> int:
    """The bytes ``record`` counts against a producer's ``message.max.bytes`` and a topic's
    ``max.message.bytes``: key, value and headers, plus a bound on Kafka's record and batch framing."""
    headers = sum(len(_utf8(name)) + len(value or b"") + _HEADER_FRAMING for name, value in record.headers)
    return len(record.key or b"") + len(record.value) + headers + _RECORD_FRAMING


_HEADER_FRAMING = 10  # two varint lengths
_RECORD_FRAMING = 128  # the record's varints and attributes, and the batch header (61 bytes)


def _build(
    source: SourceRecord,
    stage: str,
    reason: str,
    error: BaseException | None,
    details: Any,
    consumer_group: str,
    attempts: int,
    suffix: str,
    when: str,
    *,
    embed_bytes: int,
    text_limit: int,
    shortened: str | None,
) -> DeadLetterRecord:
    value = source.value
    is_json, document = (False, None)
    if value is not None and len(value) <= embed_bytes:
        is_json, document = _as_json(value)
    reason = _clip(safe_str(reason), text_limit)
    if error is None:
        fqcn, message, trace, cause = f"toolkit.{stage}", reason, "", None
    else:
        fqcn, message, cause = _fqcn(error), _clip(safe_str(error), text_limit), _cause(error)
        trace = _clip(_trace(error), text_limit)
    key_text, key_encoding = _text_or_b64(source.key)
    timestamp_type = TIMESTAMP_TYPES.get(source.timestamp_type, "CreateTime")
    if source.timestamp is None:
        timestamp_type = "NoTimestampType"
    body: dict[str, Any] = {
        "original_message": document if is_json else (None if value is None else _b64(value)),
        "original_encoding": "json" if is_json else ("base64" if value is not None else "null"),
    }
    if is_json:
        body["original_bytes"] = _b64(value)  # type: ignore[arg-type]
    body["error"] = {
        "timestamp": when,
        "reason": reason,
        "stage": stage,
        "type": fqcn,
        "message": message,
        "cause": None if cause is None else {"type": _fqcn(cause), "message": _clip(safe_str(cause), text_limit)},
        "details": None if shortened else _jsonable(details),
    }
    body["source"] = {
        "topic": source.topic,
        "partition": source.partition,
        "offset": source.offset,
        "key": key_text,
        "keyEncoding": key_encoding,
        "timestamp": source.timestamp,
        "timestampType": timestamp_type,
        "consumerGroup": consumer_group,
        "attempts": attempts,
        "headers": _headers_field(source.headers),
    }
    for name, value in (source.details or {}).items():
        body["source"].setdefault(name, _jsonable(value))
    if shortened:
        body["shortened"] = shortened
    encoded = compact_json(body)  # a failure nobody foresaw: the runtime logs it and sends minimal_dead_letter()
    headers: Headers = [
        (_header_name(k), _header_value(v))
        for k, v in source.headers
        if not (isinstance(k, str) and k.startswith(DLT_PREFIX))
    ]
    headers += [
        (H_TOPIC, _utf8(source.topic)),
        (H_PARTITION, struct.pack(">i", source.partition)),
        (H_OFFSET, struct.pack(">q", source.offset)),
        (H_TIMESTAMP, struct.pack(">q", source.timestamp if source.timestamp is not None else -1)),
        (H_TIMESTAMP_TYPE, timestamp_type.encode()),
        (H_GROUP, _utf8(consumer_group)),
        (H_FQCN, _utf8(fqcn)),
    ]
    if cause is not None:
        headers.append((H_CAUSE_FQCN, _utf8(_fqcn(cause))))
    headers += [
        (H_MESSAGE, _utf8(f"{stage}: {reason}")),
        (H_STACKTRACE, _utf8(trace)),
    ]
    return DeadLetterRecord(dead_letter_topic(source.topic, suffix), source.key, encoded, headers)


def minimal_dead_letter(
    topic: str,
    partition: int,
    offset: int,
    key: bytes | None,
    value: bytes | None,
    headers: Headers | None = None,
    *,
    stage: str,
    reason: str,
    consumer_group: str,
    suffix: str = ".dlq",
) -> DeadLetterRecord:
    """The last resort when :func:`build_dead_letter` failed for a reason nobody foresaw: the exact bytes,
    the reason and the coordinates, written as ASCII JSON. :func:`original_record` reads it too."""
    kept = _headers_field(headers) if headers is not None else None  # None: the client could not read them
    source: dict[str, Any] = {
        "topic": safe_str(topic),
        "partition": partition,
        "offset": offset,
        "key": None if key is None else _b64(key),
        "keyEncoding": None if key is None else "base64",
        "timestamp": None,
        "consumerGroup": safe_str(consumer_group),
        "attempts": 1,
    }
    if kept is not None:
        source["headers"] = kept
    body = {
        "original_message": None if value is None else _b64(value),
        "original_encoding": "null" if value is None else "base64",
        "error": {
            "reason": _clip(safe_str(reason)),
            "stage": safe_str(stage),
            "type": "toolkit.deadletter",
            "details": "the full dead letter could not be built; this one keeps the exact bytes",
        },
        "source": source,
    }
    encoded = json.dumps(body, ensure_ascii=True, separators=(",", ":"), default=safe_str).encode("ascii")
    dl_headers: Headers = [
        (H_TOPIC, _utf8(safe_str(topic))),
        (H_PARTITION, struct.pack(">i", partition)),
        (H_OFFSET, struct.pack(">q", offset)),
        (H_GROUP, _utf8(safe_str(consumer_group))),
        (H_MESSAGE, _utf8(f"{safe_str(stage)}: {_clip(safe_str(reason))}")),
    ]
    return DeadLetterRecord(dead_letter_topic(safe_str(topic), suffix), key, encoded, dl_headers)


def original_record(value: bytes, key: bytes | None = None, headers: Headers | None = None) -> OriginalRecord:
    """Recover the original record from a dead letter, byte for byte: value, key, headers (null values and
    ``kafka_dlt-*`` headers of the original included) and timestamp.

    ``key`` and ``headers`` (the dead letter's own) are used only for dead letters written before the
    value kept them.

    Raises:
        InvalidArgument (a ValueError): ``value`` is not one of our dead-letter values; InvalidArgumentType
            (also a TypeError) when an argument is not bytes / a list of (str, bytes or None) headers.
    """
    _args.bytes_like("value", value)
    if key is not None:
        _args.bytes_like("key", key)
    if headers is not None and not (
        isinstance(headers, list | tuple)
        and all(
            isinstance(h, tuple | list)
            and len(h) == 2
            and isinstance(h[0], str)
            and (h[1] is None or isinstance(h[1], bytes))
            for h in headers
        )
    ):
        raise InvalidArgumentType(
            "headers: expected a list of (str, bytes or None) pairs, as the Kafka client gives them", argument="headers"
        )
    try:
        body = json.loads(value)
        source = body["source"]
        encoding = body["original_encoding"]
        if encoding == "json":
            original: bytes | None = base64.b64decode(body["original_bytes"], validate=True)
        elif encoding == "base64":
            original = base64.b64decode(body["original_message"], validate=True)
        elif encoding == "null":
            original = None
        else:
            raise ValueError(f"unknown original_encoding {encoding!r}")
        if "keyEncoding" in source:
            key = _key_of(source["key"], source["keyEncoding"])
        if "headers" in source:
            kept: Headers = [
                (name, None if data is None else base64.b64decode(data, validate=True))
                for name, data in source["headers"]
            ]
        else:
            kept = [(k, v) for k, v in (headers or []) if not k.startswith(DLT_PREFIX)]
        topic, partition, offset = source["topic"], source["partition"], source["offset"]
        timestamp, timestamp_type = source.get("timestamp"), source.get("timestampType")
        # A value that claims to be a dead letter is untrusted input: its coordinates must have their types.
        if not isinstance(topic, str) or not topic:
            raise ValueError(f"source.topic is not a topic name: {topic!r}"[:120])
        for name, number in (("partition", partition), ("offset", offset)):
            if isinstance(number, bool) or not isinstance(number, int) or number < 0:
                raise ValueError(f"source.{name} is not an integer >= 0: {number!r}"[:120])
        if timestamp is not None and (isinstance(timestamp, bool) or not isinstance(timestamp, int)):
            raise ValueError(f"source.timestamp is not an integer: {timestamp!r}"[:120])
        if not all(isinstance(name, str) for name, _ in kept):
            raise ValueError("source.headers: a header name is not a string")
        return OriginalRecord(topic, partition, offset, key, original, kept, timestamp, timestamp_type)
    except ValueError as exc:
        raise InvalidArgument(f"not a dead-letter value: {exc}", argument="value") from None
    except (KeyError, TypeError, binascii.Error, AttributeError) as exc:
        raise InvalidArgument(f"not a dead-letter value: {type(exc).__name__}: {exc}", argument="value") from None


def _key_of(text: str | None, encoding: str | None) -> bytes | None:
    if text is None:
        return None
    if encoding == "base64":
        return base64.b64decode(text, validate=True)
    return text.encode("utf-8")


def _text_or_b64(data: bytes | None) -> tuple[str | None, str | None]:
    if data is None:
        return None, None
    try:
        return data.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        return _b64(data), "base64"
