"""The benchmark's pure parts: /proc parsing, steal and busy shares, peak RSS, ratios, labels, the report.

No speed is asserted here: figures are measured by `make bench` and written to its results file.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from bench import machine
from bench.__main__ import LABELS, latency_rate, latency_ratios, summarize, write_markdown
from bench.cli import heaviest
from bench.cli import markdown as cli_markdown
from bench.contenders import CONTENDERS, finish
from bench.latency import percentiles

ROOT = Path(__file__).resolve().parents[2]

STAT = """cpu  466160 10 48518 56072 919 0 1774 3383 0 0
cpu0 232341 0 23184 30802 136 0 363 1571 0 0
intr 123
"""


def test_parse_cpu_times_reads_the_aggregate_line():
    times = machine.parse_cpu_times(STAT)
    assert times == {
        "user": 466160,
        "nice": 10,
        "system": 48518,
        "idle": 56072,
        "iowait": 919,
        "irq": 0,
        "softirq": 1774,
        "steal": 3383,
    }


def test_parse_cpu_times_pads_old_kernels_and_refuses_garbage():
    assert machine.parse_cpu_times("cpu 1 2 3 4\n")["steal"] == 0
    with pytest.raises(ValueError):
        machine.parse_cpu_times("intr 1\n")


def test_cpu_share_is_steal_and_busy_over_all_cpu_time():
    before = machine.parse_cpu_times("cpu 100 0 0 100 0 0 0 0\n")
    after = machine.parse_cpu_times("cpu 160 0 20 110 0 0 0 10\n")  # +60 user +20 sys +10 idle +10 steal
    assert machine.cpu_share(before, after) == {"steal_pct": 10.0, "busy_pct": 80.0}


def test_cpu_share_without_readings_is_unknown():
    times = machine.parse_cpu_times(STAT)
    assert machine.cpu_share(None, times) == {"steal_pct": None, "busy_pct": None}
    assert machine.cpu_share(times, times) == {"steal_pct": None, "busy_pct": None}


def test_cpu_model_from_cpuinfo():
    cpuinfo = "processor\t: 0\nmodel name\t: Intel(R) Xeon(R) @ 2.80GHz\n"
    assert machine.cpu_model(cpuinfo) == "Intel(R) Xeon(R) @ 2.80GHz"


def test_vm_hwm_and_thread_ticks_parsing():
    assert machine.parse_vm_hwm_mb("VmPeak:\t  300000 kB\nVmHWM:\t  102400 kB\n") == 100.0
    assert machine.parse_vm_hwm_mb("Name: x\n") is None
    line = "4242 (rdk:broker (1)) S 1 2 3 4 5 6 7 8 9 10 250 50 0 0 20 0 1 0"
    assert machine.parse_thread_cpu_ticks(line) == 300


def test_calibration_is_a_positive_rate():
    assert machine.calibrate(n=200, repeats=2) > 0


def test_thread_cpu_seconds_names_python_threads():
    threads = machine.thread_cpu_seconds()
    assert "MainThread" in {name for name, _ in threads.values()}


def test_a_child_reports_its_own_peak_not_the_parents():
    """ru_maxrss carries the parent's peak into a child across fork+exec; VmHWM does not."""
    code = textwrap.dedent("""
        import subprocess, sys
        ballast = bytearray(200 * 1024 * 1024)
        for i in range(0, len(ballast), 4096):
            ballast[i] = 1
        child = "from bench.machine import peak_rss_mb; print(peak_rss_mb())"
        print(subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, check=True).stdout)
    """)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env, cwd=ROOT)
    assert float(out.stdout.strip()) < 150


@pytest.mark.skipif((os.cpu_count() or 1) < 2 or not hasattr(os, "sched_setaffinity"), reason="needs 2 CPUs")
def test_pinning_a_process_reaches_every_thread_and_is_put_back():
    code = (
        "import threading, time\nfor _ in range(3): threading.Thread(target=time.sleep, args=(30,)).start()\n"
        "print('up', flush=True)\ntime.sleep(30)\n"
    )
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "up"
        original = {int(t): os.sched_getaffinity(int(t)) for t in os.listdir(f"/proc/{child.pid}/task")}
        cpu = min(os.sched_getaffinity(0))  # one this process may use (CPU 0 may be outside the cgroup)
        with machine.pinned_broker(child.pid, {cpu}):
            tids = [int(t) for t in os.listdir(f"/proc/{child.pid}/task")]
            assert len(tids) == 4
            assert all(os.sched_getaffinity(t) == {cpu} for t in tids)
        assert {t: os.sched_getaffinity(t) for t in original} == original
    finally:
        child.kill()
        child.wait()


@pytest.mark.skipif(
    not hasattr(os, "sched_setaffinity") or len(os.sched_getaffinity(0)) < 2, reason="needs 2 allowed CPUs"
)
def test_a_thread_started_while_pinned_gets_the_process_original_set_back():
    first, second = sorted(os.sched_getaffinity(0))[:2]
    code = (
        "import os, sys, threading, time\n"
        "sys.stdin.readline()\n"
        "t = threading.Thread(target=time.sleep, args=(30,)); t.start()\n"
        "print(t.native_id, flush=True)\ntime.sleep(30)\n"
    )
    child = subprocess.Popen(
        [sys.executable, "-c", code],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: os.sched_setaffinity(0, {first}),
    )
    try:
        time.sleep(0.2)
        with machine.pinned_broker(child.pid, {second}):
            child.stdin.write("go\n")
            child.stdin.flush()
            late = int(child.stdout.readline())
            assert os.sched_getaffinity(late) == {second}
        assert os.sched_getaffinity(late) == {first}  # the broker's own set, not every CPU of the machine
    finally:
        child.kill()
        child.wait()


def test_an_ignored_signal_stays_ignored_while_pinned():
    previous = signal.signal(signal.SIGHUP, signal.SIG_IGN)  # as under nohup
    try:
        with machine.pinned_broker(os.getpid(), os.sched_getaffinity(0)):
            assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
            assert signal.getsignal(signal.SIGTERM) is not signal.SIG_IGN
        assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGHUP, previous)


def test_finish_derives_rate_and_cpu_but_not_from_a_too_short_window():
    cpu = {"cpu_s": 1.5, "threads_cpu_s": {"MainThread": 1.2, "epistle-poll": 0.3}}
    result = finish({"messages": 20_000, "elapsed_s": 2.0}, cpu, 120.0)
    assert result["msgs_per_s"] == 10_000.0
    assert result["cores_busy"] == 0.75
    assert result["cpu_ms_per_1k"] == 75.0
    assert result["max_rss_mb"] == 120.0
    short = finish({"messages": 20_000, "elapsed_s": 0.01}, cpu, 50.0)
    assert "cores_busy" not in short and short["msgs_per_s"] == 2_000_000.0
    assert "msgs_per_s" not in finish({"skipped": "n/a"}, {}, 40.0)


def _sample(rate: float, steal: float = 1.0) -> dict:
    return {
        "msgs_per_s": rate,
        "max_rss_mb": 100.0,
        "cores_busy": 1.0,
        "cpu_ms_per_1k": 50.0,
        "steal_pct": steal,
        "busy_pct": 90.0,
        "threads_cpu_s": {"MainThread": 1.0},
    }


def test_summarize_takes_medians_and_the_target_ratios():
    samples = {
        "L1": [_sample(100), _sample(110), _sample(90)],
        "T": [_sample(85), _sample(80), _sample(95)],
        "P1": [_sample(20)],
        "P2": [{"error": "boom", "steal_pct": 2.0}],
    }
    block = summarize("json", "shared", 1000, 700, "topic", samples)
    assert block["contenders"]["L1"]["median_msgs_per_s"] == 100
    assert block["contenders"]["T"]["label"] == "toolkit (T)"
    assert block["ratios"]["T/L1"] == {"ratio": 0.85, "target": 0.9, "met": False}
    assert block["ratios"]["T/P1"]["ratio"] == 4.25
    assert "T/P2" not in block["ratios"]
    assert block["contenders"]["P2"]["note"] == "boom" and block["contenders"]["P2"]["steal_pct"] == 2.0


def test_the_wire_format_row_has_its_own_labels_and_target_against_the_avro_deserializer():
    samples = {"L1": [_sample(100)], "T": [_sample(85)], "P2": [_sample(70)]}
    block = summarize("avro-wire", "shared", 1000, 150, "topic", samples)
    assert block["ratios"]["T/P2"] == {"ratio": 1.21, "target": 1.0, "met": True}
    assert block["ratios"]["T/L1"]["target"] == 0.8
    assert "AvroDeserializer" in block["contenders"]["P2"]["label"] and "fastavro" in block["contenders"]["L1"]["label"]
    assert "AvroDeserializer" in write_markdown({"when": "now", "runs": 1, "machine": "m", "throughput": [block]})


def test_every_contender_has_a_readable_label():
    assert set(LABELS) == set(CONTENDERS)
    assert LABELS["L0"] == "raw librdkafka (L0)" and LABELS["P2"] == "DeserializingConsumer (P2)"


def test_latency_rate_is_a_fraction_of_the_hand_loops_json_capacity():
    report = {
        "throughput": [
            {"format": "avro", "layout": "shared", "contenders": {"L1": {"median_msgs_per_s": 9e4}}},
            {"format": "json", "layout": "pinned", "contenders": {"L1": {"median_msgs_per_s": 3e4}}},
            {"format": "json", "layout": "shared", "contenders": {"L1": {"median_msgs_per_s": 2e4}}},
        ]
    }
    assert latency_rate(report, 0.4, 2000)[0] == 8000
    assert latency_rate({"throughput": []}, 0.4, 2000)[0] == 2000


def test_latency_ratio_is_toolkit_over_hand_loop():
    rows = {"L1": {"p50_ms": 2.0, "p99_ms": 10.0}, "T": {"p50_ms": 3.0, "p99_ms": 25.0}}
    assert latency_ratios(rows) == {"p50": 1.5, "p99": 2.5, "target_p99": 2.0, "met": False}
    assert latency_ratios({"T": {"p99_ms": 1.0}}) == {}


def test_percentiles_nearest_rank():
    values = [float(v) for v in range(1, 201)]
    assert percentiles(values) == {"p50_ms": 100.5, "p99_ms": 198.0, "max_ms": 200.0}
    assert percentiles([5.0]) == {"p50_ms": 5.0, "p99_ms": 5.0, "max_ms": 5.0}


def test_markdown_shows_labels_and_new_columns():
    block = summarize("json", "pinned", 1000, 700, "topic", {"L1": [_sample(100)], "T": [_sample(90)]})
    report = {
        "when": time.strftime("%Y-%m-%d"),
        "machine": "cpu, 2 cores",
        "runs": 1,
        "calibration": {"start": 50_000.0, "end": 49_000.0},
        "throughput": [block],
        "memory": {
            "messages": 10,
            "target_mb": 250,
            "met": True,
            "contenders": {"T": {"peak_rss_mb": 100.0, "msgs_per_s": 5.0}},
        },
        "latency": {
            "rate": 8000,
            "basis": "40%",
            "seconds": 3,
            "runs": 1,
            "contenders": {
                "L1": {"p50_ms": 1.0, "p99_ms": 4.0, "runs_p99_ms": [4.0]},
                "T": {"p50_ms": 1.5, "p99_ms": 6.0, "runs_p99_ms": [6.0]},
            },
            "ratios": latency_ratios({"L1": {"p50_ms": 1.0, "p99_ms": 4.0}, "T": {"p50_ms": 1.5, "p99_ms": 6.0}}),
        },
    }
    text = write_markdown(report)
    assert "layout pinned" in text and "| hand-written loop (L1) | 100 |" in text
    assert "cores busy" in text and "steal %" in text and "50,000 ops/s" in text
    assert "p99 1.5x (target p99 <= 2.0x: met)" in text


def test_the_baseline_contender_runs_the_same_code_on_the_baselines_toolkit(monkeypatch, tmp_path) -> None:
    import bench.__main__ as bench_main

    calls = []

    class Done:
        returncode, stdout, stderr = 0, '{"msgs_per_s": 1.0}', ""

    monkeypatch.setattr(bench_main, "_baseline_dir", tmp_path)
    monkeypatch.setattr(bench_main.subprocess, "run", lambda command, **kw: calls.append((command, kw)) or Done())
    bench_main._run_contender(bench_main.BASELINE, "b:9092", "t", 10, "json", timeout=5)
    bench_main._run_contender("T", "b:9092", "t", 10, "json", timeout=5)
    (base_cmd, base_kw), (t_cmd, t_kw) = calls
    assert base_cmd == t_cmd and base_cmd[3] == "T"
    assert base_kw["env"]["EPISTLE_BENCH_TOOLKIT"] == str(tmp_path) and t_kw["env"] is None


def test_heaviest_imports_sums_own_time_per_top_level_package():
    log = textwrap.dedent("""\
        import time: self [us] | cumulative | imported package
        import time:       900 |       1900 | encodings
        import time:      2000 |       2000 |     jsonschema._format
        import time:       500 |       2500 |   jsonschema
        import time:     30000 |      30000 | arrow
        error: something else on stderr
        """)
    assert heaviest(log, top=2) == {"arrow": 30.0, "jsonschema": 2.5}


def test_cli_markdown_shows_each_command_against_its_target():
    block = {
        "when": "2026-01-01",
        "runs": 2,
        "python_floor_s": 0.03,
        "load_average_1m": [1.0, 1.2],
        "met": False,
        "rows": {
            "help": {
                "command": "epistle --help",
                "median_s": 0.11,
                "runs_s": [0.1, 0.12],
                "median_cpu_s": 0.09,
                "target_s": 0.3,
                "met": True,
                "heaviest_imports_ms": {"typer": 40.0},
            },
            "check": {"command": "epistle check", "error": "boom", "target_s": 1.0, "met": False},
        },
    }
    text = "\n".join(cli_markdown(block))
    assert "| `epistle --help` | 0.110 | < 0.3 | yes | 0.09 | 0.10, 0.12 | typer 40 |" in text
    assert "| `epistle check` | - | < 1.0 | NO | - | boom |" in text
    assert "load average 1.0 then 1.2" in text


def test_scale_out_combines_the_workers_marks_and_reports_the_ratio():
    from bench import scaleout

    marks = [
        {"first": 100.0, "last": 104.0, "count": 600, "cpu_s": 3.0},
        {"first": 101.0, "last": 105.0, "count": 500, "cpu_s": 2.5},
    ]
    run = scaleout.combine(marks, 1000)
    assert run == {
        "msgs_per_s": 200.0,  # 1,000 records from the first record of any worker to the last
        "handled": 1100,
        "redelivered": 100,
        "workers_with_records": 2,
        "worker_processes": 2,
        "cpu_s": 5.5,
    }
    assert scaleout.combine([{"first": None, "last": None, "count": 0}], 10) == {"error": "no record handled"}
    one = [{"msgs_per_s": 100.0, "wall_s": 12.0, "busy_pct": 70.0, "cpu_s": 9.0, "redelivered": 0}] * 3
    two = [{"msgs_per_s": v, "wall_s": 10.0, "busy_pct": 99.0, "cpu_s": 10.0, "redelivered": 5} for v in (120, 150, 90)]
    block = scaleout.summarize({1: one, 2: two + [{"error": "boom"}]}, 1000, 500)
    assert block["rows"]["2"]["median_msgs_per_s"] == 120 and block["rows"]["2"]["error"] == "boom"
    assert block["ratio"] == 1.2 and block["runs"] == 4
    text = "\n".join(scaleout.markdown(block | {"when": "now"}))
    assert "## Scale-out: worker processes" in text and "Ratio, 2 workers over 1: 1.2." in text
    assert "| 2 | 120 | 120, 150, 90 |" in text
    assert "## Scale-out" in write_markdown(
        {"when": "now", "machine": "m", "runs": 1, "throughput": [], "scale-out": block}
    )


def test_any_toolkit_contender_has_a_baseline_twin(monkeypatch, tmp_path) -> None:
    import bench.__main__ as bench_main

    calls = []

    class Done:
        returncode, stdout, stderr = 0, '{"msgs_per_s": 1.0}', ""

    monkeypatch.setattr(bench_main, "_baseline_dir", tmp_path)
    monkeypatch.setattr(bench_main.subprocess, "run", lambda command, **kw: calls.append((command, kw)) or Done())
    bench_main._run_contender("T-traced@base", "b:9092", "t", 10, "json", timeout=5)
    ((command, kw),) = calls
    assert command[3] == "T-traced" and kw["env"]["EPISTLE_BENCH_TOOLKIT"] == str(tmp_path)
    block = bench_main.summarize(
        "json", "shared", 10, 1, "t", {"T-traced": [{"msgs_per_s": 80.0}], "T-traced@base": [{"msgs_per_s": 50.0}]}
    )
    assert block["ratios"]["T-traced/T-traced@base"] == {"ratio": 1.6, "target": 1.0, "met": True}


def test_rabbitmq_reports_the_toolkit_against_the_hand_loop_and_faststream(monkeypatch) -> None:
    from bench import rabbit

    rates = {"R-L1": [100.0, 120.0, 110.0], "R-T": [90.0, 80.0, 100.0], "R-P1": [50.0, 40.0, 60.0]}
    monkeypatch.setattr(rabbit, "fill", lambda url, queue, count: 500)
    monkeypatch.setattr(rabbit, "delete", lambda url, queue: None)
    monkeypatch.setattr(rabbit, "_uptime", lambda: "load average: 1.00")
    monkeypatch.setattr(
        rabbit,
        "_run",
        lambda name, url, queue, count, timeout: {
            "msgs_per_s": rates[name].pop(0),
            "cpu_ms_per_1k": 10.0,
            "cores_busy": 0.5,
        },
    )
    report = rabbit.measure("amqp://nowhere/", 1000, 3, "python -m bench --only rabbitmq")
    assert list(report["samples"]) == ["R-L1", "R-T", "R-P1"]  # every run fills and drains all three
    assert report["medians"]["R-P1"]["msgs_per_s"] == 50.0
    assert report["ratio"] == round(90 / 110, 3) and report["ratio_p1"] == 1.8
    text = rabbit.markdown(report)
    assert "| FastStream RabbitBroker (R-P1) | 50 | 40 .. 60 |" in text
    assert "**R-T / R-L1 = 0.818** (target 0.8: met)" in text and "**R-T / R-P1 = 1.8**" in text


def test_rabbitmq_markdown_of_a_report_from_before_faststream_has_no_p1_ratio() -> None:
    from bench import rabbit

    row = {"msgs_per_s": 100.0, "min": 90.0, "max": 110.0, "cpu_ms_per_1k": 10.0, "ok_runs": 1}
    report = {
        "when": "2026-01-01T00:00:00+00:00",
        "command": "python -m bench --only rabbitmq",
        "messages": 10,
        "runs": 1,
        "load_before": "-",
        "load_after": "-",
        "bytes_per_message": 500,
        "samples": {"R-L1": [{"cores_busy": 0.5}], "R-T": [{"cores_busy": 0.5}]},
        "medians": {"R-L1": row, "R-T": row},
        "ratio": 1.0,
    }
    text = rabbit.markdown(report)
    assert "R-T / R-L1 = 1.0" in text and "R-P1" not in text


def test_breakdown_gives_microseconds_per_record_by_stage_and_the_rest():
    cpu = {"stages_s": {"envelope": 0.2, "validation": 0.1, "avro decode": 0.0, "model": 0.3}}
    result = finish({"messages": 10_000, "elapsed_s": 1.0}, cpu, 100.0)
    assert result["stages_us"] == {"envelope": 20.0, "validation": 10.0, "model": 30.0, "rest": 40.0}
    samples = {
        "L1": [_sample(100) | {"stages_us": {"envelope": 20.0, "model": 30.0, "rest": 5.0}}],
        "T": [
            _sample(90) | {"stages_us": {"envelope": 21.0, "model": 31.0, "rest": 15.0}},
            _sample(80) | {"stages_us": {"envelope": 23.0, "model": 29.0, "rest": 25.0}},
        ],
    }
    block = summarize("json", "shared", 1000, 700, "topic", samples)
    assert block["contenders"]["T"]["stages_us"] == {"envelope": 22.0, "model": 30.0, "rest": 20.0}
    text = write_markdown({"when": "now", "runs": 2, "machine": "m", "throughput": [block]})
    assert "| envelope | model | same work | rest | total |" in text
    assert "| toolkit (T) | 22.0 | 30.0 | 52.0 | 20.0 | 72.0 |" in text
    plain = summarize("json", "shared", 1000, 700, "topic", {"L1": [_sample(100)], "T": [_sample(90)]})
    plain_text = write_markdown({"when": "now", "runs": 1, "machine": "m", "throughput": [plain]})
    assert "Where a record's time goes" not in plain_text


def test_time_stages_times_the_functions_both_loops_share(monkeypatch) -> None:
    """In a child process (it patches the toolkit): the stages L1 and the toolkit's pipeline call are timed."""
    code = """
import json, random
import bench.contenders as c
c.time_stages()
c._start()
from bench.backlog import envelope
from bench.contenders import _schema_and_model, _hand_written_decoder
from toolkit.envelope import decode_record
schema, model = _schema_and_model("json")
validate = _hand_written_decoder("json", schema)
build = c._model_call(model)
for _ in range(50):
    build(validate(decode_record(envelope("json", random.Random(1))).body))
print(json.dumps({k: v for k, v in c._STAGES.items() if k != "on"}))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    stages = json.loads(out.stdout.strip().splitlines()[-1])
    assert set(stages) == {"envelope", "validation", "model"} and all(v > 0 for v in stages.values())


def test_engine_cost_runs_the_toolkit_and_the_hand_loop_over_the_same_records(capsys) -> None:
    from bench import engine_cost

    for who in ("toolkit", "hand"):
        engine_cost.main(["engine_cost", who, "30", "json"])
        assert f"{who} json:" in capsys.readouterr().out
    engine_cost.main(["engine_cost", "toolkit", "30", "json", "0.5"])
    assert "toolkit json tracing 0.5 sampled:" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="usage"):
        engine_cost.main(["engine_cost", "toolkit", "30"])


def test_the_report_records_an_output_folder_inside_the_repository_relative_to_it(tmp_path) -> None:
    from bench.__main__ import _shown

    assert _shown(ROOT / "bench" / "results") == "bench/results"
    assert _shown(tmp_path) == str(tmp_path)
