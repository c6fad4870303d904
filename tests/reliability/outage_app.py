"""The app the broker-outage test runs with ``epistle run --app tests.reliability.outage_app:register``.

Like :mod:`tests.reliability.recorder_app` (one fsynced ``messageId partition offset time`` line per message
that reached the handler, in ``RECORDER_FILE``; ``RECORDER_TOPIC`` names the topic), but the handler takes
``RECORDER_DELAY_S`` seconds (an ``asyncio.sleep``, so handlers of different partitions overlap) to keep
the stream going long enough for a broker outage to hit it mid-way. While the file named by
``RECORDER_GATE`` exists, handlers wait (the in-flight window fills and fetching pauses).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable

from toolkit.consumer import KafkaConsumer, Message


def register(consumer: KafkaConsumer) -> Callable[[], None]:
    fd = os.open(os.environ["RECORDER_FILE"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    delay_s = float(os.environ.get("RECORDER_DELAY_S", "0"))
    gate = os.environ.get("RECORDER_GATE")

    async def record(message: Message) -> bool:
        if delay_s > 0:
            await asyncio.sleep(delay_s)
        while gate and os.path.exists(gate):
            await asyncio.sleep(0.01)
        line = f"{message.message_id} {message.partition} {message.offset} {time.time():.6f}\n"
        os.write(fd, line.encode())  # one write(2) on an O_APPEND file: a whole line, never interleaved
        os.fsync(fd)
        return True

    consumer.register_handler(os.environ["RECORDER_TOPIC"], record)
    return lambda: os.close(fd)
