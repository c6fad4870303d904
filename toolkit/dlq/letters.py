"""Dead letters as ``epistle dlq`` sees them: their fields, the filters that select them, their counts and how
they are shown. Pure: no Kafka here (``toolkit.dlq.kafka`` reads and replays)."""

from __future__ import annotations

import base64
import json
import re
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from toolkit.consumer.deadletter import Headers, OriginalRecord, original_record
from toolkit.errors import EpistleError, InvalidArgument, safe_str

STAGES = ("decode", "envelope", "schema", "validation", "model", "routing", "handler", "retries_exhausted")
REPLAYED_FROM = "epistle-replayed-from"
"""Header of a replayed record: ``<dead-letter topic>:<partition>:<offset>`` of the dead letter it came from."""

_MAX_SNIFFED = 1024 * 1024  # a base64 original larger than this is not parsed to find its messageType


class NotADeadLetter(EpistleError):
    """A record of the dead-letter topic that is not one of our dead letters (``where`` says which)."""

    def __init__(self, message: str, *, where: str) -> None:
        super().__init__(message)
        self.where = where


def coordinates(topic: str, partition: int, offset: int) -> str:
    return f"{topic}:{partition}:{offset}"


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """One record of a dead-letter topic, read."""

    topic: str  # the dead-letter topic
    partition: int
    offset: int
    timestamp: int | None  # when it was dead-lettered (the record's timestamp, epoch ms)
    body: dict[str, Any]  # the parsed value (docs/dead-letters.md, "The value")
    original: OriginalRecord
    message_type: str | None
    schema_name: str | None
    schema_version: str | None

    @property
    def where(self) -> str:
        return coordinates(self.topic, self.partition, self.offset)

    @property
    def error(self) -> dict[str, Any]:
        return self.body["error"]

    @property
    def stage(self) -> str:
        return safe_str(self.error.get("stage"))

    @property
    def reason(self) -> str:
        return safe_str(self.error.get("reason"))

    @property
    def replayed_from(self) -> str | None:
        """Set when the original was itself a replayed record (it failed again after a replay)."""
        for name, value in reversed(self.original.headers):
            if name == REPLAYED_FROM:
                return None if value is None else value.decode("utf-8", "replace")
        return None


def parse(
    topic: str,
    partition: int,
    offset: int,
    timestamp: int | None,
    key: bytes | None,
    value: bytes | None,
    headers: Headers | None,
) -> DeadLetter:
    """The dead letter at ``topic:partition:offset``.

    Raises:
        NotADeadLetter: the value is not one of our dead letters (a tombstone, other JSON, not JSON).
    """
    where = coordinates(topic, partition, offset)
    if value is None:
        raise NotADeadLetter(f"{where}: a tombstone (null value), not a dead letter", where=where)
    try:
        original = original_record(value, key, list(headers or []))
        body = json.loads(value)
    except (InvalidArgument, ValueError, RecursionError) as exc:
        raise NotADeadLetter(f"{where}: {safe_str(exc)[:300]}", where=where) from None
    if not isinstance(body.get("error"), dict):
        raise NotADeadLetter(f"{where}: not a dead-letter value: no error object", where=where)
    message_type, schema_name, schema_version = _envelope_fields(body, original.value)
    return DeadLetter(topic, partition, offset, timestamp, body, original, message_type, schema_name, schema_version)


def _envelope_fields(body: dict[str, Any], value: bytes | None) -> tuple[str | None, str | None, str | None]:
    """messageType, schemaName and schemaVersion from the original's envelope header, when it has one."""
    document = body.get("original_message") if body.get("original_encoding") == "json" else None
    if document is None and value is not None and len(value) <= _MAX_SNIFFED:
        try:
            document = json.loads(value)
        except (ValueError, RecursionError):
            document = None
    header = document.get("header") if isinstance(document, dict) else None
    if not isinstance(header, dict):
        return None, None, None
    return tuple(_scalar(header.get(name)) for name in ("messageType", "schemaName", "schemaVersion"))  # type: ignore[return-value]


def _scalar(value: Any) -> str | None:
    if isinstance(value, str):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    return None


# -- selection ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Selection:
    """Which dead letters a command takes. Position filters (partitions, offsets of the dead-letter topic,
    the time it was dead-lettered) apply to every record; content filters (stage, reason, messageType) to
    dead letters only."""

    stages: frozenset[str] = frozenset()
    reason: str | None = None  # a piece of the reason, any case
    message_types: frozenset[str] = frozenset()
    partitions: frozenset[int] = frozenset()
    from_offset: int | None = None  # inclusive
    to_offset: int | None = None  # inclusive
    since_ms: int | None = None  # inclusive
    until_ms: int | None = None  # exclusive

    def __post_init__(self) -> None:
        unknown = sorted(set(self.stages) - set(STAGES))
        if unknown:
            raise InvalidArgument(
                f"--stage {', '.join(unknown)}: not a stage; use {', '.join(STAGES)}", argument="--stage"
            )
        if self.from_offset is not None and self.to_offset is not None and self.from_offset > self.to_offset:
            raise InvalidArgument(
                f"--from-offset {self.from_offset} is after --to-offset {self.to_offset}", argument="--from-offset"
            )
        if self.since_ms is not None and self.until_ms is not None and self.since_ms >= self.until_ms:
            raise InvalidArgument("--since is not before --until: the time range is empty", argument="--since")

    def takes_partition(self, partition: int) -> bool:
        return not self.partitions or partition in self.partitions

    def takes_position(self, offset: int, timestamp: int | None) -> bool:
        if self.from_offset is not None and offset < self.from_offset:
            return False
        if self.to_offset is not None and offset > self.to_offset:
            return False
        if timestamp is not None:
            if self.since_ms is not None and timestamp < self.since_ms:
                return False
            if self.until_ms is not None and timestamp >= self.until_ms:
                return False
        return True

    def takes(self, letter: DeadLetter) -> bool:
        if not self.takes_position(letter.offset, letter.timestamp):
            return False
        if self.stages and letter.stage not in self.stages:
            return False
        if self.reason and self.reason.casefold() not in letter.reason.casefold():
            return False
        return not self.message_types or letter.message_type in self.message_types


_AGO = re.compile(r"(\d+(?:\.\d+)?)\s*([smhd])")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


def parse_time(option: str, text: str, now: datetime | None = None) -> int:
    """``--since``/``--until`` as epoch milliseconds: an ISO-8601 date or time (UTC unless it has an
    offset) or a time ago (``90s``, ``15m``, ``2h``, ``7d``).

    Raises:
        InvalidArgument: neither.
    """
    text = text.strip()
    ago = _AGO.fullmatch(text)
    if ago:
        try:
            moment = (now or datetime.now(UTC)) - timedelta(**{_UNITS[ago[2]]: float(ago[1])})
        except OverflowError:  # further back than datetime goes: from the start of time
            return 0
    else:
        try:
            moment = datetime.fromisoformat(text)
        except ValueError:
            raise InvalidArgument(
                f"{option} {text!r}: use an ISO-8601 time (2026-05-01T12:00, UTC unless it "
                "has an offset) or a time ago (90s, 15m, 2h, 7d)",
                argument=option,
            ) from None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
    return max(0, int(moment.timestamp() * 1000))  # before 1970: every record is after it


# -- counts -------------------------------------------------------------------------------------------------

NONE = "(none)"
DIMENSIONS = (
    ("stage", "by stage"),
    ("reason", "by reason"),
    ("message_type", "by messageType"),
    ("schema_version", "by schema version"),
    ("hour", "by hour dead-lettered (UTC)"),
)


@dataclass
class Counts:
    """``epistle dlq stats``: dead letters by stage, reason, messageType, schema version and hour."""

    topic: str
    total: int = 0
    invalid: int = 0
    first_invalid: str | None = None
    by: dict[str, Counter[str]] = field(default_factory=lambda: {name: Counter() for name, _ in DIMENSIONS})

    def add(self, letter: DeadLetter) -> None:
        self.total += 1
        version = NONE
        if letter.schema_version is not None:
            version = f"{letter.schema_name or '?'} v{letter.schema_version}"
        self.by["stage"][letter.stage] += 1
        self.by["reason"][letter.reason] += 1
        self.by["message_type"][letter.message_type or NONE] += 1
        self.by["schema_version"][version] += 1
        self.by["hour"][hour_of(letter.timestamp)] += 1

    def add_invalid(self, error: NotADeadLetter) -> None:
        self.invalid += 1
        self.first_invalid = self.first_invalid or str(error)

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"topic": self.topic, "dead_letters": self.total, "not_dead_letters": self.invalid}
        for name, _ in DIMENSIONS:
            counter = self.by[name]
            ordered = sorted(counter.items()) if name == "hour" else counter.most_common()
            out[f"by_{name}"] = dict(ordered)
        return out

    def table(self, *, top: int = 20, width: int = 72) -> str:
        """One table per dimension, the most frequent first (hours in order), ``top`` rows each; labels cut
        to ``width`` characters."""
        lines = [f"{self.topic}: {self.total} dead letter(s)"]
        if self.invalid:
            lines[0] += f", {self.invalid} record(s) that are not dead letters (skipped)"
        for name, title in DIMENSIONS:
            counter = self.by[name]
            if not counter:
                continue
            rows = sorted(counter.items()) if name == "hour" else counter.most_common()
            shown = [(_cut(label, width), count) for label, count in rows[:top]]
            if len(rows) > top:
                shown.append((f"... {len(rows) - top} more (--json lists all)", sum(c for _, c in rows[top:])))
            column = max(len(title), *(len(label) + 2 for label, _ in shown))
            lines += ["", f"{title:<{column}}  {'count':>7}"]
            lines += [f"  {label:<{column - 2}}  {count:>7}" for label, count in shown]
        return "\n".join(lines)


def hour_of(timestamp: int | None) -> str:
    if timestamp is None or timestamp <= 0:
        return NONE
    return datetime.fromtimestamp(timestamp / 1000, UTC).strftime("%Y-%m-%dT%H:00Z")


def iso(timestamp: int | None) -> str:
    if not isinstance(timestamp, int | float) or isinstance(timestamp, bool) or timestamp <= 0:
        return NONE
    try:
        when = datetime.fromtimestamp(timestamp / 1000, UTC)
    except (OverflowError, OSError, ValueError):  # beyond the years datetime can hold
        return str(timestamp)
    return when.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _cut(text: str, limit: int) -> str:
    text = " ".join(text.split())  # one line
    return text if len(text) <= limit else text[: limit - 3] + "..."


# -- showing one ----------------------------------------------------------------------------------------------


def decoded_original(letter: DeadLetter) -> tuple[str, Any]:
    """The original value as best it can be read: ``("json", document)``, ``("text", str)`` (UTF-8 but not
    JSON), ``("base64", str)`` (bytes), or ``("null", None)`` (a tombstone)."""
    value = letter.original.value
    if value is None:
        return "null", None
    if letter.body.get("original_encoding") == "json":
        return "json", letter.body.get("original_message")
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError:
        return "base64", base64.b64encode(value).decode("ascii")
    if len(value) <= _MAX_SNIFFED:
        try:
            return "json", json.loads(text)
        except (ValueError, RecursionError):
            pass
    return "text", text


def to_json(letter: DeadLetter) -> dict[str, Any]:
    """``epistle dlq show --json``: one object per dead letter (JSON Lines), the value's fields as they are
    plus where it is and the original decoded."""
    encoding, original = decoded_original(letter)
    out: dict[str, Any] = {
        "dlq": {
            "topic": letter.topic,
            "partition": letter.partition,
            "offset": letter.offset,
            "timestamp": letter.timestamp,
        },
        "stage": letter.stage,
        "reason": letter.reason,
        "messageType": letter.message_type,
        "schemaName": letter.schema_name,
        "schemaVersion": letter.schema_version,
        "replayedFrom": letter.replayed_from,
        "original": {"encoding": encoding, "value": original},
    }
    out.update(
        {
            name: value
            for name, value in letter.body.items()
            if name not in ("original_message", "original_bytes", "original_encoding")
        }
    )
    return out


SHOWN_CHARS = 2000


def render(letter: DeadLetter, *, width: int = SHOWN_CHARS) -> str:
    """A dead letter for people: where it is, when and why it was dead-lettered, where it came from, the
    details, and the original decoded (cut at ``width`` characters)."""
    error, source = letter.error, letter.body.get("source") or {}
    lines = [f"{letter.where}  dead-lettered {iso(letter.timestamp)}  stage {letter.stage}"]
    key = letter.original.key
    shown_key = NONE if key is None else _printable(key)
    lines.append(
        f"  source   {source.get('topic')}:{source.get('partition')}:{source.get('offset')}  key "
        f"{shown_key}  timestamp {iso(letter.original.timestamp)}  group {source.get('consumerGroup')}"
        f"  attempts {source.get('attempts')}"
    )
    if letter.original.headers:
        names = ", ".join(name for name, _ in letter.original.headers[:20])
        more = len(letter.original.headers) - 20
        lines.append(f"  headers  {names}" + (f" (and {more} more)" if more > 0 else ""))
    if letter.message_type or letter.schema_version:
        lines.append(
            f"  message  {letter.message_type or NONE}  schema {letter.schema_name or '?'} "
            f"v{letter.schema_version or '?'}"
        )
    lines.append(f"  reason   {_cut(letter.reason, width)}")
    if error.get("type") and not safe_str(error.get("type")).startswith("toolkit."):
        lines.append(f"  error    {error.get('type')}: {_cut(safe_str(error.get('message')), width)}")
    cause = error.get("cause")
    if isinstance(cause, dict):
        lines.append(f"  cause    {cause.get('type')}: {_cut(safe_str(cause.get('message')), width)}")
    details = error.get("details")
    if isinstance(details, list):
        for index, item in enumerate(details[:20]):
            text = f"{item.get('path')}: {item.get('message')}" if isinstance(item, dict) else safe_str(item)
            lines.append(f"  {'details' if index == 0 else '':<8} {_cut(text, width)}")
        if len(details) > 20:
            lines.append(f"  {'':<8} ... {len(details) - 20} more (--json shows all)")
    elif details is not None:
        lines.append(f"  details  {_cut(safe_str(details), width)}")
    if letter.replayed_from:
        lines.append(f"  replayed from {letter.replayed_from} (it failed again after a replay)")
    encoding, original = decoded_original(letter)
    if encoding == "json":
        text = json.dumps(original, ensure_ascii=False, separators=(",", ":"))
    elif encoding == "null":
        text = "null (a tombstone)"
    else:
        text = f"({encoding}) {original}"
    lines.append(f"  original {_cut(text, width)}")
    return "\n".join(lines)


def _printable(data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return f"(base64) {base64.b64encode(data).decode('ascii')}"
