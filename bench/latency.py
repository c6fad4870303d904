"""Produce-to-handler latency of the toolkit at a fixed rate: ``python -m bench.latency BOOTSTRAP RATE SECONDS``.

A producer thread paces envelopes at RATE per second, each stamped with its send time (the header's
``timestamp``, microsecond precision); the toolkit's handler records ``now - timestamp``. The first second
is a warm-up and is left out. Prints one JSON line: p50, p99, max in milliseconds.
"""

from __future__ import annotations

import asyncio
import json
import random
import statistics
import sys
import threading
import time
import uuid
from datetime import UTC, datetime

from confluent_kafka import Producer

from bench import backlog


def main(bootstrap: str, rate: int, seconds: float) -> dict:
    from toolkit.consumer import KafkaConsumer

    topic = f"bench-latency-{uuid.uuid4().hex[:8]}"
    backlog.create_topic(bootstrap, topic)
    total = int(rate * seconds)
    warmup = rate  # the first second
    latencies: list[float] = []
    consumer = KafkaConsumer(bootstrap, f"bench-{uuid.uuid4().hex[:8]}", commit_interval_s=1.0)
    seen = {"n": 0}
    assigned = threading.Event()

    async def handle(message) -> bool:
        assigned.set()
        if message.header.producer == "probe":
            return True
        sent = datetime.fromisoformat(message.header.timestamp).timestamp()
        seen["n"] += 1
        if seen["n"] > warmup:
            latencies.append((time.time() - sent) * 1000)
        if seen["n"] == total:
            consumer.request_stop()
        return True

    def produce() -> None:
        producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 1, "acks": "all"})
        rng = random.Random(3)
        while not assigned.is_set():  # one probe until the consumer has joined and reads
            producer.produce(topic, backlog.envelope("json", rng, producer_name="probe"))
            producer.flush(5)
            assigned.wait(1.0)
        start = time.perf_counter()
        for i in range(total):
            target = start + i / rate
            delay = target - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            producer.produce(topic, backlog.envelope("json", rng, datetime.now(UTC)), key=str(i % 32).encode())
            producer.poll(0)
        producer.flush(30)

    consumer.register_handler(topic, handle)
    thread = threading.Thread(target=produce, daemon=True)
    thread.start()
    asyncio.run(consumer.start())
    thread.join(30)
    ordered = sorted(latencies)
    return {"rate": rate, "seconds": seconds, "count": len(ordered),
            "p50_ms": round(statistics.median(ordered), 2),
            "p99_ms": round(ordered[int(len(ordered) * 0.99) - 1], 2),
            "max_ms": round(ordered[-1], 2)}


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1], int(sys.argv[2]), float(sys.argv[3]))))
