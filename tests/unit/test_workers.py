"""The worker-process supervisor (``epistle run --workers``) with fake workers: small Python processes that
exit, crash, ignore SIGTERM or wait for it, as a consumer would. No broker. No wall time is asserted; the
backoff is checked through the delays the supervisor chose."""

from __future__ import annotations

import io
import os
import signal
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from toolkit.backoff import exponential_delay
from toolkit.cli import app
from toolkit.consumer.workers import Supervisor, WorkerCrashLoop, describe_status
from toolkit.errors import ConfigError, ConsumerStopped
from toolkit.settings import load_settings

# A worker that writes "<index>" to ready/<index>.<pid> and then waits for SIGTERM (exit 0) like a consumer.
CONSUMER = """
import os, signal, sys, time
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
open(os.path.join(sys.argv[1], f"{sys.argv[2]}.{os.getpid()}"), "w").close()
while True:
    time.sleep(0.05)
"""


def python(code: str, *args: object) -> list[str]:
    return [sys.executable, "-c", textwrap.dedent(code), *map(str, args)]


def supervisor(count: int, make, **options) -> Supervisor:
    defaults = {"backoff_initial_s": 0.01, "backoff_max_s": 0.05, "poll_interval_s": 0.02, "stderr": io.StringIO()}
    return Supervisor(count, lambda index: (make(index), None), **(defaults | options))


def run_in_thread(sup: Supervisor) -> tuple[threading.Thread, dict]:
    outcome: dict = {}

    def target() -> None:
        try:
            outcome["code"] = sup.run()
        except Exception as exc:  # noqa: BLE001 - handed to the test
            outcome["error"] = exc

    thread = threading.Thread(target=target)
    thread.start()
    return thread, outcome


def wait_for(condition, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def ready(folder: Path) -> dict[int, set[int]]:
    """worker index -> the pids that reported ready."""
    found: dict[int, set[int]] = {}
    for path in folder.iterdir():
        index, pid = path.name.split(".")
        found.setdefault(int(index), set()).add(int(pid))
    return found


def test_workers_that_finish_with_exit_0_are_not_restarted():
    sup = supervisor(3, lambda index: python("import sys; sys.exit(0)"))
    assert sup.run() == 0
    assert sup.deaths == [] and sup.killed == []


def test_a_worker_that_keeps_dying_at_start_up_makes_it_give_up_with_its_last_error():
    crash = python(
        "import sys; print('starting', file=sys.stderr); print('error: boom: fix X', file=sys.stderr); sys.exit(3)"
    )
    stderr = io.StringIO()
    sup = supervisor(1, lambda index: crash, give_up_after=4, stderr=stderr)
    with pytest.raises(WorkerCrashLoop) as caught:
        sup.run()
    error = caught.value
    assert isinstance(error, ConsumerStopped)  # an EpistleError: one message, no traceback, exit 1
    assert (error.worker, error.deaths, error.status) == (0, 4, "exit code 3")
    assert error.last_lines == ["error: boom: fix X"]  # the error lines, when the worker wrote some
    assert "died 4 times in a row" in str(error) and "error: boom: fix X" in str(error)
    # restarted with a growing delay after each early death, not after the last
    assert [d.restart_in_s for d in sup.deaths] == [0.01, 0.02, 0.04, None]
    assert [d.early_in_a_row for d in sup.deaths] == [1, 2, 3, 4]
    assert all(d.returncode == 3 for d in sup.deaths)
    assert stderr.getvalue().count("error: boom: fix X") == 4  # the workers' stderr was passed through


def test_the_delays_follow_the_toolkits_backoff_curve():
    sup = supervisor(1, lambda index: python("raise SystemExit(1)"), give_up_after=6, backoff_max_s=0.08)
    with pytest.raises(WorkerCrashLoop):
        sup.run()
    expected = [exponential_delay(n, 0.01, 0.08) for n in range(1, 6)]
    assert [d.restart_in_s for d in sup.deaths[:-1]] == expected
    assert expected[-2:] == [0.08, 0.08]  # capped


def test_giving_up_stops_the_other_workers_gracefully(tmp_path):
    def make(index: int) -> list[str]:
        return python(CONSUMER, tmp_path, index) if index == 0 else python("raise SystemExit(2)")

    sup = supervisor(2, make, give_up_after=3, backoff_initial_s=0.2)
    with pytest.raises(WorkerCrashLoop) as caught:
        sup.run()
    assert caught.value.worker == 1 and caught.value.status == "exit code 2"
    assert "(it wrote nothing to stderr)" in str(caught.value)
    assert 0 in ready(tmp_path)  # worker 0 was running, and was stopped by SIGTERM (its exit 0)
    assert sup.pids == [None, None] and sup.killed == []


def test_a_worker_that_cannot_be_started_leaves_no_other_worker_running(tmp_path):
    def make(index: int) -> list[str]:
        if index == 1:
            raise OSError("no such interpreter")
        return python(CONSUMER, tmp_path, index)

    sup = supervisor(2, make)
    with pytest.raises(OSError, match="no such interpreter"):
        sup.run()
    assert sup.pids == [None, None]  # worker 0 had started: it was stopped, not left running


def test_a_worker_that_dies_later_is_restarted_and_its_count_starts_again(tmp_path):
    """A death after the start-up window is not "at start-up": the worker is restarted after the first
    delay every time and the supervisor never gives up."""
    dies = python(
        """
        import os, sys, time
        time.sleep(0.05)
        sys.exit(1)
        """
    )
    sup = supervisor(1, lambda index: dies, give_up_after=2, startup_window_s=0.01)
    thread, outcome = run_in_thread(sup)
    wait_for(lambda: len(sup.deaths) >= 4, "four deaths")
    sup.request_stop()
    thread.join(30)
    assert outcome.get("code") in (0, 1) and "error" not in outcome
    assert all(d.early_in_a_row == 0 and d.restart_in_s == 0.01 for d in sup.deaths)


def test_a_killed_worker_is_restarted_and_stop_reaches_every_worker(tmp_path):
    sup = supervisor(2, lambda index: python(CONSUMER, tmp_path, index))
    thread, outcome = run_in_thread(sup)
    wait_for(lambda: set(ready(tmp_path)) == {0, 1}, "both workers ready")
    victim = sup.pids[1]
    assert victim is not None
    os.kill(victim, signal.SIGKILL)
    wait_for(lambda: len(ready(tmp_path).get(1, ())) == 2, "worker 1 restarted")
    (death,) = sup.deaths
    assert (death.worker, death.pid, describe_status(death.returncode)) == (1, victim, "killed by SIGKILL")
    assert death.restart_in_s == 0.01
    sup.request_stop()
    thread.join(30)
    assert outcome == {"code": 0}  # every worker stopped on SIGTERM with exit 0
    assert sup.pids == [None, None] and sup.killed == []


def test_a_worker_that_ignores_sigterm_is_killed_after_the_grace_and_reported(tmp_path, caplog):
    stubborn = """
    import os, signal, sys, time
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    open(os.path.join(sys.argv[1], f"{sys.argv[2]}.{os.getpid()}"), "w").close()
    time.sleep(120)
    """

    def make(index: int) -> list[str]:
        return python(stubborn if index == 1 else CONSUMER, tmp_path, index)

    sup = supervisor(2, make, stop_grace_s=0.5)
    thread, outcome = run_in_thread(sup)
    wait_for(lambda: set(ready(tmp_path)) == {0, 1}, "both workers ready")
    with caplog.at_level("INFO", logger="toolkit.workers"):
        sup.request_stop()
        thread.join(30)
    assert outcome == {"code": 1}
    assert sup.killed == [1]
    assert "worker 1" in caplog.text and "did not stop within 0.5 s: killed (SIGKILL)" in caplog.text
    assert "worker 0" in caplog.text and "stopped (exit code 0)" in caplog.text


def test_a_worker_stopped_before_its_consumer_took_over_sigterm_stopped_cleanly(tmp_path, caplog):
    """SIGTERM's default action ends a worker still starting (no handler yet): nothing was consumed."""
    starting = """
    import os, sys, time
    open(os.path.join(sys.argv[1], f"{sys.argv[2]}.{os.getpid()}"), "w").close()
    time.sleep(120)
    """
    sup = supervisor(1, lambda index: python(starting, tmp_path, index))
    thread, outcome = run_in_thread(sup)
    wait_for(lambda: 0 in ready(tmp_path), "the worker started")
    with caplog.at_level("INFO", logger="toolkit.workers"):
        sup.request_stop()
        thread.join(30)
    assert outcome == {"code": 0}
    assert "stopped before it was consuming (killed by SIGTERM)" in caplog.text


def test_sigterm_to_the_supervisor_stops_the_workers_and_returns_0(tmp_path):
    sup = supervisor(2, lambda index: python(CONSUMER, tmp_path, index))
    timer = threading.Thread(
        target=lambda: (
            wait_for(lambda: set(ready(tmp_path)) == {0, 1}, "both workers ready"),
            os.kill(os.getpid(), signal.SIGTERM),
        )
    )
    previous = signal.getsignal(signal.SIGTERM)
    timer.start()
    try:
        code = sup.run(handle_signals=True)
    finally:
        timer.join()
    assert code == 0 and sup.deaths == []
    assert signal.getsignal(signal.SIGTERM) is previous  # the handler is put back


def test_describe_status():
    assert describe_status(0) == "exit code 0"
    assert describe_status(1) == "exit code 1"
    assert describe_status(-9) == "killed by SIGKILL"


# -- settings and the command line -----------------------------------------------------------------------


@pytest.mark.parametrize("value", ["0", "-2", "two", "1.5", "65"])
def test_bad_worker_process_counts_name_the_setting_and_the_fix(monkeypatch, value):
    monkeypatch.setenv("EPISTLE_WORKER_PROCESSES", value)
    with pytest.raises(ConfigError) as caught:
        load_settings(env_file=None)
    assert caught.value.setting == "EPISTLE_WORKER_PROCESSES"
    assert "EPISTLE_WORKER_PROCESSES" in str(caught.value)
    assert "fix" in str(caught.value) or "use a whole number" in str(caught.value)


def test_worker_processes_default_to_one(monkeypatch):
    monkeypatch.delenv("EPISTLE_WORKER_PROCESSES", raising=False)
    settings = load_settings(env_file=None)
    assert settings.consumer.worker_processes == 1 and settings.consumer.worker_stop_grace_s == 45.0


@pytest.mark.parametrize(("value", "code"), [("0", 2), ("-1", 2), ("65", 2), ("two", 2)])
def test_bad_workers_option_is_one_message(monkeypatch, tmp_path, value, code):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["run", "--app", "json:dumps", "--workers", value])
    assert result.exit_code == code
    assert "--workers" in result.output and "Traceback" not in result.output


def test_metrics_ports_past_65535_are_refused_before_any_worker_starts(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["run", "--app", "json:dumps", "--workers", "3", "--metrics-port", "65534"])
    assert result.exit_code == 1
    assert "--metrics-port 65534 with --workers 3" in result.output and "up to 65533" in result.output


def test_the_worker_command_repeats_the_options_and_sets_each_workers_own(monkeypatch, tmp_path):
    """What `epistle run --workers 2 ...` starts: the same command without --workers, EPISTLE_WORKER_PROCESSES=1,
    its own metrics port and its own static-membership id."""
    import toolkit.consumer.workers as workers

    started: list[tuple[list[str], dict[str, str]]] = []

    class Recorder:
        def __init__(self, count, command, **options):
            started.extend(command(index) for index in range(count))
            self.options = options

        def run(self, *, handle_signals: bool) -> int:
            assert handle_signals
            return 0

    monkeypatch.setattr(workers, "Supervisor", Recorder)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("KAFKA_GROUP_INSTANCE_ID", "orders-a")
    args = ["run", "--app", "json:dumps", "--workers", "2", "--group-id", "g", "--until-idle"]
    args += ["-X", "session.timeout.ms=6000", "--metrics-port", "9400", "--no-tracing", "--mode", "share"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    (argv0, env0), (argv1, env1) = started
    assert argv0[:3] == [sys.executable, "-m", "toolkit.cli"]
    assert argv0[3:] == [
        "run", "--app", "json:dumps", "--log-level", "INFO", "--until-idle", "--group-id", "g", "--mode", "share",
        "-X", "session.timeout.ms=6000", "--no-tracing", "--metrics-port", "9400",
    ]  # fmt: skip
    assert argv1[-2:] == ["--metrics-port", "9401"] and "--workers" not in argv1
    assert env0["EPISTLE_WORKER_PROCESSES"] == env1["EPISTLE_WORKER_PROCESSES"] == "1"
    assert (env0["EPISTLE_WORKER_INDEX"], env1["EPISTLE_WORKER_INDEX"]) == ("0", "1")
    assert (env0["KAFKA_GROUP_INSTANCE_ID"], env1["KAFKA_GROUP_INSTANCE_ID"]) == ("orders-a-0", "orders-a-1")
