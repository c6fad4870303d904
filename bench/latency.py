"""Produce-to-handler latency of one contender at a paced rate.

The bench driver (``measure``) starts the consumer in a fresh process (``python -m bench.latency NAME
BOOTSTRAP TOPIC TOTAL WARMUP``), sends probe envelopes until that process says it reads, then paces TOTAL
envelopes at the rate from its own process (so the producer never competes for the consumer's GIL), each
stamped with its send time (the header's ``timestamp``, microsecond precision). The consumer records
``now - timestamp`` once the record is fully handled (envelope parsed, body validated, model built), leaves
out the first WARMUP records and prints one JSON line: p50, p99, max in milliseconds.

    L1  the hand-written loop of bench.contenders, fetching the way the toolkit's poll thread does (what is
        buffered, else wait up to 100 ms for one record): consume(n, timeout) alone would wait for n records
    T   the toolkit's KafkaConsumer, defaults and a 1 s commit interval
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import select
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BATCH = 500


def percentiles(latencies_ms: list[float]) -> dict[str, float]:
    """p50, p99 (nearest rank) and max of a non-empty sample."""
    ordered = sorted(latencies_ms)
    rank = max(1, -(-len(ordered) * 99 // 100))  # ceil(0.99 n)
    middle = len(ordered) // 2
    p50 = ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2
    return {"p50_ms": round(p50, 2), "p99_ms": round(ordered[rank - 1], 2), "max_ms": round(ordered[-1], 2)}


# -- the consumer side (a fresh process per contender) -----------------------------------------------------


def _sent_at(timestamp: str) -> float:
    return datetime.fromisoformat(timestamp).timestamp()


def consume_l1(bootstrap: str, topic: str, total: int, on_record: Callable[[Any], bool]) -> None:
    from confluent_kafka import Consumer

    from bench.contenders import _consumer_config, _hand_written_decoder, _schema_and_model
    from toolkit.envelope import decode_record

    schema, model = _schema_and_model("json")
    decode = _hand_written_decoder("json", schema)
    validate_model = model.model_validate
    consumer = Consumer(_consumer_config(bootstrap, **{"enable.auto.offset.store": False}))
    consumer.subscribe([topic])
    last_commit, done = time.monotonic(), False
    while not done:
        batch = consumer.consume(BATCH, 0) or consumer.consume(1, 0.1)
        for message in batch:
            if message.error() is not None:
                continue
            envelope = decode_record(message.value())
            if envelope.header.producer != "probe":
                validate_model(decode(envelope.body))
            consumer.store_offsets(message)
            done = on_record(envelope.header) or done
        if time.monotonic() - last_commit > 1.0:
            consumer.commit(asynchronous=True)
            last_commit = time.monotonic()
    consumer.close()


def consume_t(bootstrap: str, topic: str, total: int, on_record: Callable[[Any], bool]) -> None:
    from toolkit.consumer import KafkaConsumer

    consumer = KafkaConsumer(bootstrap, f"bench-{uuid.uuid4().hex[:8]}", commit_interval_s=1.0)

    async def handle(message) -> bool:
        if on_record(message.header):
            consumer.request_stop()
        return True

    consumer.register_handler(topic, handle)
    asyncio.run(consumer.start())


CONSUMERS = {"L1": consume_l1, "T": consume_t}


def consume(name: str, bootstrap: str, topic: str, total: int, warmup: int) -> dict[str, Any]:
    latencies: list[float] = []
    state = {"seen": 0, "ready": False}

    def on_record(header) -> bool:
        now = time.time()
        if header.producer == "probe":
            if not state["ready"]:
                state["ready"] = True
                print("ready", flush=True)
            return False
        state["seen"] += 1
        if state["seen"] > warmup:
            latencies.append((now - _sent_at(header.timestamp)) * 1000)
        return state["seen"] >= total

    CONSUMERS[name](bootstrap, topic, total, on_record)
    return {"contender": name, "count": len(latencies), **percentiles(latencies)}


# -- the producer side (the bench driver's process) --------------------------------------------------------


def _envelope(body: str, producer_name: str = "bench") -> bytes:
    header = {
        "messageType": "OrderPlaced",
        "schemaName": "orders",
        "schemaVersion": "2",
        "correlationId": str(uuid.uuid4()),
        "messageId": str(uuid.uuid4()),
        "timestamp": datetime.now(UTC).isoformat(),
        "producer": producer_name,
    }
    return ('{"header":' + json.dumps(header, separators=(",", ":")) + ',"body":' + body + "}").encode()


def measure(name: str, bootstrap: str, rate: float, seconds: float, cpus: str = "") -> dict[str, Any]:
    """Run contender ``name`` against ``rate`` msg/s for ``seconds`` (the first second is a warm-up)."""
    from confluent_kafka import Producer

    from bench import backlog

    topic = f"bench-latency-{uuid.uuid4().hex[:8]}"
    backlog.create_topic(bootstrap, topic)
    total, warmup = max(1, int(rate * seconds)), int(rate)
    rng = random.Random(3)
    bodies = [json.dumps(backlog.order_body(rng), separators=(",", ":")) for _ in range(100)]
    command = [sys.executable, "-m", "bench.latency", name, bootstrap, topic, str(total), str(warmup)]
    if cpus:
        command += ["--cpus", cpus]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 1, "acks": "all"})
    try:
        deadline = time.monotonic() + 120
        while True:  # probes until the consumer has joined and reads
            producer.produce(topic, _envelope(bodies[0], "probe"))
            producer.flush(5)
            if select.select([proc.stdout], [], [], 0.5)[0] and proc.stdout.readline().strip() == "ready":
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                return {"contender": name, "error": (proc.stderr.read() or "no ready line").strip()[-300:]}
        started = time.perf_counter()
        sent = 0
        while sent < total:  # catch up in small bursts: sleep() is too coarse for one record at a time
            due = min(total, int((time.perf_counter() - started) * rate) + 1)
            while sent < due:
                producer.produce(topic, _envelope(bodies[sent % len(bodies)]), key=str(sent % 32).encode())
                sent += 1
            producer.poll(0)
            time.sleep(min(0.001, max(0.0, (sent / rate) - (time.perf_counter() - started))))
        achieved = total / (time.perf_counter() - started)
        producer.flush(30)
        out, err = proc.communicate(timeout=seconds + 120)
    except subprocess.TimeoutExpired:
        proc.kill()
        return {"contender": name, "error": "the consumer did not finish"}
    finally:
        if proc.poll() is None:
            proc.kill()
    if proc.returncode != 0:
        return {"contender": name, "error": (err.strip().splitlines() or ["failed"])[-1][:300]}
    result = json.loads(out.strip().splitlines()[-1])
    return result | {"rate": round(rate), "achieved_rate": round(achieved), "seconds": seconds}


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.latency")
    parser.add_argument("name", choices=sorted(CONSUMERS))
    parser.add_argument("bootstrap")
    parser.add_argument("topic")
    parser.add_argument("total", type=int)
    parser.add_argument("warmup", type=int)
    parser.add_argument("--cpus", default="")
    args = parser.parse_args(argv[1:])
    if args.cpus:
        os.sched_setaffinity(0, {int(c) for c in args.cpus.split(",")})
    print(json.dumps(consume(args.name, args.bootstrap, args.topic, args.total, args.warmup)), flush=True)


if __name__ == "__main__":
    main(sys.argv)
