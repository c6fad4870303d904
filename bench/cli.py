"""Start-up of the ``epistle`` command: wall seconds of ``epistle --help`` and of ``epistle check`` on the
repository's ``schemas/``, each in a fresh interpreter, as a user waits for them.

Each command is run as the console script runs it (``toolkit.cli:main``) from the checkout, once to warm up
and then ``runs`` times; the median is reported against its target, beside the floor (``python -c pass``),
with the CPU seconds the command used (its children included), which a machine busy with other work
changes less than the wall time.
The warm-up leaves every module's bytecode cached, in a private folder (PYTHONPYCACHEPREFIX): an installed
package has its bytecode, and a run with PYTHONDONTWRITEBYTECODE set would compile every toolkit module on
every start. One more run under ``python -X importtime`` names the packages the time goes to, so that a
slower start says which import grew.

    python -m bench --only cli            # this row alone, merged into bench/results/
"""

from __future__ import annotations

import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RUNS = 10
# name -> (epistle's arguments, target median seconds)
COMMANDS = {"help": (["--help"], 0.3), "check": (["check", "--schemas", "schemas"], 1.0)}
_ENTRY = "import sys; from toolkit.cli import main; sys.argv[0] = 'epistle'; sys.exit(main())"


def _command(args: list[str], *, importtime: bool = False) -> list[str]:
    return [sys.executable, *(["-X", "importtime"] if importtime else []), "-c", _ENTRY, *args]


def _cpu_of_children() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _timed(command: list[str], env: dict[str, str]) -> tuple[float, float, subprocess.CompletedProcess]:
    """Wall and CPU seconds of one run (one child at a time: the children's CPU grows by its own alone)."""
    cpu = _cpu_of_children()
    started = time.perf_counter()
    proc = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env=env, timeout=120)
    return time.perf_counter() - started, _cpu_of_children() - cpu, proc


def heaviest(importtime_log: str, top: int = 6) -> dict[str, float]:
    """Milliseconds of import time per top-level package (the sum of each module's own time), largest first,
    from ``python -X importtime``'s log (pure: tested)."""
    per_package: Counter[str] = Counter()
    for line in importtime_log.splitlines():
        if not line.startswith("import time:") or "|" not in line:
            continue
        own, _cumulative, name = line[len("import time:") :].split("|", 2)
        if not own.strip().isdigit():  # the header line
            continue
        per_package[name.strip().split(".")[0]] += int(own) / 1000
    return {name: round(ms, 1) for name, ms in per_package.most_common(top)}


def measure(runs: int = RUNS) -> dict:
    """Median wall and CPU seconds per command over ``runs`` warm starts, the interpreter's floor, the
    heaviest imports of each command; a command that fails is reported with its error, not timed."""
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="epistle-bytecode-") as cache:
        env = {key: value for key, value in os.environ.items() if key != "PYTHONDONTWRITEBYTECODE"}
        env |= {"PYTHONPYCACHEPREFIX": cache, "NO_COLOR": "1"}
        floor = [_timed([sys.executable, "-c", "pass"], env)[0] for _ in range(runs)]
        rows = {}
        for name, (args, target) in COMMANDS.items():
            *_, proc = _timed(_command(args), env)  # warm-up: bytecode written
            if proc.returncode != 0:
                last = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["failed"]
                rows[name] = {
                    "command": f"epistle {' '.join(args)}",
                    "error": last[0][:300],
                    "target_s": target,
                    "met": False,
                }
                print(f"[cli] epistle {' '.join(args)}: ERROR {rows[name]['error']}", flush=True)
                continue
            timed = [_timed(_command(args), env)[:2] for _ in range(runs)]
            samples = [round(wall, 3) for wall, _ in timed]
            imports = heaviest(_timed(_command(args, importtime=True), env)[2].stderr)
            median = round(statistics.median(samples), 3)
            rows[name] = {
                "command": f"epistle {' '.join(args)}",
                "median_s": median,
                "runs_s": samples,
                "median_cpu_s": round(statistics.median(cpu for _, cpu in timed), 3),
                "target_s": target,
                "met": median < target,
                "heaviest_imports_ms": imports,
            }
            print(
                f"[cli] epistle {' '.join(args)}: median {median:.3f}s over {runs} runs "
                f"({min(samples):.3f}-{max(samples):.3f}), CPU {rows[name]['median_cpu_s']:.3f}s, "
                f"target < {target}s",
                flush=True,
            )
    return {
        "runs": runs,
        "python_floor_s": round(statistics.median(floor), 3),
        "rows": rows,
        "load_average_1m": [round(load_before, 1), round(os.getloadavg()[0], 1)],
        "met": all(row["met"] for row in rows.values()),
    }


def markdown(block: dict) -> list[str]:
    measured = f"Measured {block.get('when', '')}"
    if block.get("load_average_1m"):
        measured += f", 1-minute load average {block['load_average_1m'][0]} then {block['load_average_1m'][1]}"
    lines = [
        "## Command start-up",
        "",
        measured + ".",
        f"Wall seconds from spawning the command to its exit, medians of {block['runs']} warm starts "
        "(bytecode cached), and the median CPU seconds they used; an interpreter doing nothing takes "
        f"{block['python_floor_s']:.3f} s. Import time per package from one run under `python -X importtime` "
        "(its own time, summed).",
        "",
        "| command | median s | target | met | CPU s | runs | heaviest imports (ms) |",
        "|---|---:|---:|---|---:|---|---|",
    ]
    for row in block["rows"].values():
        if "error" in row:
            lines.append(f"| `{row['command']}` | - | < {row['target_s']} | NO | - | {row['error']} | |")
            continue
        runs = ", ".join(f"{s:.2f}" for s in row["runs_s"])
        imports = ", ".join(f"{name} {ms:g}" for name, ms in row["heaviest_imports_ms"].items())
        lines.append(
            f"| `{row['command']}` | {row['median_s']:.3f} | < {row['target_s']} "
            f"| {'yes' if row['met'] else 'NO'} | {row.get('median_cpu_s', '-')} | {runs} | {imports} |"
        )
    lines.append("")
    return lines
