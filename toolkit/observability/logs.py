"""The log lines of ``epistle run``: text (the default) or one JSON object a line (``EPISTLE_LOG_FORMAT=json``).

Both carry the record context the consumer attaches to its log lines (:func:`toolkit.consumer.middleware.
log_context`: topic, partition, offset, messageId, correlationId). A JSON line has ``time`` (ISO 8601, UTC),
``level``, ``logger``, ``message``, the context fields of a line about a record, ``exception`` (the
traceback's text) when there is one, any other ``extra=`` field, and ``traceId``/``spanId`` when the line is
written inside a span (a handler traced by :class:`toolkit.observability.tracing.TracingMiddleware`), so log
search and traces meet. python-json-logger writes the objects.
"""

from __future__ import annotations

import logging
import sys
from datetime import UTC, datetime
from typing import Any, Literal, TextIO

from pythonjsonlogger.json import JsonFormatter

try:  # only to add the current span's ids to JSON lines; tracing is an optional extra
    from opentelemetry import trace as _trace
except ImportError:  # pragma: no cover - exercised without the extra
    _trace = None  # type: ignore[assignment]

CONTEXT_FIELDS = ("topic", "partition", "offset", "messageId", "correlationId")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class TextFormatter(logging.Formatter):
    """Log lines with the record context the runtime attaches: ``... message [topic=orders partition=0 ...]``."""

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        context = " ".join(
            f"{name}={getattr(record, name)}" for name in CONTEXT_FIELDS if getattr(record, name, None) is not None
        )
        return f"{line} [{context}]" if context else line


class JsonLineFormatter(JsonFormatter):
    """One JSON object a line (see the module's documentation); values json cannot write are written as
    their ``str``."""

    def __init__(self) -> None:
        super().__init__(
            "%(levelname)s %(name)s %(message)s",
            rename_fields={"levelname": "level", "name": "logger", "exc_info": "exception", "stack_info": "stack"},
        )

    def add_fields(self, log_data: dict[str, Any], record: logging.LogRecord, message_dict: dict[str, Any]) -> None:
        log_data["time"] = datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")
        super().add_fields(log_data, record, message_dict)
        if _trace is not None:
            context = _trace.get_current_span().get_span_context()
            if context.is_valid:
                log_data["traceId"] = format(context.trace_id, "032x")
                log_data["spanId"] = format(context.span_id, "016x")


def formatter(log_format: Literal["text", "json"] | str) -> logging.Formatter:
    """The formatter of ``EPISTLE_LOG_FORMAT`` (``text`` or ``json``)."""
    return JsonLineFormatter() if log_format == "json" else TextFormatter(TEXT_FORMAT)


def configure_logging(
    level: int, log_format: Literal["text", "json"] | str = "text", stream: TextIO | None = None
) -> logging.Handler:
    """Send every log line to ``stream`` (stderr) in ``log_format``, replacing the root logger's handlers."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(formatter(log_format))
    logging.basicConfig(level=level, handlers=[handler], force=True)
    return handler


__all__ = ["CONTEXT_FIELDS", "JsonLineFormatter", "TextFormatter", "configure_logging", "formatter"]
