"""End to end, as a new user: `epistle new`, then the generated project's own Makefile in a fresh venv.

SLOW (about a minute; most of it `make setup`: a new .venv and the toolkit installed from this checkout,
with pip's cache warm). One test on purpose: the steps depend on each other. Its `make test` runs the
generated integration test against the real broker (the ``kafka_bootstrap`` fixture) on topics unique to
this run; `make run` must start, consume and stop cleanly on SIGTERM.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from toolkit.scaffold import Answers, create_project

pytestmark = pytest.mark.timeout(900)


def _env(bootstrap: str) -> dict[str, str]:
    # The generated service reads only its own settings: our registry URL, test knobs and venv stay out.
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("KAFKA_", "SCHEMA_REGISTRY_", "EPISTLE_", "PYTEST_"))
        and k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME", "MAKEFLAGS", "MFLAGS", "MAKELEVEL")
    }
    env["KAFKA_BOOTSTRAP_SERVERS"] = bootstrap
    return env


def _make(project: Path, env: dict[str, str], *targets: str, timeout: float = 600) -> tuple[str, float]:
    started = time.monotonic()
    proc = subprocess.run(
        ["make", *targets, f"PYTHON={sys.executable}"],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    elapsed = time.monotonic() - started
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"make {' '.join(targets)} failed (exit {proc.returncode}):\n{output}"
    print(f"make {' '.join(targets)}: {elapsed:.1f}s")
    return output, elapsed


@pytest.fixture
def run_id(admin) -> Iterator[str]:
    """Names this run's topics; deletes them (and dead-letter topics) afterwards."""
    run_id = uuid.uuid4().hex[:8]
    yield run_id
    doomed = [t for t in admin.list_topics(timeout=10).topics if t.startswith(f"scaffold-{run_id}-")]
    for future in admin.delete_topics(doomed).values() if doomed else ():
        try:
            future.result(timeout=30)
        except Exception:  # best effort: the names are unique anyway
            pass


def test_generated_service_installs_checks_tests_and_runs(tmp_path: Path, kafka_bootstrap: str, run_id: str) -> None:
    topics = f"scaffold-{run_id}-orders,scaffold-{run_id}-payments.v1"
    started = time.monotonic()
    project = create_project(
        Answers(project_name="it-service", package_name="it_service", topics=topics, group_id=f"scaffold-{run_id}"),
        tmp_path,
    )
    print(f"epistle new: {time.monotonic() - started:.1f}s")
    env = _env(kafka_bootstrap)

    _make(project, env, "setup")
    assert (project / ".venv/bin/epistle").is_file()
    assert (project / ".env").is_file()

    _make(project, env, "codegen")
    output, _ = _make(project, env, "check")
    assert "OK" in output or "up to date" in output

    output, _ = _make(project, env, "test")
    assert "5 passed" in output, output  # 2 unit tests per handler, and the integration test

    _make(project, env, "setup")  # idempotent: nothing to do the second time
    _run_until_consuming_then_sigterm(project, env, run_id)


def _run_until_consuming_then_sigterm(project: Path, env: dict[str, str], run_id: str) -> None:
    proc = subprocess.Popen(
        [str(project / ".venv/bin/python"), "-m", "it_service"],
        cwd=project,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        lines: list[str] = []
        assert proc.stdout is not None
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if "consuming" in line and f"scaffold-{run_id}" in line:
                break
        assert any("consuming" in line for line in lines), "".join(lines)
        proc.send_signal(signal.SIGTERM)
        rest, _ = proc.communicate(timeout=60)
        assert proc.returncode == 0, "".join(lines) + rest
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
