"""librdkafka's own log lines, through Python logging and without the flood during an outage.

Left alone, librdkafka writes to stderr and repeats a connection failure every few dozen milliseconds
while a broker is down (56 to 327 lines per outage in our broker-outage tests). The consumer and the
dead-letter producer hand their log to the ``toolkit.kafka`` logger instead (librdkafka's ``logger``
setting; the lines arrive through the clients' poll calls), where :class:`RepeatFilter` passes the first
line of each kind and then at most one per ``interval_s``, saying how many it held back.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections import OrderedDict

KAFKA_LOGGER = "toolkit.kafka"
_NUMBERS = re.compile(r"\d+")
_MAX_KINDS = 1_000


class RepeatFilter(logging.Filter):
    """Pass a warning or error, then hold back lines of the same kind (level, librdkafka facility and text
    with the numbers blanked out: "after 0ms", "30 identical error(s)") for ``interval_s``; the next line of
    that kind to pass says how many were held back. Lines below WARNING are never held back. Thread-safe:
    both clients' threads log through it."""

    def __init__(self, interval_s: float = 10.0, clock=time.monotonic) -> None:
        super().__init__()
        self.interval_s = interval_s
        self._clock = clock
        self._kinds: OrderedDict[tuple, list] = OrderedDict()  # kind -> [last passed at, held back]
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:  # info and debug lines (``debug`` in kafka_config) pass as they are
            return True
        kind = (record.levelno, _NUMBERS.sub("#", record.getMessage()))
        now = self._clock()
        with self._lock:
            seen = self._kinds.get(kind)
            if seen is not None and now - seen[0] < self.interval_s:
                seen[1] += 1
                return False
            held = seen[1] if seen is not None else 0
            self._kinds[kind] = [now, 0]
            self._kinds.move_to_end(kind)
            if len(self._kinds) > _MAX_KINDS:  # bounded: the texts come from the network
                self._kinds.popitem(last=False)
        if held:
            record.msg = f"{record.getMessage()} ({held} more like this held back)"
            record.args = ()
        return True


def kafka_logger() -> logging.Logger:
    """The ``toolkit.kafka`` logger with its :class:`RepeatFilter` (added once)."""
    logger = logging.getLogger(KAFKA_LOGGER)
    if not any(isinstance(f, RepeatFilter) for f in logger.filters):
        logger.addFilter(RepeatFilter())
    return logger
