"""The app the reliability tests run with ``epistle run --app tests.reliability.recorder_app:register``.

Its handler appends ``messageId partition offset time`` to ``RECORDER_FILE`` and fsyncs before it returns,
so a line is on disk for every message that reached the handler, whenever the process is killed.
``RECORDER_TOPIC`` names the topic.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

from toolkit.consumer import KafkaConsumer, Message


def register(consumer: KafkaConsumer) -> Callable[[], None]:
    fd = os.open(os.environ["RECORDER_FILE"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    async def record(message: Message) -> bool:
        line = f"{message.message_id} {message.partition} {message.offset} {time.time():.6f}\n"
        os.write(fd, line.encode())  # one write(2) on an O_APPEND file: a whole line, never interleaved
        os.fsync(fd)
        return True  # never suspends: the worst case for the runtime's commit ticker

    consumer.register_handler(os.environ["RECORDER_TOPIC"], record)
    return lambda: os.close(fd)
