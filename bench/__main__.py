"""Run the benchmarks and write bench/results/{results.json,results.md,throughput.png}.

    python -m bench                       # defaults: 200,000 messages, 3 runs, all contenders, JSON + Avro
    python -m bench --messages 20000 --runs 3 --rss-messages 100000 --latency-seconds 5   # ~1 minute
    python -m bench --only resume         # one row (here: resume after SIGKILL), merged into the results

Every contender drains the same backlog in the same run, in a fresh process, runs interleaved
(L0 L1 T ... L0 L1 T ...) so that drift on the machine hits all of them alike; the median is reported.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

from bench import backlog, resume

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
ALL = ["L0", "L1", "T", "T-tuned", "P1", "P2"]
TARGETS = [("T", "L1", 0.8), ("T", "P1", 3.0), ("T", "P2", 2.0)]


def _run_contender(name: str, bootstrap: str, topic: str, count: int, fmt: str, timeout: float) -> dict:
    proc = subprocess.run([sys.executable, "-m", "bench.contenders", name, bootstrap, topic, str(count), fmt],
                          capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    if proc.returncode != 0:
        last = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["failed"]
        return {"error": last[0][:300]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def throughput(bootstrap: str, fmt: str, count: int, runs: int, contenders: list[str]) -> dict:
    topic = f"bench-{fmt}-{uuid.uuid4().hex[:8]}"
    backlog.create_topic(bootstrap, topic)
    started = time.monotonic()
    size = backlog.fill(bootstrap, topic, count, fmt)
    print(f"[{fmt}] backlog: {count:,} envelopes of ~{size} bytes in {topic} "
          f"({time.monotonic() - started:.1f}s to produce)", flush=True)
    samples: dict[str, list[dict]] = {name: [] for name in contenders}
    for run in range(runs):
        for name in contenders:
            result = _run_contender(name, bootstrap, topic, count, fmt, timeout=max(300, count / 500))
            samples[name].append(result)
            shown = (f"{result['msgs_per_s']:>10,.0f} msg/s" if "msgs_per_s" in result
                     else result.get("skipped") or f"ERROR {result.get('error')}")
            print(f"[{fmt}] run {run + 1}/{runs} {name:8s} {shown}", flush=True)
    summary = {}
    for name, results in samples.items():
        rates = [r["msgs_per_s"] for r in results if "msgs_per_s" in r]
        summary[name] = {
            "median_msgs_per_s": round(statistics.median(rates), 1) if rates else None,
            "runs_msgs_per_s": rates,
            "max_rss_mb": max((r["max_rss_mb"] for r in results if "msgs_per_s" in r), default=None),
            "note": next((r.get("skipped") or str(r.get("error")) for r in results if "msgs_per_s" not in r), None),
        }
    ratios = {}
    for a, b, target in TARGETS:
        ra, rb = summary.get(a, {}).get("median_msgs_per_s"), summary.get(b, {}).get("median_msgs_per_s")
        if ra and rb:
            ratios[f"{a}/{b}"] = {"ratio": round(ra / rb, 2), "target": target, "met": ra / rb >= target}
    return {"format": fmt, "messages": count, "body_bytes": size, "topic": topic, "contenders": summary,
            "ratios": ratios}


def memory(bootstrap: str, count: int) -> dict:
    topic = f"bench-rss-{uuid.uuid4().hex[:8]}"
    backlog.create_topic(bootstrap, topic)
    backlog.fill(bootstrap, topic, count, "json")
    result = _run_contender("T", bootstrap, topic, count, "json", timeout=max(600, count / 300))
    print(f"[rss] T drained {count:,}: peak RSS {result.get('max_rss_mb')} MB", flush=True)
    return {"messages": count, "peak_rss_mb": result.get("max_rss_mb"), "target_mb": 250,
            "met": bool(result.get("max_rss_mb")) and result["max_rss_mb"] < 250, "detail": result}


def latency(bootstrap: str, rate: int, seconds: float) -> dict:
    proc = subprocess.run([sys.executable, "-m", "bench.latency", bootstrap, str(rate), str(seconds)],
                          capture_output=True, text=True, timeout=seconds + 300, cwd=ROOT)
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-3:]}
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result.update(target_p99_ms=50, met=result["p99_ms"] < 50)
    print(f"[latency] {rate}/s for {seconds}s: p50 {result['p50_ms']} ms, p99 {result['p99_ms']} ms", flush=True)
    return result


def write_markdown(report: dict) -> str:
    lines = [f"# Benchmark results ({report['when']})", "",
             f"Machine: {report['machine']}. Medians of {report['runs']} runs per contender; every contender "
             "drains the same backlog in the same run. Throughput counts records fully handled per second "
             "from the first record received.", ""]
    for block in report["throughput"]:
        lines += [f"## Throughput: {block['format']} bodies ({block['messages']:,} messages, "
                  f"~{block['body_bytes']} bytes each)", "",
                  "| contender | median msg/s | runs | peak RSS MB | note |", "|---|---:|---|---:|---|"]
        for name, row in block["contenders"].items():
            median = f"{row['median_msgs_per_s']:,.0f}" if row["median_msgs_per_s"] else "-"
            runs = ", ".join(f"{r:,.0f}" for r in row["runs_msgs_per_s"])
            rss = row["max_rss_mb"] if row["max_rss_mb"] is not None else "-"
            lines.append(f"| {name} | {median} | {runs} | {rss} | {row['note'] or ''} |")
        lines += ["", "| ratio | measured | target | met |", "|---|---:|---:|---|"]
        for key, ratio in block["ratios"].items():
            lines.append(f"| {key} | {ratio['ratio']} | >= {ratio['target']} | {'yes' if ratio['met'] else 'NO'} |")
        lines.append("")
    if report.get("memory"):
        m = report["memory"]
        lines += ["## Memory", "", f"Toolkit (T) draining {m['messages']:,} messages: peak RSS "
                  f"{m['peak_rss_mb']} MB (target < {m['target_mb']} MB: {'met' if m['met'] else 'NOT met'}).", ""]
    if report.get("resume"):
        lines += resume.markdown(report["resume"])
    if report.get("latency"):
        lt = report["latency"]
        if "error" in lt:
            lines += ["## Latency", "", f"failed: {lt['error']}", ""]
        else:
            lines += ["## Latency", "", f"Produce-to-handler latency at {lt['rate']} msg/s for {lt['seconds']} s "
                      f"({lt['count']:,} messages): p50 {lt['p50_ms']} ms, p99 {lt['p99_ms']} ms, max "
                      f"{lt['max_ms']} ms (target p99 < 50 ms: {'met' if lt['met'] else 'NOT met'}).", ""]
    return "\n".join(lines)


def write_chart(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    blocks = report["throughput"]
    fig, axes = plt.subplots(1, len(blocks), figsize=(6 * len(blocks), 4), squeeze=False)
    for ax, block in zip(axes[0], blocks, strict=True):
        names = [n for n, r in block["contenders"].items() if r["median_msgs_per_s"]]
        values = [block["contenders"][n]["median_msgs_per_s"] for n in names]
        bars = ax.bar(names, values, color=["#888" if n.startswith(("L", "P")) else "#2a7" for n in names])
        ax.bar_label(bars, labels=[f"{v / 1000:.1f}k" for v in values])
        ax.set_title(f"{block['format']} bodies, {block['messages']:,} messages (median of {report['runs']})")
        ax.set_ylabel("messages / second (log scale)")
        ax.set_yscale("log")  # L0 (no decoding) is ~50x the others: a linear scale flattens them
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=200_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--formats", default="json,avro")
    parser.add_argument("--contenders", default=",".join(ALL))
    parser.add_argument("--rss-messages", type=int, default=1_000_000, help="0 skips the memory run")
    parser.add_argument("--rate", type=int, default=2000)
    parser.add_argument("--latency-seconds", type=float, default=30, help="0 skips the latency run")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--only", choices=["resume"],
                        help="run this row alone and merge it into the existing results.json")
    parser.add_argument("--report-only", action="store_true",
                        help="rewrite results.md and the chart from an existing results.json")
    args = parser.parse_args()
    if args.report_only:
        report = json.loads((args.out / "results.json").read_text())
        (args.out / "results.md").write_text(write_markdown(report) + "\n")
        write_chart(report, args.out / "throughput.png")
        return
    bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS") or f"127.0.0.1:{os.environ.get('EPISTLE_KAFKA_PORT', '9092')}"
    if args.only == "resume":
        previous = args.out / "results.json"
        report = json.loads(previous.read_text()) if previous.exists() else {
            "when": datetime.now(UTC).isoformat(timespec="seconds"), "runs": args.runs, "throughput": [],
            "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
                       f"Python {platform.python_version()}"}
        report["resume"] = resume.resume(bootstrap, args.runs) | {
            "when": datetime.now(UTC).isoformat(timespec="seconds")}
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "results.json").write_text(json.dumps(report, indent=2) + "\n")
        (args.out / "results.md").write_text(write_markdown(report) + "\n")
        print(f"wrote {args.out}/results.json, results.md (resume after SIGKILL)")
        return
    contenders = [c.strip() for c in args.contenders.split(",") if c.strip()]
    unknown = sorted(set(contenders) - set(ALL))
    if unknown:
        parser.error(f"unknown contenders {unknown}; choose from {ALL}")

    report = {"when": datetime.now(UTC).isoformat(timespec="seconds"), "runs": args.runs,
              "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
                         f"Python {platform.python_version()}",
              "parameters": vars(args) | {"out": str(args.out)}, "throughput": []}
    for fmt in [f.strip() for f in args.formats.split(",") if f.strip()]:
        report["throughput"].append(throughput(bootstrap, fmt, args.messages, args.runs, contenders))
    if args.rss_messages:
        report["memory"] = memory(bootstrap, args.rss_messages)
    if args.latency_seconds:
        report["latency"] = latency(bootstrap, args.rate, args.latency_seconds)
    report["resume"] = resume.resume(bootstrap, args.runs)

    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out / "results.md").write_text(write_markdown(report) + "\n")
    write_chart(report, args.out / "throughput.png")
    print(f"wrote {args.out}/results.json, results.md, throughput.png")


if __name__ == "__main__":
    main()
