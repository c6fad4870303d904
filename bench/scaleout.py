"""Scale-out: the same backlog drained by 1 and by 2 worker processes of ``epistle run --workers N``.

Each run starts ``epistle run --app bench.scaleout:register --workers N --until-idle`` with a new consumer
group on one backlog (a 4-partition topic, so that two workers get two partitions each), runs 1 and 2
interleaved (1 2 1 2 ...). The app is the toolkit with a no-op handler, as contender T: every record is
decoded, validated and built into its model. Each worker writes, when it stops, when it handled its first
and its last record, how many it handled and the CPU it used.

    msg/s        backlog / (last record handled by any worker - first record handled by any worker), as the
                 other throughput rows (group join and start-up left out; a rebalance when the second
                 worker joins is in)
    wall s       from starting ``epistle run`` to its exit: interpreters, imports, group joins and the
                 idle detection included
    CPU s, cores the workers' CPU time (all their threads, start-up included), and that over wall s: how much
                 of the machine they got
    redelivered  records handled more than once (handed over uncommitted at a rebalance)
    busy %       the whole machine's non-idle CPU time during the run (/proc/stat): the broker shares it

    python -m bench --only scale-out          # this row alone, merged into bench/results/
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import backlog, machine

ROOT = Path(__file__).resolve().parent.parent
PARTITIONS = 4
WORKERS = (1, 2)


def register(consumer: Any, settings: Any) -> Callable[[], None]:
    """The ``epistle run --app`` function of each worker: a no-op handler on ``BENCH_SCALEOUT_TOPIC``; the
    cleanup writes this worker's marks to ``BENCH_SCALEOUT_MARKS/<pid>.json``."""
    marks: dict[str, Any] = {"first": None, "last": None, "count": 0}

    async def handle(message: Any) -> bool:
        now = time.time()
        if marks["first"] is None:
            marks["first"] = now
        marks["last"] = now
        marks["count"] += 1
        return True

    consumer.register_handler(os.environ["BENCH_SCALEOUT_TOPIC"], handle)

    def write_marks() -> None:
        times = os.times()
        marks["cpu_s"] = round(times.user + times.system, 2)
        path = Path(os.environ["BENCH_SCALEOUT_MARKS"]) / f"{os.getpid()}.json"
        path.write_text(json.dumps(marks))

    return write_marks


def combine(marks: list[dict[str, Any]], records: int) -> dict[str, Any]:
    """One run's figures from its workers' marks (pure: tested)."""
    active = [m for m in marks if m.get("first") is not None]
    handled = sum(m["count"] for m in marks)
    if not active:
        return {"error": "no record handled"}
    window = max(m["last"] for m in active) - min(m["first"] for m in active)
    return {
        "msgs_per_s": round(records / window, 1) if window > 0 else None,
        "handled": handled,
        "redelivered": handled - records,
        "workers_with_records": len(active),
        "worker_processes": len(marks),
        "cpu_s": round(sum(m.get("cpu_s", 0.0) for m in marks), 2),
    }


def measure(bootstrap: str, topic: str, records: int, workers: int, timeout: float) -> dict[str, Any]:
    """Drain the backlog once with ``workers`` processes."""
    with tempfile.TemporaryDirectory(prefix="bench-scaleout-") as folder:
        env = {
            **os.environ,
            "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
            "SCHEMA_REGISTRY_URL": "",
            "BENCH_SCALEOUT_TOPIC": topic,
            "BENCH_SCALEOUT_MARKS": folder,
        }
        command = [sys.executable, "-m", "toolkit.cli", "run", "--app", "bench.scaleout:register"]
        command += ["--group-id", f"{topic}-{uuid.uuid4().hex[:8]}", "--until-idle", "--workers", str(workers)]
        command += ["--log-level", "WARNING"]
        before, started = machine.read_cpu_times(), time.monotonic()
        proc = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
        wall = time.monotonic() - started
        share = machine.cpu_share(before, machine.read_cpu_times())
        if proc.returncode != 0:
            last = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["failed"]
            return {"error": last[0][:300]} | share
        marks = [json.loads(path.read_text()) for path in Path(folder).glob("*.json")]
    run = combine(marks, records) | {"wall_s": round(wall, 2)} | share
    if "cpu_s" in run:  # how much of the machine the workers got, start-up included
        run["cores"] = round(run["cpu_s"] / wall, 2)
    return run


def scale_out(bootstrap: str, records: int, runs: int) -> dict[str, Any]:
    """1 and 2 workers, ``runs`` times each, interleaved, on one backlog; medians and the ratio 2 over 1."""
    topic = f"bench-scaleout-{uuid.uuid4().hex[:8]}"
    backlog.create_topic(bootstrap, topic, PARTITIONS)
    size = backlog.fill(bootstrap, topic, records)
    load_before = os.getloadavg()[0]
    samples: dict[int, list[dict[str, Any]]] = {n: [] for n in WORKERS}
    for run in range(runs):
        for workers in WORKERS:
            result = measure(bootstrap, topic, records, workers, timeout=max(300, records / 200))
            samples[workers].append(result)
            shown = (
                f"{result['msgs_per_s']:>8,.0f} msg/s, wall {result['wall_s']} s, busy {result['busy_pct']}%, "
                f"redelivered {result['redelivered']}"
                if result.get("msgs_per_s")
                else f"ERROR {result.get('error')}"
            )
            print(f"[scale-out] run {run + 1}/{runs} --workers {workers}: {shown}", flush=True)
    return summarize(samples, records, size) | {
        "load_average_1m": [round(load_before, 1), round(os.getloadavg()[0], 1)]
    }


def summarize(samples: dict[int, list[dict[str, Any]]], records: int, size: int) -> dict[str, Any]:
    """Medians per worker count and the ratio of 2 workers over 1 (pure: tested)."""
    rows = {}
    for workers, results in samples.items():
        ok = [r for r in results if r.get("msgs_per_s")]

        def median(key: str, ok: list[dict[str, Any]] = ok) -> float | None:
            values = [r[key] for r in ok if r.get(key) is not None]
            return round(statistics.median(values), 2) if values else None

        rows[str(workers)] = {
            "median_msgs_per_s": median("msgs_per_s"),
            "runs_msgs_per_s": [r["msgs_per_s"] for r in ok],
            "median_wall_s": median("wall_s"),
            "median_busy_pct": median("busy_pct"),
            "median_cpu_s": median("cpu_s"),
            "median_cores": median("cores"),
            "redelivered": [r["redelivered"] for r in ok],
            "error": next((r["error"] for r in results if "error" in r), None),
        }
    one, two = rows.get("1", {}).get("median_msgs_per_s"), rows.get("2", {}).get("median_msgs_per_s")
    return {
        "messages": records,
        "body_bytes": size,
        "partitions": PARTITIONS,
        "runs": max((len(r) for r in samples.values()), default=0),
        "rows": rows,
        "ratio": round(two / one, 2) if one and two else None,
    }


def markdown(block: dict[str, Any]) -> list[str]:
    measured = f"Measured {block.get('when', '')}"
    if block.get("load_average_1m"):
        measured += f", 1-minute load average {block['load_average_1m'][0]} then {block['load_average_1m'][1]}"
    lines = [
        "## Scale-out: worker processes",
        "",
        measured + ".",
        f"`epistle run --workers N --until-idle` drains the same backlog of {block['messages']:,} JSON envelopes "
        f"(~{block['body_bytes']} bytes, {block['partitions']} partitions) with a no-op handler, 1 and 2 worker "
        f"processes interleaved, {block['runs']} runs each. msg/s counts from the first record any worker "
        "handled to the last; wall s from starting the command to its exit; busy % is the whole machine "
        "(the broker included); workers' cores is their CPU time over wall s. See bench/results/scale-out.md "
        "for what the ratio says on this machine.",
        "",
        "| workers | median msg/s | runs | median wall s | machine busy % | workers' CPU s | workers' cores "
        "| redelivered |",
        "|---:|---:|---|---:|---:|---:|---:|---|",
    ]
    for workers, row in block["rows"].items():
        runs = ", ".join(f"{r:,.0f}" for r in row["runs_msgs_per_s"]) or (row.get("error") or "-")
        redelivered = ", ".join(str(r) for r in row["redelivered"])
        lines.append(
            f"| {workers} | {_fmt(row['median_msgs_per_s'], ',.0f')} | {runs} | {_fmt(row['median_wall_s'])} "
            f"| {_fmt(row['median_busy_pct'])} | {_fmt(row['median_cpu_s'])} | {_fmt(row.get('median_cores'))} "
            f"| {redelivered} |"
        )
    lines += ["", f"Ratio, 2 workers over 1: {_fmt(block.get('ratio'))}.", ""]
    return lines


def _fmt(value: Any, spec: str = "") -> str:
    return "-" if value is None else format(value, spec)
