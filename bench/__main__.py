"""Run the benchmarks and write bench/results/{results.json,results.md,throughput.png}.

    python -m bench                       # defaults: 200,000 messages, 3 runs, all contenders, JSON + Avro
                                          # envelopes and Avro in Confluent's wire format (the registry's)
    python -m bench --messages 20000 --runs 3 --rss-messages 100000 --latency-seconds 5 --out /tmp/bench  # quick
    python -m bench --layouts shared,pinned,one-core     # also pinned: the broker's affinity is changed
    python -m bench --only resume         # one row (here: resume after SIGKILL), merged into the results
    python -m bench --only cli            # how long `epistle --help` and `epistle check` take to run
    python -m bench --only share          # share groups against a consumer group: bench/results/share-groups.md
    python -m bench --only rabbitmq --messages 20000   # toolkit on RabbitMQ vs aio-pika loop, FastStream
    python -m bench --only scale-out --messages 100000   # one backlog drained by 1 and by 2 worker processes
    python -m bench --formats avro-wire --contenders L1,T,P2 --throughput-only --name avro-wire --runs 5
                                          # Confluent's wire format (Avro binary) -> bench/results/avro-wire.md

Every contender drains the same backlog in the same run, in a fresh process, runs interleaved
(L0 L1 T ... L0 L1 T ...) so that drift on the machine hits all of them alike; the median is reported.

To compare machines, the report records the CPU model, a single-thread calibration figure (start and end
of the run), the steal and busy time of the machine during each contender's run, and the CPU each
contender used (cores kept busy, CPU ms per 1,000 records, per thread). --layouts repeats the throughput
runs with the broker and the contender on CPUs of their own:

    shared    nothing pinned (the default)
    pinned    the broker pinned to CPU 0 and the contender to CPU 1 (the broker's affinity is put back after)
    one-core  the contender alone restricted to CPU 1, the broker left as it is

Latency is measured for the hand-written loop (L1) and the toolkit (T) at the same rate, a fraction of
L1's measured JSON capacity (--latency-fraction), and reported as T's p50/p99 against L1's.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

from bench import backlog, cli, machine, rabbit, resume, scaleout
from bench import latency as latency_probe
from bench import share as share_groups

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
ALL = ["L0", "L1", "T", "T-metrics", "T-tuned", "T-traced", "T-sampled", "T-sampled100", "T-unsampled", "P1", "P2"]
# T-metrics/T, T-traced/T, T-sampled.../T: what metrics and tracing (SDK, batch processor; every record, 1 in 10, 1
# in 100 or none sampled) cost, against 0.9x of the same run with them off; X/X@base: the toolkit contender X
# against another revision (--baseline), e.g. T/T@base, T-traced/T-traced@base
TARGETS = [
    ("T", "L1", 0.9),  # the goal for JSON and Avro envelopes (0.8 was the first target)
    ("T", "P1", 3.0),
    ("T", "P2", 2.0),
    ("T-metrics", "T", 0.9),
    ("T-traced", "T", 0.9),
    ("T-sampled", "T", 0.9),
    ("T-sampled100", "T", 0.9),
    ("T-unsampled", "T", 0.9),
    ("T", "T@base", 0.95),
    ("T-traced", "T-traced@base", 1.0),
    ("T-sampled", "T-sampled@base", 1.0),
    ("T-sampled100", "T-sampled100@base", 1.0),
    ("T-unsampled", "T-unsampled@base", 1.0),
]
# per format, targets that differ from TARGETS: in Confluent's wire format P2 is DeserializingConsumer with
# AvroDeserializer (binary Avro, no JSON Schema validation): the toolkit is to be faster, not 2x; and a record
# takes L1 a third less time there (no envelope, no JSON), so the same engine is a larger share: 0.8
FORMAT_TARGETS = {"avro-wire": {("T", "P2"): 1.0, ("T", "L1"): 0.8}}
LABELS = {
    "L0": "raw librdkafka (L0)",
    "L1": "hand-written loop (L1)",
    "T": "toolkit (T)",
    "T-metrics": "toolkit + Prometheus metrics",
    "T-tuned": "toolkit tuned",
    "T-traced": "toolkit, tracing on, all sampled",
    "T-sampled": "toolkit, tracing on, 1 in 10 sampled",
    "T-sampled100": "toolkit, tracing on, 1 in 100 sampled",
    "T-unsampled": "toolkit, tracing on, none sampled",
    "P1": "FastStream (P1)",
    "P2": "DeserializingConsumer (P2)",
}
FORMAT_LABELS = {
    "avro-wire": {
        "L1": "hand-written loop: poll, strip 5 bytes, fastavro, model (L1)",
        "P2": "DeserializingConsumer + AvroDeserializer (P2)",
    }
}
# layout: (the broker's CPUs or None to leave it, the contender's CPUs or "" for any)
LAYOUTS = {"shared": (None, ""), "pinned": ({0}, "1"), "one-core": (None, "1")}
LATENCY_TARGET_RATIO = 2.0  # toolkit p99 <= 2x the hand-written loop's p99 at the same rate


def label(name: str, fmt: str | None = None) -> str:
    return FORMAT_LABELS.get(fmt or "", {}).get(name) or LABELS.get(name, name)


BASELINE = "T@base"  # the toolkit (defaults, as T) at the --baseline git revision
BASE_SUFFIX = "@base"  # any toolkit contender X: X@base is X at the --baseline revision
_baseline_dir: Path | None = None


def baseline_checkout(ref: str) -> Path:
    """The files of git revision ``ref`` (its toolkit and generated models), extracted once under .cache."""
    sha = subprocess.run(
        ["git", "rev-parse", "--verify", f"{ref}^{{commit}}"], cwd=ROOT, capture_output=True, text=True
    )
    if sha.returncode != 0:
        raise SystemExit(f"--baseline {ref}: not a git revision of this repository ({sha.stderr.strip()})")
    target = ROOT / ".cache" / "bench-baseline" / sha.stdout.strip()[:12]
    if not (target / "toolkit").is_dir():
        target.mkdir(parents=True, exist_ok=True)
        archive = subprocess.run(
            ["git", "archive", sha.stdout.strip(), "toolkit", "generated_models", "schemas"],
            cwd=ROOT,
            capture_output=True,
            check=True,
        )
        subprocess.run(["tar", "-x", "-C", str(target)], input=archive.stdout, check=True)
    return target


def _run_contender(name: str, bootstrap: str, topic: str, count: int, fmt: str, timeout: float, cpus: str = "") -> dict:
    env = None
    if name.endswith(BASE_SUFFIX):  # the same contender code, importing the baseline's toolkit
        assert _baseline_dir is not None
        name, env = name.removesuffix(BASE_SUFFIX), {**os.environ, "EPISTLE_BENCH_TOOLKIT": str(_baseline_dir)}
    command = [sys.executable, "-m", "bench.contenders", name, bootstrap, topic, str(count), fmt]
    if cpus:
        command += ["--cpus", cpus]
    before = machine.read_cpu_times()
    proc = subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=ROOT, env=env)
    share = machine.cpu_share(before, machine.read_cpu_times())  # the whole machine during the run
    if proc.returncode != 0:
        last = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["failed"]
        return {"error": last[0][:300]} | share
    return json.loads(proc.stdout.strip().splitlines()[-1]) | share


def _median(results: list[dict], key: str) -> float | None:
    values = [r[key] for r in results if r.get(key) is not None]
    return round(statistics.median(values), 2) if values else None


@contextlib.contextmanager
def _layout(name: str) -> Iterator[str]:
    """Apply a layout for the block; yields the contender's CPUs (or raises SystemExit if impossible)."""
    broker_cpus, contender_cpus = LAYOUTS[name]
    if contender_cpus and (os.cpu_count() or 1) < 2:
        raise SystemExit(f"layout {name} needs 2 CPUs")
    if broker_cpus is None:
        yield contender_cpus
        return
    pid = machine.broker_pid()
    if pid is None:
        raise SystemExit("layout pinned: no local broker pid (EPISTLE_SERVICES_DIR/kafka/pid)")
    with machine.pinned_broker(pid, broker_cpus):
        yield contender_cpus


def throughput(
    bootstrap: str, fmt: str, count: int, runs: int, contenders: list[str], layouts: list[str]
) -> list[dict]:
    """One block per layout, all on the same backlog."""
    topic = f"bench-{fmt}-{uuid.uuid4().hex[:8]}"
    backlog.create_topic(bootstrap, topic)
    started = time.monotonic()
    size = backlog.fill(bootstrap, topic, count, fmt)
    what = "records in Confluent's wire format" if fmt == "avro-wire" else "envelopes"
    print(
        f"[{fmt}] backlog: {count:,} {what} of ~{size} bytes in {topic} ({time.monotonic() - started:.1f}s to produce)",
        flush=True,
    )
    blocks = []
    for layout in layouts:
        samples: dict[str, list[dict]] = {name: [] for name in contenders}
        with _layout(layout) as cpus:
            for run in range(runs):
                for name in contenders:
                    result = _run_contender(
                        name, bootstrap, topic, count, fmt, timeout=max(300, count / 500), cpus=cpus
                    )
                    samples[name].append(result)
                    shown = (
                        f"{result['msgs_per_s']:>10,.0f} msg/s, {result.get('cores_busy')} cores busy, "
                        f"steal {result.get('steal_pct')}%"
                        if "msgs_per_s" in result
                        else result.get("skipped") or f"ERROR {result.get('error')}"
                    )
                    print(f"[{fmt}/{layout}] run {run + 1}/{runs} {name:8s} {shown}", flush=True)
        blocks.append(summarize(fmt, layout, count, size, topic, samples))
    return blocks


def summarize(fmt: str, layout: str, count: int, size: int, topic: str, samples: dict[str, list[dict]]) -> dict:
    """Medians per contender and the target ratios for one block (pure: tested)."""
    summary = {}
    for name, results in samples.items():
        ok = [r for r in results if "msgs_per_s" in r]
        rates = [r["msgs_per_s"] for r in ok]
        summary[name] = {
            "label": label(name, fmt),
            "median_msgs_per_s": round(statistics.median(rates), 1) if rates else None,
            "runs_msgs_per_s": rates,
            "max_rss_mb": max((r["max_rss_mb"] for r in ok if r.get("max_rss_mb") is not None), default=None),
            "cores_busy": _median(ok, "cores_busy"),
            "cpu_ms_per_1k": _median(ok, "cpu_ms_per_1k"),
            "threads_cpu_s": ok[-1].get("threads_cpu_s") if ok else None,
            "steal_pct": _median(results, "steal_pct"),
            "busy_pct": _median(results, "busy_pct"),
            "note": next((r.get("skipped") or str(r.get("error")) for r in results if "msgs_per_s" not in r), None),
        }
        stages = {stage for r in ok for stage in r.get("stages_us", {})}
        if stages:  # --breakdown: medians of the runs, by stage
            summary[name]["stages_us"] = {
                stage: _median([r["stages_us"] for r in ok if "stages_us" in r], stage) for stage in sorted(stages)
            }
    ratios = {}
    for a, b, target in TARGETS:
        target = FORMAT_TARGETS.get(fmt, {}).get((a, b), target)
        ra, rb = summary.get(a, {}).get("median_msgs_per_s"), summary.get(b, {}).get("median_msgs_per_s")
        if ra and rb:
            ratios[f"{a}/{b}"] = {"ratio": round(ra / rb, 2), "target": target, "met": ra / rb >= target}
    return {
        "format": fmt,
        "layout": layout,
        "messages": count,
        "body_bytes": size,
        "topic": topic,
        "contenders": summary,
        "ratios": ratios,
    }


def memory(bootstrap: str, count: int, contenders: list[str]) -> dict:
    """Peak RSS (VmHWM of the contender's own process) draining a large backlog."""
    topic = f"bench-rss-{uuid.uuid4().hex[:8]}"
    backlog.create_topic(bootstrap, topic)
    backlog.fill(bootstrap, topic, count, "json")
    rows = {}
    for name in contenders:
        result = _run_contender(name, bootstrap, topic, count, "json", timeout=max(600, count / 300))
        print(f"[rss] {name} drained {count:,}: peak RSS {result.get('max_rss_mb')} MB", flush=True)
        rows[name] = {
            "label": label(name),
            "peak_rss_mb": result.get("max_rss_mb"),
            "msgs_per_s": result.get("msgs_per_s"),
            "error": result.get("error"),
        }
    peak = rows.get("T", {}).get("peak_rss_mb")
    return {
        "messages": count,
        "contenders": rows,
        "peak_rss_mb": peak,
        "target_mb": 250,
        "met": bool(peak) and peak < 250,
    }


def latency_rate(report: dict, fraction: float, fallback: int) -> tuple[float, str]:
    """The latency phase's rate: ``fraction`` of L1's median JSON msg/s (shared layout), else ``fallback``."""
    for block in report.get("throughput", []):
        if block["format"] == "json" and block["layout"] == "shared":
            capacity = block["contenders"].get("L1", {}).get("median_msgs_per_s")
            if capacity:
                return round(capacity * fraction), f"{fraction:.0%} of L1's {capacity:,.0f} msg/s (JSON, shared)"
    return fallback, f"--rate {fallback} (no L1 JSON figure in this run)"


def latency(bootstrap: str, contenders: list[str], rate: float, basis: str, seconds: float, runs: int) -> dict:
    """Each contender ``runs`` times, interleaved with the order reversed every other run (L1 T, T L1, ...:
    the first run after the backlog phases meets a busier broker); medians of p50 and p99, max of max."""
    samples: dict[str, list[dict]] = {name: [] for name in contenders}
    for run in range(runs):
        for name in contenders if run % 2 == 0 else contenders[::-1]:
            result = latency_probe.measure(name, bootstrap, rate, seconds)
            samples[name].append(result)
            shown = (
                f"p50 {result['p50_ms']} ms, p99 {result['p99_ms']} ms (sent at {result['achieved_rate']}/s)"
                if "p99_ms" in result
                else f"ERROR {result.get('error')}"
            )
            print(f"[latency] run {run + 1}/{runs} {name} at {rate:,.0f}/s for {seconds}s: {shown}", flush=True)
    rows = {name: summarize_latency(name, results) for name, results in samples.items()}
    return {
        "rate": rate,
        "basis": basis,
        "seconds": seconds,
        "runs": runs,
        "contenders": rows,
        "ratios": latency_ratios(rows),
    }


def summarize_latency(name: str, results: list[dict]) -> dict:
    ok = [r for r in results if "p99_ms" in r]
    return {
        "label": label(name),
        "p50_ms": _median(ok, "p50_ms"),
        "p99_ms": _median(ok, "p99_ms"),
        "max_ms": max((r["max_ms"] for r in ok), default=None),
        "runs_p99_ms": [r["p99_ms"] for r in ok],
        "count": sum(r["count"] for r in ok),
        "achieved_rate": _median(ok, "achieved_rate"),
        "error": next((r["error"] for r in results if "error" in r), None),
    }


def latency_ratios(rows: dict) -> dict:
    """T's p50 and p99 over L1's at the same rate (pure: tested)."""
    t, l1 = rows.get("T", {}), rows.get("L1", {})
    if not (t.get("p99_ms") and l1.get("p99_ms")):
        return {}
    p99 = t["p99_ms"] / l1["p99_ms"]
    return {
        "p50": round(t["p50_ms"] / l1["p50_ms"], 2) if l1.get("p50_ms") else None,
        "p99": round(p99, 2),
        "target_p99": LATENCY_TARGET_RATIO,
        "met": p99 <= LATENCY_TARGET_RATIO,
    }


def _fmt(value, spec: str = "") -> str:
    return "-" if value is None else format(value, spec)


def write_markdown(report: dict) -> str:
    calibration = report.get("calibration") or {}
    lines = [
        f"# Benchmark results ({report['when']})",
        "",
        f"Machine: {report['machine']}. Medians of {report['runs']} runs per contender; every contender "
        "drains the same backlog in the same run. Throughput counts records fully handled per second "
        "from the first record received.",
        "",
    ]
    if report.get("command"):
        lines += [f"Command: `{report['command']}`", ""]
    load = report.get("load_average") or {}
    if load:
        shown = "; ".join(f"{when} {', '.join(str(v) for v in values)}" for when, values in load.items())
        lines += [
            f"Load average (1, 5, 15 min; the machine is shared, so other work may run meanwhile): {shown}.",
            "",
        ]
    if calibration:
        lines += [
            f"Single-thread calibration (a fixed pure-Python workload, best of 5 rounds): "
            f"{_fmt(calibration.get('start'), ',.0f')} ops/s at the start, "
            f"{_fmt(calibration.get('end'), ',.0f')} at the end. Compare it across machines before "
            "comparing msg/s; the ratios are what the targets are about.",
            "",
        ]
    lines += [
        "Columns: *cores busy* is the contender's CPU time (all its threads) over its wall time from the "
        "first to the last record; *CPU ms / 1k* its CPU time per 1,000 records; *steal* and *busy* are "
        "the whole machine's steal time and non-idle time during the contender's run (/proc/stat, % of "
        "all CPUs); *peak RSS* is the contender process's own VmHWM.",
        "",
    ]
    for block in report["throughput"]:
        layout = block.get("layout", "shared")
        lines += [
            f"## Throughput: {block['format']} bodies, layout {layout} ({block['messages']:,} messages, "
            f"~{block['body_bytes']} bytes each)",
            "",
            "| contender | median msg/s | runs | cores busy | CPU ms / 1k | steal % | busy % | peak RSS MB | note |",
            "|---|---:|---|---:|---:|---:|---:|---:|---|",
        ]
        for name, row in block["contenders"].items():
            runs = ", ".join(f"{r:,.0f}" for r in row["runs_msgs_per_s"])
            lines.append(
                f"| {row.get('label') or label(name)} | {_fmt(row['median_msgs_per_s'], ',.0f')} | {runs} "
                f"| {_fmt(row.get('cores_busy'))} | {_fmt(row.get('cpu_ms_per_1k'))} "
                f"| {_fmt(row.get('steal_pct'))} | {_fmt(row.get('busy_pct'))} | {_fmt(row['max_rss_mb'])} "
                f"| {row['note'] or ''} |"
            )
        lines += ["", "| ratio | measured | target | met |", "|---|---:|---:|---|"]
        for key, ratio in block["ratios"].items():
            lines.append(f"| {key} | {ratio['ratio']} | >= {ratio['target']} | {'yes' if ratio['met'] else 'NO'} |")
        threads = {
            n: r.get("threads_cpu_s")
            for n, r in block["contenders"].items()
            if n in ("L1", "T", "T-metrics", "T-tuned") and r.get("threads_cpu_s")
        }
        if threads:
            lines += [
                "",
                "CPU seconds per thread (last run): "
                + "; ".join(
                    f"{label(n)}: " + ", ".join(f"{t} {sec}" for t, sec in th.items()) for n, th in threads.items()
                ),
            ]
        lines += _breakdown_table(block)
        lines.append("")
    if report.get("memory"):
        m = report["memory"]
        lines += [
            "## Memory",
            "",
            f"Peak RSS (each contender's own process, VmHWM) draining {m['messages']:,} "
            f"JSON messages; target for the toolkit < {m['target_mb']} MB: {'met' if m['met'] else 'NOT met'}.",
            "",
            "| contender | peak RSS MB | msg/s |",
            "|---|---:|---:|",
        ]
        for name, row in m.get("contenders", {"T": m}).items():
            lines.append(f"| {label(name)} | {_fmt(row['peak_rss_mb'])} | {_fmt(row.get('msgs_per_s'), ',.0f')} |")
        lines.append("")
    if report.get("resume"):
        lines += resume.markdown(report["resume"])
    if report.get("cli"):
        lines += cli.markdown(report["cli"])
    if report.get("scale-out"):
        lines += scaleout.markdown(report["scale-out"])
    if report.get("latency"):
        lt = report["latency"]
        if "contenders" not in lt:  # an older results.json: the toolkit alone at a fixed rate
            lt = {
                "rate": lt.get("rate"),
                "basis": "fixed",
                "seconds": lt.get("seconds"),
                "runs": 1,
                "contenders": {"T": lt},
            }
        lines += [
            "## Latency",
            "",
            f"Produce-to-handler latency at {lt['rate']:,} msg/s ({lt['basis']}), "
            f"{lt.get('runs', 1)} runs of {lt['seconds']} s per contender, interleaved (order reversed every "
            "other run), the producer in another process; the first second of a run is left out. "
            "Medians of the runs' p50 and p99.",
            "",
            "| contender | p50 ms | p99 ms | p99 per run | max ms | records | sent at msg/s | note |",
            "|---|---:|---:|---|---:|---:|---:|---|",
        ]
        for name, row in lt["contenders"].items():
            per_run = ", ".join(str(v) for v in row.get("runs_p99_ms", []))
            lines.append(
                f"| {label(name)} | {_fmt(row.get('p50_ms'))} | {_fmt(row.get('p99_ms'))} | {per_run} "
                f"| {_fmt(row.get('max_ms'))} | {_fmt(row.get('count'), ',')} "
                f"| {_fmt(row.get('achieved_rate'), ',')} | {row.get('error') or ''} |"
            )
        r = lt.get("ratios") or {}
        if r:
            lines += [
                "",
                f"Toolkit over hand-written loop at the same rate: p50 {_fmt(r['p50'])}x, p99 {r['p99']}x "
                f"(target p99 <= {r['target_p99']}x: {'met' if r['met'] else 'NOT met'}).",
                "",
            ]
    rq = report.get("rabbitmq")
    if rq:
        m = rq["medians"]
        lines += [
            "",
            "## RabbitMQ",
            "",
            f"{rabbit.LABELS['R-T']} {_fmt(m['R-T']['msgs_per_s'], ',.0f')} msg/s against "
            f"{rabbit.LABELS['R-L1']} {_fmt(m['R-L1']['msgs_per_s'], ',.0f')} msg/s: **R-T/R-L1 {rq['ratio']}**"
            + (
                f"; against {rabbit.LABELS['R-P1']} {_fmt(m['R-P1']['msgs_per_s'], ',.0f')} msg/s: "
                f"**R-T/R-P1 {rq.get('ratio_p1')}**"
                if "R-P1" in m
                else ""
            )
            + " (bench/results/rabbitmq.md).",
        ]
    return "\n".join(lines)


def _breakdown_table(block: dict) -> list[str]:
    """--breakdown: where a record's time goes, in microseconds (medians), for the contenders that timed it."""
    rows = {name: c["stages_us"] for name, c in block["contenders"].items() if c.get("stages_us")}
    if not rows:
        return []
    stages = [s for s in ("envelope", "validation", "avro decode", "model") if any(s in r for r in rows.values())]
    lines = [
        "",
        "Where a record's time goes (--breakdown: microseconds per record, wall clock, medians of the runs): the "
        "stages both the hand-written loop and the toolkit run with the same functions, timed around each call, "
        "and the rest: for L1 its loop (consume, offsets), for the toolkit the engine (lanes, offsets, outcomes, "
        "the message handed to the handler, the hand-over from the poll thread) and any wait for the CPU.",
        "",
        "| contender | " + " | ".join(stages) + " | same work | rest | total |",
        "|---|" + "---:|" * (len(stages) + 3),
    ]
    for name, per in rows.items():
        same = sum(per.get(s) or 0.0 for s in stages)
        rest = per.get("rest") or 0.0
        cells = [_fmt(per.get(s), ".1f") for s in stages]
        lines.append(f"| {label(name)} | " + " | ".join(cells) + f" | {same:.1f} | {rest:.1f} | {same + rest:.1f} |")
    return lines


def write_chart(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    blocks = report["throughput"]
    fig, axes = plt.subplots(len(blocks), 1, figsize=(9, 3.2 * len(blocks)), squeeze=False)
    for ax, block in zip(axes[:, 0], blocks, strict=True):
        names = [n for n, r in block["contenders"].items() if r["median_msgs_per_s"]]
        values = [block["contenders"][n]["median_msgs_per_s"] for n in names]
        colors = ["#2a7" if n.startswith("T") else "#888" for n in names]
        bars = ax.barh([label(n) for n in names], values, color=colors)
        ax.bar_label(bars, labels=[f" {v / 1000:,.1f}k msg/s" for v in values])
        ax.invert_yaxis()
        ax.set_title(
            f"{block['format']} bodies, layout {block.get('layout', 'shared')}, {block['messages']:,} "
            f"messages (median of {report['runs']})"
        )
        ax.set_xlabel("messages / second (log scale)")
        ax.set_xscale("log")  # L0 (no decoding) is ~50x the others: a linear scale flattens them
        if values:  # bars from a power of ten well below the smallest, so that lengths compare
            ax.set_xlim(left=10 ** math.floor(math.log10(min(values) / 3)), right=max(values) * 8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=200_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument(
        "--formats",
        default="json,avro,avro-wire",
        help="json and avro: envelopes; avro-wire: Confluent's wire format, the schema in the registry at "
        "SCHEMA_REGISTRY_URL (default Apicurio's http://127.0.0.1:8081/apis/ccompat/v7)",
    )
    parser.add_argument("--contenders", default=",".join(ALL))
    parser.add_argument("--rss-messages", type=int, default=1_000_000, help="0 skips the memory run")
    parser.add_argument(
        "--rate", type=int, default=2000, help="latency rate when the run has no L1 JSON throughput figure"
    )
    parser.add_argument("--latency-seconds", type=float, default=30, help="0 skips the latency run")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument(
        "--only",
        choices=["resume", "cli", "share", "rabbitmq", "scale-out"],
        help="run this row alone and merge it into the existing results.json (share: its own share-groups.md; "
        "rabbitmq: its own rabbitmq.{json,md}, --messages envelopes, --runs runs)",
    )
    parser.add_argument(
        "--rabbitmq-messages",
        type=int,
        default=50_000,
        help="backlog of the RabbitMQ rows (toolkit vs hand-written aio-pika loop) in a full run; 0 skips them",
    )
    parser.add_argument("--cli-runs", type=int, default=cli.RUNS, help="runs of each epistle command timed")
    parser.add_argument(
        "--report-only", action="store_true", help="rewrite results.md and the chart from an existing results.json"
    )
    # comparable across machines
    parser.add_argument(
        "--layouts",
        default="shared",
        help=f"comma-separated, from {list(LAYOUTS)}; pinned changes the shared broker's "
        "affinity for its block (put back after)",
    )
    parser.add_argument("--rss-contenders", default="T,L1", help="contenders of the memory run")
    parser.add_argument("--latency-contenders", default="L1,T", help=f"from {sorted(latency_probe.CONSUMERS)}")
    parser.add_argument("--latency-runs", type=int, default=3, help="latency runs per contender, interleaved")
    parser.add_argument(
        "--latency-fraction", type=float, default=0.4, help="latency rate as a fraction of L1's measured JSON msg/s"
    )
    parser.add_argument(
        "--baseline",
        metavar="GIT_REF",
        help=f"also run each toolkit contender X of --contenders (T, T-traced ...) on the toolkit of this git "
        f"revision (X{BASE_SUFFIX}, e.g. {BASELINE}), interleaved: before/after ratios from one run, e.g. "
        "--baseline main --contenders T,T-traced",
    )
    parser.add_argument(
        "--throughput-only",
        action="store_true",
        help="only the throughput rows (no memory, latency, resume or cli rows)",
    )
    parser.add_argument(
        "--name",
        default="results",
        help="the files written under --out: NAME.json and NAME.md (the chart only for the default name)",
    )
    parser.add_argument(
        "--unpin-broker",
        action="store_true",
        help="give the local broker every CPU again (after a pinned run was killed) and exit",
    )
    parser.add_argument(
        "--breakdown",
        action="store_true",
        help="L1 and the toolkit contenders also time the stages they share (envelope, validation, fastavro's "
        "reader, model), "
        "to show where a record's time goes; adds ~0.2 us per stage call to both",
    )
    args = parser.parse_args()
    if args.breakdown:
        os.environ["EPISTLE_BENCH_BREAKDOWN"] = "1"  # read by bench.contenders in each contender's process
    if args.unpin_broker:
        pid = machine.broker_pid()
        if pid is None:
            parser.error("no local broker pid found")
        machine.unpin(pid)
        print(f"broker pid {pid}: every thread may run on every CPU again")
        return
    if args.report_only:
        report = json.loads((args.out / "results.json").read_text())
        (args.out / "results.md").write_text(write_markdown(report) + "\n")
        write_chart(report, args.out / "throughput.png")
        return
    bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS") or f"127.0.0.1:{os.environ.get('EPISTLE_KAFKA_PORT', '9092')}"
    if args.only == "share":
        machine_name = f"{machine.cpu_model()}, {os.cpu_count()} cores, Python {platform.python_version()}"
        share_groups.run_and_write(bootstrap, args.runs, args.out, machine_name)
        return
    command = "python -m bench " + " ".join(sys.argv[1:])
    if args.only == "rabbitmq":
        row = rabbit.measure(rabbit.default_url(), args.messages, args.runs, command)
        rabbit.write(row, args.out)
        print(f"wrote {args.out}/rabbitmq.json, rabbitmq.md (R-T/R-L1 {row['ratio']}, R-T/R-P1 {row['ratio_p1']})")
        return
    if args.only:
        previous = args.out / "results.json"
        report = (
            json.loads(previous.read_text())
            if previous.exists()
            else {
                "when": datetime.now(UTC).isoformat(timespec="seconds"),
                "runs": args.runs,
                "throughput": [],
                "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
                f"Python {platform.python_version()}",
            }
        )
        if args.only == "scale-out":
            row = scaleout.scale_out(bootstrap, args.messages, args.runs)
        else:
            row = resume.resume(bootstrap, args.runs) if args.only == "resume" else cli.measure(args.cli_runs)
        report[args.only] = row | {"when": datetime.now(UTC).isoformat(timespec="seconds")}
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "results.json").write_text(json.dumps(report, indent=2) + "\n")
        (args.out / "results.md").write_text(write_markdown(report) + "\n")
        print(f"wrote {args.out}/results.json, results.md ({args.only})")
        return
    contenders = _names(parser, args.contenders, ALL)
    if args.baseline:
        global _baseline_dir
        _baseline_dir = baseline_checkout(args.baseline)
        # Each toolkit contender again on the baseline's toolkit, interleaved with the rest (T alone if none)
        based = [name for name in contenders if name.startswith("T")] or ["T"]
        for name in based:
            LABELS[name + BASE_SUFFIX] = f"{label(name)} at {args.baseline} ({name}{BASE_SUFFIX})"
        contenders += [name + BASE_SUFFIX for name in based]
        print(f"[baseline] {args.baseline}: {_baseline_dir}", flush=True)
    layouts = _names(parser, args.layouts, list(LAYOUTS))
    rss_contenders = _names(parser, args.rss_contenders, ALL)
    latency_contenders = _names(parser, args.latency_contenders, sorted(latency_probe.CONSUMERS))
    if "pinned" in layouts and machine.broker_pid() is None:  # before any run, not after an hour of them
        parser.error("layout pinned needs the local broker's pid (EPISTLE_SERVICES_DIR/kafka/pid)")
    if set(layouts) - {"shared"} and (os.cpu_count() or 1) < 2:
        parser.error(f"layouts {sorted(set(layouts) - {'shared'})} need 2 CPUs")

    report = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "runs": args.runs,
        "machine": f"{machine.cpu_model()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        "command": "python -m bench " + " ".join(sys.argv[1:]),
        "load_average": {"start": [round(v, 2) for v in os.getloadavg()]},
        "calibration": {"start": machine.calibrate()},
        "parameters": vars(args) | {"out": _shown(args.out)},
        "throughput": [],
    }
    print(f"[machine] {report['machine']}; calibration {report['calibration']['start']:,.0f} ops/s", flush=True)
    for fmt in [f.strip() for f in args.formats.split(",") if f.strip()]:
        report["throughput"] += throughput(bootstrap, fmt, args.messages, args.runs, contenders, layouts)
    if not args.throughput_only:
        if args.rss_messages:
            report["memory"] = memory(bootstrap, args.rss_messages, rss_contenders)
        if args.latency_seconds:
            rate, basis = latency_rate(report, args.latency_fraction, args.rate)
            report["latency"] = latency(
                bootstrap, latency_contenders, rate, basis, args.latency_seconds, args.latency_runs
            )
        report["resume"] = resume.resume(bootstrap, args.runs)
        report["cli"] = cli.measure(args.cli_runs)
        report["scale-out"] = scaleout.scale_out(bootstrap, args.messages, args.runs)
        if args.rabbitmq_messages:
            row = rabbit.measure(rabbit.default_url(), args.rabbitmq_messages, args.runs, command)
            rabbit.write(row, args.out)
            report["rabbitmq"] = {"ratio": row["ratio"], "medians": row["medians"], "see": "rabbitmq.md"}
    report["calibration"]["end"] = machine.calibrate()
    report["load_average"]["end"] = [round(v, 2) for v in os.getloadavg()]

    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.name}.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out / f"{args.name}.md").write_text(write_markdown(report) + "\n")
    written = f"{args.name}.json, {args.name}.md"
    if args.name == "results":
        write_chart(report, args.out / "throughput.png")
        written += ", throughput.png"
    print(f"wrote {args.out}/{written}")
    if not args.throughput_only:
        share_groups.run_and_write(bootstrap, args.runs, args.out, report["machine"])


def _shown(path: Path) -> str:
    """A path as the report records it: relative to the repository when inside it (no machine's own paths)."""
    try:
        return str(path.resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


def _names(parser: argparse.ArgumentParser, raw: str, allowed: list[str]) -> list[str]:
    names = [c.strip() for c in raw.split(",") if c.strip()]
    unknown = sorted(set(names) - set(allowed))
    if unknown:
        parser.error(f"unknown names {unknown}; choose from {allowed}")
    return names


if __name__ == "__main__":
    main()
