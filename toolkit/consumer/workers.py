"""Worker processes: ``epistle run --workers N`` runs N consumers of one group, each in a process of its own.

A Python consumer keeps about one core busy; Kafka's consumer group is what spreads partitions over
processes. The :class:`Supervisor` starts each worker as a fresh interpreter (``subprocess``: exec, never a
fork of a process that may already hold librdkafka's threads), and:

- restarts a worker that dies (a non-zero exit or a signal), after a backoff that grows while it keeps dying
  within ``startup_window_s`` of its start (:func:`toolkit.backoff.exponential_delay`);
- gives up when one worker died ``give_up_after`` times in a row that early: it stops the others and raises
  :class:`WorkerCrashLoop` with the exit status and the worker's last stderr lines;
- leaves a worker that exits 0 alone (it was done: ``--until-idle`` drained its partitions, or it was told
  to stop), and returns 0 once every worker is done;
- on SIGTERM/SIGINT (or :meth:`Supervisor.request_stop`) sends SIGTERM to every worker (each stops
  fetching, finishes what is in flight, commits and exits 0), kills one that is still running after
  ``stop_grace_s`` and reports it; returns 0 when every worker stopped cleanly, else 1.

Each worker's stderr is passed through line by line (its last lines are kept for the give-up message);
its stdout is the supervisor's. The contract for operators is in docs/operations.md.
"""

from __future__ import annotations

import collections
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import IO, TYPE_CHECKING

from toolkit.backoff import exponential_delay
from toolkit.errors import ConfigError, ConsumerStopped

if TYPE_CHECKING:
    from toolkit.settings import Settings

log = logging.getLogger("toolkit.workers")

TAIL_LINES = 20  # stderr lines kept per worker for the give-up message
# How a worker told to stop may end cleanly: 0, or before its consumer took over SIGTERM/SIGINT (nothing was
# consumed yet): killed by the SIGTERM itself, or 130 (`epistle run` interrupted by a Ctrl-C to the group).
_STOPPED = (0, -signal.SIGTERM, 130)


class WorkerCrashLoop(ConsumerStopped):
    """A worker kept dying at start-up; the supervisor stopped the others and gave up.

    ``worker`` is its index, ``deaths`` how many times in a row it died early, ``status`` how it last
    ended (e.g. "exit code 1", "killed by SIGKILL") and ``last_lines`` its last stderr lines."""

    def __init__(self, message: str, *, worker: int, deaths: int, status: str, last_lines: Sequence[str]) -> None:
        super().__init__(message)
        self.worker = worker
        self.deaths = deaths
        self.status = status
        self.last_lines = list(last_lines)


@dataclass(frozen=True)
class Death:
    """One worker process that ended without being asked to: who, how, after how long, and what followed."""

    worker: int
    pid: int
    returncode: int
    lived_s: float
    early_in_a_row: int  # deaths within the start-up window in a row, this one included (0: it ran longer)
    restart_in_s: float | None  # None: not restarted (the supervisor gave up)


# argv and environment of worker ``index`` (0-based)
WorkerCommand = Callable[[int], tuple[Sequence[str], Mapping[str, str] | None]]


@dataclass
class _Worker:
    index: int
    process: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    early_deaths: int = 0
    restart_at: float | None = None
    done: bool = False
    tail: collections.deque[str] = field(default_factory=lambda: collections.deque(maxlen=TAIL_LINES))
    relay: threading.Thread | None = None


def describe_status(returncode: int) -> str:
    """``exit code 3`` or ``killed by SIGKILL`` (Popen's negative return codes are signals)."""
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exit code {returncode}"


class Supervisor:
    """Runs ``count`` worker processes made by ``command`` until they are done, stopped, or keep dying.

    Args:
        count: worker processes (>= 1).
        command: ``index -> (argv, env)`` for worker ``index``; env None inherits the supervisor's.
        stop_grace_s: how long a worker may take to exit after SIGTERM before it is killed.
        give_up_after: early deaths in a row of one worker after which the supervisor gives up.
        startup_window_s: a worker that dies within this many seconds of its start died "at start-up".
        backoff_initial_s, backoff_max_s: the restart delay after the first early death, and its cap.
        stderr: where the workers' stderr lines go (the supervisor's stderr by default).
    """

    def __init__(
        self,
        count: int,
        command: WorkerCommand,
        *,
        stop_grace_s: float = 45.0,
        give_up_after: int = 5,
        startup_window_s: float = 60.0,
        backoff_initial_s: float = 0.5,
        backoff_max_s: float = 30.0,
        poll_interval_s: float = 0.1,
        stderr: IO[str] | None = None,
    ) -> None:
        if count < 1:
            raise ValueError(f"count must be >= 1, got {count}")
        self.command = command
        self.stop_grace_s = stop_grace_s
        self.give_up_after = give_up_after
        self.startup_window_s = startup_window_s
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s
        self.poll_interval_s = poll_interval_s
        self._stderr = stderr
        self._write_lock = threading.Lock()
        self._workers = [_Worker(index) for index in range(count)]
        self._stop_requested = False  # a plain flag: set from signal handlers, where locks could deadlock
        self.deaths: list[Death] = []
        self.killed: list[int] = []  # workers killed after the grace period at stop

    # -- control ---------------------------------------------------------------------------------------------
    def request_stop(self) -> None:
        """Stop every worker gracefully; :meth:`run` returns once they exited. Safe from signal handlers."""
        self._stop_requested = True

    @property
    def pids(self) -> list[int | None]:
        """The current process id of each worker (None while it waits to be restarted or is done)."""
        return [w.process.pid if w.process is not None else None for w in self._workers]

    def run(self, *, handle_signals: bool = False) -> int:
        """Start the workers and supervise them; 0 when every worker finished or stopped cleanly, 1 when one
        had to be killed or failed while stopping.

        Raises:
            WorkerCrashLoop: a worker died ``give_up_after`` times in a row within ``startup_window_s`` of
                its start (the other workers were stopped first).
        """
        with self._signals(handle_signals):
            try:
                for worker in self._workers:
                    self._start(worker)
                while not self._stop_requested:
                    now = time.monotonic()
                    for worker in self._workers:
                        if worker.process is not None and worker.process.poll() is not None:
                            self._ended(worker, now)
                        if worker.restart_at is not None and now >= worker.restart_at and not self._stop_requested:
                            self._start(worker)
                    if all(worker.done for worker in self._workers):
                        log.info("every worker finished")
                        return 0
                    time.sleep(self.poll_interval_s)
            except BaseException:  # giving up (or anything unforeseen): no worker is left running
                self._stop_all()
                raise
            return self._stop_all()

    # -- one worker ------------------------------------------------------------------------------------------
    def _start(self, worker: _Worker) -> None:
        argv, env = self.command(worker.index)
        worker.restart_at = None
        worker.tail.clear()
        worker.process = subprocess.Popen(list(argv), env=env, stderr=subprocess.PIPE)
        worker.started_at = time.monotonic()
        worker.relay = threading.Thread(
            target=self._relay, args=(worker.process.stderr, worker.tail), name=f"worker-{worker.index}-stderr"
        )
        worker.relay.daemon = True
        worker.relay.start()
        log.info("worker %d started (pid %d)", worker.index, worker.process.pid)

    def _relay(self, stream: IO[bytes], tail: collections.deque[str]) -> None:
        """Pass a worker's stderr through line by line, keeping its last lines."""
        for raw in iter(stream.readline, b""):
            line = raw.decode("utf-8", errors="replace")
            tail.append(line.rstrip("\n"))
            with self._write_lock:
                out = self._stderr or sys.stderr
                out.write(line if line.endswith("\n") else line + "\n")
                out.flush()
        stream.close()

    def _finish(self, worker: _Worker) -> int:
        """The ended worker's return code, once its stderr is read to the end."""
        assert worker.process is not None
        code = worker.process.wait()
        if worker.relay is not None:
            worker.relay.join(timeout=5)
        worker.process = None
        return code

    def _ended(self, worker: _Worker, now: float) -> None:
        pid = worker.process.pid if worker.process is not None else -1
        code = self._finish(worker)
        lived = now - worker.started_at
        if code == 0:
            worker.done = True
            log.info("worker %d (pid %d) finished (exit code 0); not restarted", worker.index, pid)
            return
        worker.early_deaths = worker.early_deaths + 1 if lived < self.startup_window_s else 0
        status = describe_status(code)
        if worker.early_deaths >= self.give_up_after:
            self.deaths.append(Death(worker.index, pid, code, lived, worker.early_deaths, None))
            raise self._crash_loop(worker, status)
        delay = exponential_delay(max(1, worker.early_deaths), self.backoff_initial_s, self.backoff_max_s)
        self.deaths.append(Death(worker.index, pid, code, lived, worker.early_deaths, delay))
        worker.restart_at = now + delay
        log.warning(
            "worker %d (pid %d) died after %.1f s (%s); restarting it in %.1f s (deaths in a row within %g s "
            "of starting: %d; the supervisor gives up at %d)",
            worker.index,
            pid,
            lived,
            status,
            delay,
            self.startup_window_s,
            worker.early_deaths,
            self.give_up_after,
        )

    def _crash_loop(self, worker: _Worker, status: str) -> WorkerCrashLoop:
        lines = list(worker.tail)
        errors = [line for line in lines if line.startswith("error:")]
        last = (errors or lines)[-5:]
        shown = "\n    ".join(last) if last else "(it wrote nothing to stderr)"
        return WorkerCrashLoop(
            f"worker {worker.index} died {worker.early_deaths} times in a row within "
            f"{self.startup_window_s:g} s of starting (last: {status}); giving up and stopping the other "
            f"workers. Its last lines:\n    {shown}\nFix that cause (run with --workers 1 to see it alone) "
            "and start again",
            worker=worker.index,
            deaths=worker.early_deaths,
            status=status,
            last_lines=last,
        )

    # -- stopping --------------------------------------------------------------------------------------------
    def _stop_all(self) -> int:
        """SIGTERM to every running worker, a kill for any still running after the grace; the exit code."""
        running = [w for w in self._workers if w.process is not None]
        for worker in self._workers:
            worker.restart_at = None
        if running:
            log.info(
                "stopping %d worker(s): SIGTERM, up to %g s each to finish and commit", len(running), self.stop_grace_s
            )
        for worker in running:
            assert worker.process is not None
            if worker.process.poll() is None:
                worker.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.stop_grace_s
        clean = True
        for worker in running:
            assert worker.process is not None
            pid = worker.process.pid
            try:
                worker.process.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                worker.process.kill()
                self.killed.append(worker.index)
                log.error(
                    "worker %d (pid %d) did not stop within %g s: killed (SIGKILL); what it had not committed "
                    "will be delivered again",
                    worker.index,
                    pid,
                    self.stop_grace_s,
                )
            code = self._finish(worker)
            if code not in _STOPPED:
                clean = False
                if worker.index not in self.killed:
                    log.error("worker %d (pid %d) stopped with %s", worker.index, pid, describe_status(code))
            elif code == 0:
                log.info("worker %d (pid %d) stopped (exit code 0)", worker.index, pid)
            else:
                log.info(
                    "worker %d (pid %d) stopped before it was consuming (%s)", worker.index, pid, describe_status(code)
                )
        return 0 if clean else 1

    @contextmanager
    def _signals(self, install: bool) -> Iterator[None]:
        """SIGTERM and SIGINT request a graceful stop while the block runs (the previous handlers after)."""
        if not install:
            yield
            return

        def on_signal(signum: int, _frame: object) -> None:
            self.request_stop()  # no logging here: the main thread may be inside a logging call

        previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def run_workers(arguments: Sequence[str], settings: Settings, *, count: int, metrics_port: int | None) -> int:
    """``epistle run --workers N``: ``count`` processes of ``epistle run <arguments>`` under a supervisor
    handling SIGTERM/SIGINT; the exit code (see :meth:`Supervisor.run`).

    Each worker gets ``EPISTLE_WORKER_PROCESSES=1`` (it runs the consumer itself) and
    ``EPISTLE_WORKER_INDEX``; with a metrics port P worker i serves on P+i; with static membership
    (``KAFKA_GROUP_INSTANCE_ID=id``) worker i is ``id-i``, so a restarted worker takes its own partitions back.

    Raises:
        ConfigError: the metrics ports would go past 65535.
        WorkerCrashLoop: a worker kept dying at start-up.
    """
    if metrics_port is not None and metrics_port + count - 1 > 65535:
        raise ConfigError(
            f"--metrics-port {metrics_port} with --workers {count}: worker i serves on port {metrics_port}+i, "
            f"past 65535; use a port up to {65536 - count}",
            setting="--metrics-port",
        )
    instance_id = settings.kafka.group_instance_id

    def command(index: int) -> tuple[list[str], dict[str, str]]:
        argv = [sys.executable, "-m", "toolkit.cli", *arguments]
        if metrics_port is not None:
            argv += ["--metrics-port", str(metrics_port + index)]
        env = {**os.environ, "EPISTLE_WORKER_PROCESSES": "1", "EPISTLE_WORKER_INDEX": str(index)}
        if instance_id:
            env["KAFKA_GROUP_INSTANCE_ID"] = f"{instance_id}-{index}"
        return argv, env

    supervisor = Supervisor(
        count,
        command,
        stop_grace_s=settings.consumer.worker_stop_grace_s,
        # a worker that gave up on an unreachable broker (KAFKA_STARTUP_TIMEOUT_S) died at start-up too
        startup_window_s=max(60.0, settings.kafka.startup_timeout_s + 30.0),
    )
    log.info("supervising %d worker processes of group %s", count, settings.kafka.group_id)
    return supervisor.run(handle_signals=True)


__all__ = ["Death", "Supervisor", "WorkerCrashLoop", "describe_status", "run_workers"]
