"""The dead-letter record (DESIGN.md) and its inverse, the replay of the original record.

Value (JSON)::

    {"original_message": <the original value as JSON, or base64 of its bytes when it is not JSON>,
     "original_encoding": "json" | "base64",
     "original_bytes": <base64 of the exact original value bytes; present when original_encoding is json>,
     "error": {"timestamp", "reason", "stage", "type", "details"},
     "source": {"topic", "partition", "offset", "key", "keyEncoding", "timestamp", "consumerGroup",
                "attempts"}}

Re-serialising JSON is not byte-exact in general (spacing, key order, escapes, number forms), so the exact
bytes are always kept: :func:`original_record` gives them back byte for byte. Key: the original key.
Headers: the original headers, then the ones Spring's ``DeadLetterPublishingRecoverer`` writes, with its
encodings (partition as a 4-byte big-endian int, offset and timestamp as 8-byte big-endian longs, the rest
UTF-8) so existing DLT tooling reads ours. Pure: building and parsing only; producing is the runtime's job.
"""

from __future__ import annotations

import base64
import json
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
H_MESSAGE = "kafka_dlt-exception-message"
H_STACKTRACE = "kafka_dlt-exception-stacktrace"
DLT_PREFIX = "kafka_dlt-"

Headers = list[tuple[str, bytes]]


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


def dead_letter_topic(topic: str, suffix: str = ".dlq") -> str:
    return f"{topic}{suffix}"


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _as_json(value: bytes | None) -> tuple[bool, Any]:
    """(True, document) when the bytes are UTF-8 JSON that can be embedded safely, else (False, None)."""
    if value is None:
        return False, None
    try:
        document = json.loads(value.decode("utf-8"), parse_constant=_reject, parse_float=_finite_float)
    except (ValueError, RecursionError):
        return False, None
    if depth_exceeds(document, MAX_DEPTH):
        return False, None
    return True, document


def _reject(name: str) -> Any:
    raise ValueError(name)


def _finite_float(text: str) -> float:
    """A number beyond the double range (1e400) would be written back as Infinity, which is not JSON: such
    an original is embedded as base64 instead."""
    number = float(text)
    if number - number != 0:  # inf or nan
        raise ValueError(f"{text[:40]} is beyond the double range")
    return number


def _exception_fields(error: BaseException | None, stage: str) -> tuple[str, str, str]:
    if error is None:
        return f"toolkit.{stage}", "", ""
    cls = type(error)
    fqcn = f"{cls.__module__}.{cls.__qualname__}"
    trace = "".join(traceback.format_exception(cls, error, error.__traceback__))
    return fqcn, str(error), trace


def build_dead_letter(source: SourceRecord, *, stage: str, reason: str, error: BaseException | None = None,
                      details: Any = None, consumer_group: str, attempts: int, suffix: str = ".dlq",
                      now: datetime | None = None, max_embedded_bytes: int = 256 * 1024) -> DeadLetterRecord:
    """The dead-letter record for ``source``.

    JSON originals larger than ``max_embedded_bytes`` are kept as base64 only, so a large record does not
    travel twice in its dead letter.
    """
    fqcn, message, trace = _exception_fields(error, stage)
    value = source.value
    is_json, document = (False, None)
    if value is not None and len(value) <= max_embedded_bytes:
        is_json, document = _as_json(value)
    key_text, key_encoding = _text_or_b64(source.key)
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
        "details": _jsonable(details),
    }
    body["source"] = {
        "topic": source.topic,
        "partition": source.partition,
        "offset": source.offset,
        "key": key_text,
        "keyEncoding": key_encoding,
        "timestamp": source.timestamp,
        "consumerGroup": consumer_group,
        "attempts": attempts,
    }
    headers: Headers = [(k, v if v is not None else b"") for k, v in source.headers]
    headers += [
        (H_TOPIC, source.topic.encode()),
        (H_PARTITION, struct.pack(">i", source.partition)),
        (H_OFFSET, struct.pack(">q", source.offset)),
        (H_TIMESTAMP, struct.pack(">q", source.timestamp if source.timestamp is not None else -1)),
        (H_TIMESTAMP_TYPE, b"LogAppendTime" if source.timestamp_type == 2 else b"CreateTime"),
        (H_GROUP, consumer_group.encode()),
        (H_FQCN, fqcn.encode()),
        (H_MESSAGE, f"{stage}: {reason}".encode()),
        (H_STACKTRACE, trace.encode()),
    ]
    encoded = json.dumps(body, ensure_ascii=False, separators=(",", ":"), default=str).encode("utf-8")
    return DeadLetterRecord(dead_letter_topic(source.topic, suffix), source.key, encoded, headers)


def original_record(value: bytes, key: bytes | None = None, headers: Headers | None = None) -> OriginalRecord:
    """Recover the original record from a dead letter's value, key and headers, byte for byte.

    Raises:
        ValueError: ``value`` is not one of our dead-letter values.
    """
    try:
        body = json.loads(value)
        source = body["source"]
        encoding = body["original_encoding"]
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"not a dead-letter value: {exc}") from None
    if encoding == "json":
        original: bytes | None = base64.b64decode(body["original_bytes"], validate=True)
    elif encoding == "base64":
        original = base64.b64decode(body["original_message"], validate=True)
    elif encoding == "null":
        original = None
    else:
        raise ValueError(f"unknown original_encoding {encoding!r}")
    kept = [(k, v) for k, v in (headers or []) if not k.startswith(DLT_PREFIX)]
    return OriginalRecord(source["topic"], source["partition"], source["offset"], key, original, kept,
                          source.get("timestamp"))


def _text_or_b64(data: bytes | None) -> tuple[str | None, str | None]:
    if data is None:
        return None, None
    try:
        return data.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        return _b64(data), "base64"


def _jsonable(details: Any) -> Any:
    try:
        json.dumps(details, default=str)
    except (TypeError, ValueError, RecursionError):
        return repr(details)[:10_000]
    return details
