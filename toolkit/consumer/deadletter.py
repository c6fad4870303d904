"""The dead-letter record (docs/contracts.md, field by field in docs/dead-letters.md) and its inverse, the
original record it was made from.

Value (JSON)::

    {"original_message": <the original value as JSON, or base64 of its bytes when it is not JSON>,
     "original_encoding": "json" | "base64" | "null",
     "original_bytes": <base64 of the exact original value bytes; present when original_encoding is json>,
     "error": {"timestamp", "reason", "stage", "type", "message", "cause", "details"},
     "source": {"topic", "partition", "offset", "key", "keyEncoding", "timestamp", "timestampType",
                "consumerGroup", "attempts", "headers"}}

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

from toolkit.envelope import MAX_DEPTH, depth_exceeds

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


def _reject(name: str) -> Any:
    raise ValueError(name)


def _as_json(value: bytes | None) -> tuple[bool, Any]:
    """(True, document) when the bytes are UTF-8 JSON that can be embedded safely, else (False, None)."""
    if value is None:
        return False, None
    try:
        document = json.loads(value.decode("utf-8"), parse_constant=_reject, parse_float=_finite)
    except (ValueError, RecursionError):  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        return False, None
    if depth_exceeds(document, MAX_DEPTH):
        return False, None
    return True, document


def _text(obj: Any) -> str:
    """``str(obj)``, whatever its ``__str__`` does."""
    try:
        text = str(obj)
    except Exception:  # noqa: BLE001 - a broken __str__ must not stop the dead letter
        return f"<{_fqcn(obj)} str() failed>"
    return text if isinstance(text, str) else f"<{_fqcn(obj)} str() returned a non-string>"


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
        return f"{_fqcn(error)}: {_text(error)}\n"


_repr = reprlib.Repr()
_repr.maxlevel, _repr.maxstring, _repr.maxother, _repr.maxlist, _repr.maxdict = 8, 2000, 2000, 100, 100


def _jsonable(details: Any) -> Any:
    """``details`` when strict JSON can write it, else a bounded repr of it."""
    try:
        json.dumps(details, allow_nan=False)
    except (TypeError, ValueError, RecursionError):
        try:
            return _clip(_repr.repr(details), 10_000)
        except Exception:  # noqa: BLE001
            return f"<{_fqcn(details)} repr() failed>"
    return details


def _dumps(body: dict[str, Any]) -> bytes:
    """Compact strict JSON in UTF-8; strings that UTF-8 cannot hold (lone surrogates) make the whole
    document ASCII with \\u escapes, which every JSON reader turns back into the same strings."""
    try:
        return json.dumps(body, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode("utf-8")
    except UnicodeEncodeError:
        return json.dumps(body, ensure_ascii=True, allow_nan=False, separators=(",", ":")).encode("ascii")


def _utf8(text: str) -> bytes:
    """UTF-8 for a header; lone surrogates written as \\udxxx (the value keeps the exact text)."""
    return text.encode("utf-8", "backslashreplace")


def _header_name(name: Any) -> str:
    text = name if isinstance(name, str) else _text(name)
    return _utf8(text).decode("utf-8")


def _header_value(value: Any) -> bytes | None:
    if value is None or isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return _utf8(value)
    try:
        return bytes(value)
    except Exception:  # noqa: BLE001
        return _utf8(_text(value))


def _headers_field(headers: Headers) -> list[list[Any]]:
    """The original headers for the value: ``[name, base64 | null]`` pairs, in order."""
    out = []
    for name, value in headers:
        data = _header_value(value)
        out.append([name if isinstance(name, str) else _text(name), None if data is None else _b64(data)])
    return out


def build_dead_letter(source: SourceRecord, *, stage: str, reason: str, error: BaseException | None = None,
                      details: Any = None, consumer_group: str, attempts: int, suffix: str = ".dlq",
                      now: datetime | None = None, max_embedded_bytes: int = 256 * 1024) -> DeadLetterRecord:
    """The dead-letter record for ``source``; total: any record and any exception give one.

    JSON originals larger than ``max_embedded_bytes`` are kept as base64 only, so a large record does not
    travel twice in its dead letter.
    """
    value = source.value
    is_json, document = (False, None)
    if value is not None and len(value) <= max_embedded_bytes:
        is_json, document = _as_json(value)
    reason = _clip(_text(reason))
    if error is None:
        fqcn, message, trace, cause = f"toolkit.{stage}", reason, "", None
    else:
        fqcn, message, trace, cause = _fqcn(error), _clip(_text(error)), _clip(_trace(error)), _cause(error)
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
        "timestamp": (now or datetime.now(UTC)).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "reason": reason,
        "stage": stage,
        "type": fqcn,
        "message": message,
        "cause": None if cause is None else {"type": _fqcn(cause), "message": _clip(_text(cause))},
        "details": _jsonable(details),
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
    try:
        encoded = _dumps(body)
    except (ValueError, TypeError, RecursionError):  # not foreseen: keep the exact bytes, drop the rest
        body["original_message"] = None if value is None else _b64(value)
        body["original_encoding"] = "base64" if value is not None else "null"
        body.pop("original_bytes", None)
        body["error"]["details"] = _clip(_text(body["error"]["details"]), 10_000)
        encoded = _dumps(body)
    headers: Headers = [(_header_name(k), _header_value(v)) for k, v in source.headers
                        if not (isinstance(k, str) and k.startswith(DLT_PREFIX))]
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


def minimal_dead_letter(topic: str, partition: int, offset: int, key: bytes | None, value: bytes | None,
                        headers: Headers | None = None, *, stage: str, reason: str, consumer_group: str,
                        suffix: str = ".dlq") -> DeadLetterRecord:
    """The last resort when :func:`build_dead_letter` failed for a reason nobody foresaw: the exact bytes,
    the reason and the coordinates, written as ASCII JSON. :func:`original_record` reads it too."""
    try:
        kept = _headers_field(headers) if headers is not None else None
    except Exception:  # noqa: BLE001 - headers we cannot read: the dead letter goes without them
        kept = None
    source: dict[str, Any] = {"topic": _text(topic), "partition": partition, "offset": offset,
                              "key": None if key is None else _b64(key),
                              "keyEncoding": None if key is None else "base64",
                              "timestamp": None, "consumerGroup": _text(consumer_group), "attempts": 1}
    if kept is not None:
        source["headers"] = kept
    body = {"original_message": None if value is None else _b64(value),
            "original_encoding": "null" if value is None else "base64",
            "error": {"reason": _clip(_text(reason)), "stage": _text(stage), "type": "toolkit.deadletter",
                      "details": "the full dead letter could not be built; this one keeps the exact bytes"},
            "source": source}
    encoded = json.dumps(body, ensure_ascii=True, separators=(",", ":"), default=_text).encode("ascii")
    dl_headers: Headers = [(H_TOPIC, _utf8(_text(topic))), (H_PARTITION, struct.pack(">i", partition)),
                           (H_OFFSET, struct.pack(">q", offset)), (H_GROUP, _utf8(_text(consumer_group))),
                           (H_MESSAGE, _utf8(f"{_text(stage)}: {_clip(_text(reason))}"))]
    return DeadLetterRecord(dead_letter_topic(_text(topic), suffix), key, encoded, dl_headers)


def original_record(value: bytes, key: bytes | None = None, headers: Headers | None = None) -> OriginalRecord:
    """Recover the original record from a dead letter, byte for byte: value, key, headers (null values and
    ``kafka_dlt-*`` headers of the original included) and timestamp.

    ``key`` and ``headers`` (the dead letter's own) are used only for dead letters written before the
    value kept them.

    Raises:
        ValueError: ``value`` is not one of our dead-letter values.
    """
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
            kept: Headers = [(name, None if data is None else base64.b64decode(data, validate=True))
                             for name, data in source["headers"]]
        else:
            kept = [(k, v) for k, v in (headers or []) if not k.startswith(DLT_PREFIX)]
        return OriginalRecord(source["topic"], source["partition"], source["offset"], key, original, kept,
                              source.get("timestamp"), source.get("timestampType"))
    except ValueError as exc:
        raise ValueError(f"not a dead-letter value: {exc}") from None
    except (KeyError, TypeError, binascii.Error, AttributeError) as exc:
        raise ValueError(f"not a dead-letter value: {type(exc).__name__}: {exc}") from None


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
