"""Log lines: EPISTLE_LOG_FORMAT=json gives one JSON object a line with the record context, the exception
text and the current span's ids; text stays as it was; `epistle run` applies the setting."""

from __future__ import annotations

import io
import json
import logging
import sys

import pytest
from opentelemetry.sdk.trace import TracerProvider
from typer.testing import CliRunner

from toolkit.cli import app
from toolkit.errors import ConfigError
from toolkit.observability.logs import JsonLineFormatter, TextFormatter, configure_logging
from toolkit.settings import load_settings

CONTEXT = {"topic": "orders", "partition": 1, "offset": 42, "messageId": "m-1", "correlationId": "c-1"}


def _lines(formatter: logging.Formatter, emit) -> list[str]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    logger = logging.getLogger("tests.logs")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    try:
        emit(logger)
    finally:
        logger.removeHandler(handler)
    return stream.getvalue().splitlines()


def test_a_json_line_has_time_level_logger_message_and_the_record_context() -> None:
    (line,) = _lines(JsonLineFormatter(), lambda log: log.warning("dead-lettered to %s", "orders.dlq", extra=CONTEXT))
    entry = json.loads(line)
    assert list(entry)[:4] == ["time", "level", "logger", "message"]
    assert entry["time"].endswith("+00:00") and "T" in entry["time"]
    assert {k: entry[k] for k in ("level", "logger", "message")} == {
        "level": "WARNING",
        "logger": "tests.logs",
        "message": "dead-lettered to orders.dlq",
    }
    assert {k: entry[k] for k in CONTEXT} == CONTEXT
    assert "traceId" not in entry and "exception" not in entry


def test_a_json_line_carries_the_exception_text_and_odd_values_as_text() -> None:
    def emit(log: logging.Logger) -> None:
        try:
            raise ValueError('bad "quote"\nsecond line')
        except ValueError:
            log.exception("internal error processing a record", extra={**CONTEXT, "raw": b"\xff", "obj": object()})

    lines = _lines(JsonLineFormatter(), emit)
    assert len(lines) == 1  # the traceback's newlines are escaped inside the object
    entry = json.loads(lines[0])
    assert entry["level"] == "ERROR" and 'ValueError: bad "quote"' in entry["exception"]
    assert "Traceback" in entry["exception"] and isinstance(entry["obj"], str)


def test_a_json_line_written_inside_a_span_has_its_ids() -> None:
    tracer = TracerProvider().get_tracer("tests")
    with tracer.start_as_current_span("handle") as span:
        (line,) = _lines(JsonLineFormatter(), lambda log: log.info("booked"))
    context = span.get_span_context()
    entry = json.loads(line)
    assert entry["traceId"] == f"{context.trace_id:032x}" and entry["spanId"] == f"{context.span_id:016x}"


def test_text_lines_keep_the_context_in_brackets() -> None:
    (line,) = _lines(TextFormatter("%(levelname)s %(name)s: %(message)s"), lambda log: log.info("done", extra=CONTEXT))
    assert line == "INFO tests.logs: done [topic=orders partition=1 offset=42 messageId=m-1 correlationId=c-1]"


@pytest.fixture
def root_logging():
    """The root logger's handlers and level put back after a test that configures logging."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def test_configure_logging_replaces_the_root_handlers(root_logging) -> None:
    stream = io.StringIO()
    configure_logging(logging.INFO, "json", stream=stream)
    logging.getLogger("toolkit.consumer").info("consuming", extra=CONTEXT)
    logging.getLogger("toolkit.consumer").debug("not shown")
    (line,) = stream.getvalue().splitlines()
    assert json.loads(line)["message"] == "consuming"


@pytest.mark.parametrize(
    ("value", "expected"), [(None, "text"), ("json", "json"), (" JSON ", "json"), ("Text", "text")]
)
def test_the_log_format_setting(monkeypatch, tmp_path, value, expected) -> None:
    monkeypatch.chdir(tmp_path)
    if value is None:
        monkeypatch.delenv("EPISTLE_LOG_FORMAT", raising=False)
    else:
        monkeypatch.setenv("EPISTLE_LOG_FORMAT", value)
    assert load_settings().consumer.log_format == expected


def test_an_unknown_log_format_names_the_setting(monkeypatch, tmp_path) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("EPISTLE_LOG_FORMAT", "xml")
    with pytest.raises(ConfigError, match="EPISTLE_LOG_FORMAT") as caught:
        load_settings()
    assert "'text' or 'json'" in str(caught.value)


def test_epistle_run_writes_json_lines(monkeypatch, tmp_path, root_logging) -> None:
    # The app logs a line about a record, then stops the run before any broker is needed.
    (tmp_path / "json_logs_app.py").write_text(
        "import logging\nfrom toolkit.errors import ConfigError\n\n"
        "def register(consumer):\n"
        f"    logging.getLogger('toolkit.consumer').warning('hello', extra={CONTEXT!r})\n"
        "    raise ConfigError('stopping here', setting='--app')\n"
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [str(tmp_path), *sys.path])
    result = CliRunner().invoke(
        app, ["run", "--app", "json_logs_app:register"], env={"EPISTLE_LOG_FORMAT": "json", "EPISTLE_TRACING": "0"}
    )
    assert result.exit_code == 1 and "stopping here" in result.output
    entry = next(json.loads(line) for line in result.output.splitlines() if line.startswith("{"))
    assert entry["message"] == "hello" and {k: entry[k] for k in CONTEXT} == CONTEXT
