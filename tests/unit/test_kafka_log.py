"""RepeatFilter: librdkafka's repeated lines pass once per interval and say how many were held back."""

from __future__ import annotations

import logging

from toolkit.consumer.kafka_log import KAFKA_LOGGER, RepeatFilter, kafka_logger


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def record(text: str, level: int = logging.ERROR, fac: str = "FAIL") -> logging.LogRecord:
    # confluent-kafka calls logger.log(level, "%s [%s] %s", facility, client name, text)
    return logging.LogRecord(KAFKA_LOGGER, level, __file__, 1, "%s [%s] %s", (fac, "rdkafka#consumer-1", text), None)


def refused(ms: int) -> logging.LogRecord:
    return record(
        f"127.0.0.1:9092/1: Connect to ipv4#127.0.0.1:9092 failed: Connection refused (after {ms}ms in state CONNECT)"
    )


def test_a_repeated_line_passes_once_per_interval_and_counts_what_it_held_back():
    clock = Clock()
    repeat = RepeatFilter(interval_s=10, clock=clock)
    passed = []
    for step in range(200):  # one line every 50 ms for 10 s, numbers varying as librdkafka's do
        clock.now = 100.0 + step * 0.05
        line = refused(step % 7)
        if repeat.filter(line):
            passed.append(line.getMessage())
    clock.now = 110.0
    last = refused(3)
    assert repeat.filter(last)
    assert len(passed) == 1 and "Connection refused" in passed[0]
    assert last.getMessage().endswith("(199 more like this held back)")


def test_lines_of_other_kinds_are_not_held_back():
    repeat = RepeatFilter(interval_s=10, clock=Clock())
    assert repeat.filter(refused(0))
    assert repeat.filter(record("all broker connections are down", fac="ERROR"))
    assert repeat.filter(record("Connect to ipv4#127.0.0.1:9092 failed", level=logging.WARNING))
    assert not repeat.filter(refused(5))


def test_the_filter_is_installed_once_on_the_toolkit_kafka_logger():
    logger = kafka_logger()
    assert logger is kafka_logger() and logger.name == KAFKA_LOGGER
    assert sum(isinstance(f, RepeatFilter) for f in logger.filters) == 1


def test_info_and_debug_lines_are_never_held_back():
    repeat = RepeatFilter(interval_s=10, clock=Clock())
    for level in (logging.INFO, logging.DEBUG):
        assert all(repeat.filter(record("Disconnected (after 5ms in state UP)", level=level)) for _ in range(5))
