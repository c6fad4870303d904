"""What makes figures comparable across machines: the CPU model, a single-thread calibration figure, the
steal and busy time of the whole machine during each run (from /proc/stat), peak memory of a process
(VmHWM), and CPU pinning of the broker and of a contender.

Pinning the broker changes a shared process: ``pinned_broker`` saves every thread's affinity and puts it
back on exit (also on SIGTERM/SIGINT); ``python -m bench --unpin-broker`` gives the broker every CPU again
if a run was killed with SIGKILL while it held the pin.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import re
import signal
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# /proc/stat's cpu line: user nice system idle iowait irq softirq steal guest guest_nice (guest is already
# counted in user, guest_nice in nice, so they are left out of the total).
_FIELDS = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")


def cpu_model(cpuinfo: str | None = None) -> str:
    """The CPU model name from /proc/cpuinfo (``platform.processor()`` is often empty on Linux)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return platform.processor() or platform.machine()
    match = re.search(r"^model name\s*:\s*(.+)$", cpuinfo, re.MULTILINE)
    return match.group(1).strip() if match else (platform.processor() or platform.machine())


def parse_cpu_times(stat: str) -> dict[str, int]:
    """The aggregate ``cpu`` line of /proc/stat as jiffies per field (missing trailing fields count 0)."""
    for line in stat.splitlines():
        parts = line.split()
        if parts and parts[0] == "cpu":
            values = [int(v) for v in parts[1 : 1 + len(_FIELDS)]]
            values += [0] * (len(_FIELDS) - len(values))
            return dict(zip(_FIELDS, values, strict=True))
    raise ValueError("no aggregate cpu line in /proc/stat")


def read_cpu_times() -> dict[str, int] | None:
    try:
        return parse_cpu_times(Path("/proc/stat").read_text())
    except (OSError, ValueError):
        return None


def cpu_share(before: dict[str, int] | None, after: dict[str, int] | None) -> dict[str, float | None]:
    """Steal and busy time between two /proc/stat readings, in percent of all CPUs' time.

    steal: time the hypervisor gave our virtual CPUs to someone else. busy: time not idle (anyone's
    work on this machine, the contender's included).
    """
    if not before or not after:
        return {"steal_pct": None, "busy_pct": None}
    delta = {k: after[k] - before[k] for k in _FIELDS}
    total = sum(delta.values())
    if total <= 0:
        return {"steal_pct": None, "busy_pct": None}
    idle = delta["idle"] + delta["iowait"]
    return {
        "steal_pct": round(100 * delta["steal"] / total, 1),
        "busy_pct": round(100 * (total - idle - delta["steal"]) / total, 1),
    }


def _calibration_round(n: int) -> None:
    """A fixed pure-Python workload close to the hot path's mix: dict building, JSON, string work, ints."""
    total = 0
    for i in range(n):
        record = {"id": i, "name": f"customer{i}", "items": [i, i * 2, i * 3], "ok": i % 2 == 0}
        text = json.dumps(record)
        back = json.loads(text)
        total += len(text) + back["items"][2] + len(back["name"].upper())
    if total < 0:  # keeps the work observable
        raise AssertionError


def calibrate(n: int = 20_000, repeats: int = 5) -> float:
    """Single-thread calibration: the best of ``repeats`` rounds of the fixed workload, in rounds' ops/s.

    The best round is the one least disturbed by other load; compare it across machines as "how fast is
    one core for Python".
    """
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        _calibration_round(n)
        best = min(best, time.perf_counter() - started)
    return round(n / best, 0)


def parse_vm_hwm_mb(status: str) -> float | None:
    """Peak resident set (VmHWM) from /proc/<pid>/status, in MB.

    Unlike getrusage's ru_maxrss, VmHWM belongs to this process image alone: Linux carries the parent's
    peak into a child's ru_maxrss across fork+exec, so every contender reported at least the peak of the
    bench driver (214.4 MB for all of them after it produced a 1M backlog).
    """
    match = re.search(r"^VmHWM:\s+(\d+)\s+kB", status, re.MULTILINE)
    return round(int(match.group(1)) / 1024, 1) if match else None


def peak_rss_mb() -> float | None:
    try:
        return parse_vm_hwm_mb(Path("/proc/self/status").read_text())
    except OSError:
        return None


def parse_thread_cpu_ticks(stat: str) -> int:
    """utime + stime (clock ticks) from a /proc/<pid>/task/<tid>/stat line (the comm may hold spaces)."""
    fields = stat[stat.rindex(")") + 2 :].split()
    return int(fields[11]) + int(fields[12])  # fields 14 and 15 of the full line


def thread_cpu_seconds() -> dict[int, tuple[str, float]]:
    """CPU seconds used so far by each thread of this process: {tid: (name, seconds)}.

    Python thread names come from ``threading`` (3.11 does not give them to the OS); librdkafka's threads
    carry their own OS names (rdk:main, rdk:broker...).
    """
    import threading

    names = {t.native_id: t.name for t in threading.enumerate() if t.native_id is not None}
    tick = os.sysconf("SC_CLK_TCK")
    result = {}
    for task in Path("/proc/self/task").iterdir():
        try:
            tid = int(task.name)
            ticks = parse_thread_cpu_ticks((task / "stat").read_text())
            name = names.get(tid) or (task / "comm").read_text().strip()
        except (OSError, ValueError):
            continue
        result[tid] = (name, ticks / tick)
    return result


# -- pinning -----------------------------------------------------------------------------------------------


def broker_pid() -> int | None:
    """The local broker's pid from the services state folder (EPISTLE_SERVICES_DIR, else .services)."""
    state = Path(os.environ.get("EPISTLE_SERVICES_DIR", ROOT / ".services"))
    try:
        pid = int((state / "kafka" / "pid").read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if Path(f"/proc/{pid}").exists() else None


def _threads(pid: int) -> list[int]:
    try:
        return [int(t.name) for t in Path(f"/proc/{pid}/task").iterdir()]
    except OSError:
        return []


def set_process_affinity(pid: int, cpus: set[int]) -> dict[int, set[int]]:
    """Give every thread of ``pid`` the CPU set ``cpus``; returns each thread's previous set."""
    previous = {}
    for tid in _threads(pid):
        try:
            previous[tid] = os.sched_getaffinity(tid)
            os.sched_setaffinity(tid, cpus)
        except (ProcessLookupError, PermissionError):
            continue
    return previous


def restore_affinity(previous: dict[int, set[int]], pid: int | None = None) -> None:
    """Put back the saved sets; threads started since get the process's original set (its main thread's,
    ``previous[pid]``), or every CPU when that is unknown."""
    fallback = previous.get(pid) if pid is not None else None
    if fallback is None:
        fallback = set(range(os.cpu_count() or 1))
    tids = set(previous) | (set(_threads(pid)) if pid else set())
    for tid in tids:
        with contextlib.suppress(ProcessLookupError, PermissionError, OSError):
            os.sched_setaffinity(tid, previous.get(tid, fallback))


@contextlib.contextmanager
def pinned_broker(pid: int, cpus: set[int]) -> Iterator[None]:
    """Pin the broker to ``cpus`` for the block; restored on exit, on SIGTERM and on Ctrl-C."""
    previous = set_process_affinity(pid, cpus)
    handlers = {}

    def on_signal(signum, frame):  # restore, then behave as the signal would have
        restore_affinity(previous, pid)
        signal.signal(signum, handlers[signum])
        os.kill(os.getpid(), signum)

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        if signal.getsignal(signum) is signal.SIG_IGN:  # e.g. SIGHUP under nohup: stays ignored
            continue
        handlers[signum] = signal.signal(signum, on_signal)
    try:
        yield
    finally:
        restore_affinity(previous, pid)
        for signum, handler in handlers.items():
            signal.signal(signum, handler)


def unpin(pid: int) -> None:
    """Every CPU for every thread of ``pid`` (recovery after a killed pinned run)."""
    restore_affinity({}, pid)
