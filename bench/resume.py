"""Resume after SIGKILL: how long a restarted consumer takes from its start to its first handled record.

A consumer process (the toolkit's KafkaConsumer) handles records of a 3-partition topic and is killed with
SIGKILL; more records are produced; the same consumer is started again with the same group and the time
from spawning it to its first handled record is measured. Two ways of running the group:

    static   KAFKA_GROUP_INSTANCE_ID set (static group membership): the restart takes the dead member's
             place and partitions at once.
    dynamic  no instance id: the restart joins as a new member and waits until the broker expires the dead
             member's session (librdkafka's default session.timeout.ms, 45 s).

    python -m bench --only resume            # this row alone, merged into bench/results/
"""

from __future__ import annotations

import json
import os
import select
import signal
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

from bench import backlog

ROOT = Path(__file__).resolve().parent.parent
PARTITIONS = 3
BACKLOG = 300  # records produced before each start: the first process must see one, the restart too
TIMEOUT_S = 120.0  # per process: the dynamic restart needs the 45 s session to expire first


def _child(bootstrap: str, topic: str, group: str, instance_id: str) -> None:
    """The consumer process: prints when it subscribed (the runtime's "consuming" line, after imports and
    start-up checks), when it was assigned partitions and when it handled its first record; keeps consuming."""
    import asyncio
    import logging

    from toolkit.consumer import KafkaConsumer

    seen: dict[str, float] = {}

    class Marks(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            text = record.getMessage()
            for mark in ("consuming", "partitions assigned"):
                if text.startswith(mark):
                    seen.setdefault(mark, record.created)

    logging.getLogger("toolkit.consumer").addHandler(Marks(logging.INFO))
    logging.getLogger("toolkit.consumer").setLevel(logging.INFO)
    consumer = KafkaConsumer(bootstrap, group, topics=[topic], group_instance_id=instance_id or None)
    first: list[float] = []

    async def handle(message) -> bool:
        if not first:
            first.append(time.time())
            print(
                json.dumps(
                    {
                        "first_record_at": first[0],
                        "subscribed_at": seen.get("consuming"),
                        "assigned_at": seen.get("partitions assigned"),
                    }
                ),
                flush=True,
            )
        return True

    consumer.register_handler(topic, handle)
    asyncio.run(consumer.start())


def _spawn(bootstrap: str, topic: str, group: str, instance_id: str) -> tuple[subprocess.Popen, float]:
    started = time.time()
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.resume", bootstrap, topic, group, instance_id],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    return proc, started


def _first_record(proc: subprocess.Popen, started: float) -> dict[str, float]:
    """Seconds from spawning ``proc`` to its first handled record (``total_s``), and from its subscribing
    (imports and start-up done) to its first record (``after_subscribe_s``)."""
    deadline = time.monotonic() + TIMEOUT_S
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the consumer exited ({proc.returncode}) before handling a record")
        ready, _, _ = select.select([proc.stdout], [], [], 0.05)
        if ready:
            line = proc.stdout.readline()  # the child writes one whole line and flushes
            if line.startswith("{"):
                marks = json.loads(line)
                return {
                    "total_s": marks["first_record_at"] - started,
                    "after_subscribe_s": marks["first_record_at"] - (marks["subscribed_at"] or started),
                }
    raise RuntimeError(f"no record handled within {TIMEOUT_S:.0f}s")


def measure(bootstrap: str, static: bool) -> dict[str, float]:
    """One kill-and-restart: the restart's times to its first handled record (see :func:`_first_record`)."""
    topic = f"bench-resume-{uuid.uuid4().hex[:8]}"
    group = f"{topic}-group"
    instance_id = f"{topic}-1" if static else ""
    backlog.create_topic(bootstrap, topic, PARTITIONS)
    backlog.fill(bootstrap, topic, BACKLOG)
    first, started = _spawn(bootstrap, topic, group, instance_id)
    try:
        _first_record(first, started)
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    backlog.fill(bootstrap, topic, BACKLOG, seed=8)
    second, started = _spawn(bootstrap, topic, group, instance_id)
    try:
        return _first_record(second, started)
    finally:
        second.send_signal(signal.SIGKILL)  # a static member does not leave the group anyway
        second.wait()


def resume(bootstrap: str, runs: int) -> dict:
    """Static membership ``runs`` times, the dynamic baseline once (it waits out a 45 s session)."""
    load_before = os.getloadavg()[0]
    rows = {}
    for name, static, count in (("static", True, runs), ("dynamic", False, 1)):
        samples = []
        for run in range(count):
            sample = {key: round(value, 2) for key, value in measure(bootstrap, static).items()}
            samples.append(sample)
            print(
                f"[resume] {name} run {run + 1}/{count}: first record {sample['total_s']:.2f}s after the "
                f"restart, {sample['after_subscribe_s']:.2f}s after it subscribed",
                flush=True,
            )
        rows[name] = {
            "median_s": statistics.median(s["total_s"] for s in samples),
            "median_after_subscribe_s": statistics.median(s["after_subscribe_s"] for s in samples),
            "runs": samples,
        }
    return {
        "partitions": PARTITIONS,
        "rows": rows,
        "target_s": 5.0,
        "load_average_1m": [round(load_before, 1), round(os.getloadavg()[0], 1)],
        "met": rows["static"]["median_s"] < 5.0,
    }


def markdown(block: dict) -> list[str]:
    measured = f"Measured {block['when']}" if block.get("when") else "Measured in this run"
    if block.get("load_average_1m"):
        measured += f", 1-minute load average {block['load_average_1m'][0]} then {block['load_average_1m'][1]}"
    lines = [
        "## Resume after SIGKILL",
        "",
        measured + ".",
        f"A consumer of a {block['partitions']}-partition topic is killed (SIGKILL) and started again in the "
        "same group: seconds from spawning the new process to its first handled record (interpreter "
        "start-up, imports and start-up checks included), and from its subscribing (the runtime's "
        '"consuming" log line) to that record.',
        "",
        "| group membership | median s from start | median s from subscribing | runs (from start) |",
        "|---|---:|---:|---|",
    ]
    for name, row in block["rows"].items():
        label = "static (KAFKA_GROUP_INSTANCE_ID)" if name == "static" else "dynamic (no instance id, 45 s session)"
        runs = ", ".join(f"{s['total_s']:.2f}" for s in row["runs"])
        lines.append(f"| {label} | {row['median_s']:.2f} | {row['median_after_subscribe_s']:.2f} | {runs} |")
    lines += ["", f"Target: static under {block['target_s']:.0f} s: {'met' if block['met'] else 'NOT met'}.", ""]
    return lines


if __name__ == "__main__":
    _child(*sys.argv[1:5])
