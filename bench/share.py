"""Share groups against a consumer group: slow handlers on a one-partition topic.

Each consumer is a process of its own (the toolkit's KafkaConsumer) whose handler takes 20 ms (an
``asyncio.sleep``: a call to a slow service), one handler at a time (``max_workers=1``, the same in both
modes). In a consumer group the one partition goes to one consumer and the others stand idle; in a share
group every consumer takes records of it. The consumers are started and given time to join before the
records are produced; throughput counts records handled per second from the first handled record to the
last, across the consumers.

The broker hands out whole record batches (librdkafka 2.16 has no ``share.acquire.mode=record_limit``), so
the records are produced one per batch (``batch.num.messages=1``), and one share row is produced in batches
of 100 to show what batching does to the spread.

    python -m bench --only share          # this row alone: bench/results/share-groups.{json,md}
"""

from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

from bench import backlog

ROOT = Path(__file__).resolve().parent.parent
HANDLER_S = 0.020
RECORDS = 600
CONSUMERS = 3
POLL_RECORDS = 10  # records a share consumer acquires at a time: a poll (and its round trip) per 10 records
SETTLE_S = 12.0  # after spawning: interpreter start-up, imports, joining the group
TIMEOUT_S = 240.0


def _child(bootstrap: str, topic: str, group: str, mode: str, out: str) -> None:
    """One consumer: appends the time of each handled record to ``out``; runs until SIGTERM."""
    import asyncio

    from toolkit.consumer import KafkaConsumer
    from toolkit.consumer.runtime import run

    log = open(out, "a", buffering=1)  # noqa: SIM115 - kept open for the process's life

    async def handle(message) -> None:
        await asyncio.sleep(HANDLER_S)
        log.write(f"{time.time()}\n")

    consumer = KafkaConsumer(bootstrap, group, topics=[topic], mode=mode, max_workers=1, max_poll_records=POLL_RECORDS)
    consumer.register_handler(topic, handle)
    sys.exit(run(consumer))


def _produce(bootstrap: str, topic: str, count: int, per_batch: int) -> None:
    import random

    from confluent_kafka import Producer

    rng = random.Random(7)
    producer = Producer(
        {"bootstrap.servers": bootstrap, "linger.ms": 0 if per_batch == 1 else 20, "batch.num.messages": per_batch}
    )
    for _ in range(count):
        producer.produce(topic, value=backlog.envelope("json", rng))
        producer.poll(0)
    if producer.flush(60) != 0:
        raise RuntimeError(f"could not produce to {topic}")


def measure(bootstrap: str, mode: str, consumers: int, per_batch: int, workdir: Path) -> dict:
    """One run: records/s across ``consumers`` processes in ``mode``, and how many each handled."""
    topic = f"bench-share-{uuid.uuid4().hex[:8]}"
    group = f"{topic}-group"
    backlog.create_topic(bootstrap, topic, 1)
    outs = [workdir / f"{topic}-{i}.log" for i in range(consumers)]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "EPISTLE_SCHEMAS_DIR": str(ROOT / "schemas")}
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "bench.share", bootstrap, topic, group, mode, str(out)],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for out in outs
    ]

    def times() -> list[list[float]]:
        return [[float(t) for t in out.read_text().split()] if out.exists() else [] for out in outs]

    try:
        time.sleep(SETTLE_S)
        for proc in procs:
            if proc.poll() is not None:
                raise RuntimeError(f"a consumer exited: {proc.communicate()[1][-2000:]}")
        _produce(bootstrap, topic, RECORDS, per_batch)
        deadline = time.monotonic() + TIMEOUT_S
        while sum(map(len, times())) < RECORDS:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{sum(map(len, times()))} of {RECORDS} records handled in {TIMEOUT_S:.0f}s")
            time.sleep(0.2)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
    handled = times()
    stamps = sorted(t for each in handled for t in each)
    span = stamps[-1] - stamps[0]
    return {
        "msg_per_s": round((len(stamps) - 1) / span, 1) if span > 0 else None,
        "per_consumer": sorted((len(each) for each in handled), reverse=True),
    }


ROWS = (  # (name, mode, consumers, records per producer batch)
    ("group, 1 consumer", "group", 1, 1),
    (f"group, {CONSUMERS} consumers", "group", CONSUMERS, 1),
    ("share, 1 consumer", "share", 1, 1),
    (f"share, {CONSUMERS} consumers", "share", CONSUMERS, 1),
    (f"share, {CONSUMERS} consumers, 100 records a producer batch", "share", CONSUMERS, 100),
)


def share_groups(bootstrap: str, runs: int, workdir: Path) -> dict:
    """Every row ``runs`` times, interleaved; medians and the share/group ratio at the same consumer count."""
    load_before = os.getloadavg()[0]
    samples: dict[str, list[dict]] = {name: [] for name, *_ in ROWS}
    for run in range(runs):
        for name, mode, consumers, per_batch in ROWS:
            sample = measure(bootstrap, mode, consumers, per_batch, workdir)
            samples[name].append(sample)
            print(
                f"[share] run {run + 1}/{runs} {name}: {sample['msg_per_s']} msg/s, per consumer "
                f"{sample['per_consumer']}",
                flush=True,
            )
    rows = {
        name: {
            "mode": mode,
            "consumers": consumers,
            "per_batch": per_batch,
            "median_msg_per_s": statistics.median(s["msg_per_s"] for s in samples[name] if s["msg_per_s"]),
            "runs": samples[name],
        }
        for name, mode, consumers, per_batch in ROWS
    }
    share_n = rows[f"share, {CONSUMERS} consumers"]["median_msg_per_s"]
    group_n = rows[f"group, {CONSUMERS} consumers"]["median_msg_per_s"]
    return {
        "records": RECORDS,
        "handler_ms": HANDLER_S * 1000,
        "consumers": CONSUMERS,
        "rows": rows,
        "ratio": round(share_n / group_n, 2),
        "load_average_1m": [round(load_before, 1), round(os.getloadavg()[0], 1)],
    }


def markdown(block: dict) -> list[str]:
    lines = [
        "## Share groups against a consumer group (slow handlers, one partition)",
        "",
        f"Measured {block.get('when', '')}, on {block.get('machine', 'this machine')}; 1-minute load average "
        f"{block['load_average_1m'][0]} then {block['load_average_1m'][1]}. {block['records']} records on a "
        f"one-partition topic; each consumer a process of its own, its handler {block['handler_ms']:.0f} ms "
        "(`asyncio.sleep`), one at a time (`max_workers=1`, `max_poll_records=10`, both modes); records/s from "
        "the first handled record to the last, across the consumers; medians of the runs. The load average is "
        "the whole machine's (other jobs shared its 2 cores): the spread between runs is theirs.",
        "",
        "| consumers | median msg/s | runs (msg/s) | records handled per consumer (last run) |",
        "|---|---:|---|---|",
    ]
    for name, row in block["rows"].items():
        runs = ", ".join(f"{s['msg_per_s']:.1f}" for s in row["runs"] if s["msg_per_s"])
        lines.append(f"| {name} | {row['median_msg_per_s']:.1f} | {runs} | {row['runs'][-1]['per_consumer']} |")
    lines += [
        "",
        f"Ratio share/group with {block['consumers']} consumers: **{block['ratio']:.2f}** (the group's one "
        "partition keeps all but one of its consumers idle; the share group's consumers all take records of it).",
        "",
        "Records produced in batches of up to 100: the broker acquires whole record batches (librdkafka 2.16 has "
        "no `share.acquire.mode=record_limit`), so a poll may return a whole batch whatever `max_poll_records` "
        "says: fewer polls for the same records. The work still spreads here (several batches for three "
        'consumers), but a topic fed in few large batches feeds few consumers (docs/contracts.md, "Share groups").',
        "",
    ]
    return lines


def run_and_write(bootstrap: str, runs: int, out: Path, machine_name: str) -> None:
    from datetime import UTC, datetime

    out.mkdir(parents=True, exist_ok=True)
    workdir = out / ".share-work"
    workdir.mkdir(exist_ok=True)
    try:
        block = share_groups(bootstrap, runs, workdir)
    finally:
        for stale in workdir.glob("*.log"):
            stale.unlink()
        workdir.rmdir()
    block |= {"when": datetime.now(UTC).isoformat(timespec="seconds"), "machine": machine_name}
    (out / "share-groups.json").write_text(json.dumps(block, indent=2) + "\n")
    (out / "share-groups.md").write_text("\n".join(["# Benchmark results: share groups", "", *markdown(block)]))
    print(f"wrote {out}/share-groups.json, share-groups.md", flush=True)


if __name__ == "__main__":
    _child(*sys.argv[1:6])
