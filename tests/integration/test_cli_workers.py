"""``epistle run --workers 2`` as a subprocess on the real broker, running the shop example
(tests/integration/workers_app.py records each handled order's messageId per worker process): both workers
get partitions and share a backlog, a SIGKILLed worker is restarted and nothing is lost, SIGTERM to the
supervisor stops every worker with exit 0 and the commits at the log end, --until-idle ends when every
worker drained its partitions, and a worker that keeps dying at start-up makes the supervisor give up with
that worker's error."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path

from tests.integration.test_cli_run import EPISTLE, ROOT, _ends, order, run_env
from toolkit.consumer.testing import committed, produce

APP = "tests.integration.workers_app:register"
PARTITIONS = 4


def free_port_pair() -> int:
    """A port P with P and P+1 free: worker i serves its metrics and probes on P+i."""
    while True:
        with socket.socket() as first, socket.socket() as second:
            first.bind(("127.0.0.1", 0))
            port = first.getsockname()[1]
            try:
                second.bind(("127.0.0.1", port + 1))
            except (OSError, OverflowError):
                continue
            return port


def orders(count: int) -> tuple[list[tuple[bytes, bytes]], set[str]]:
    """``count`` orders keyed over the partitions, and their messageIds."""
    records = [(str(i).encode(), order(2)) for i in range(count)]
    return records, {json.loads(value)["header"]["messageId"] for _, value in records}


class Supervised:
    """``epistle run --workers 2`` running; its stderr collected as it comes (the workers' lines are in it)."""

    def __init__(self, tmp_path: Path, bootstrap: str, topic: str, group: str, *args: str, **env: str) -> None:
        self.handled_dir = tmp_path / "handled"
        self.handled_dir.mkdir()
        self.metrics_port = free_port_pair()
        environment = run_env(bootstrap, topic, f"unused-{uuid.uuid4().hex[:6]}", **env)
        environment |= {"WORKERS_TEST_HANDLED_DIR": str(self.handled_dir), "EPISTLE_WORKER_STOP_GRACE_S": "60"}
        command = [*EPISTLE, "run", "--app", APP, "--group-id", group, "--topics", topic, "--workers", "2"]
        command += ["--metrics-port", str(self.metrics_port), *args]
        self.proc = subprocess.Popen(
            command, cwd=ROOT, env=environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        self._readers = [
            threading.Thread(target=lambda lines, stream: lines.extend(stream), args=pair, daemon=True)
            for pair in ((self.stdout, self.proc.stdout), (self.stderr, self.proc.stderr))
        ]
        for reader in self._readers:
            reader.start()

    def handled(self) -> dict[int, list[str]]:
        """pid -> the messageIds that worker process handled."""
        return {int(path.name): path.read_text().split() for path in self.handled_dir.iterdir()}

    def ready(self, index: int) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port + index}/readyz", timeout=2) as answer:
                return answer.status == 200
        except OSError:
            return False

    def wait(self, condition: Callable[[], bool], what: str, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            assert self.proc.poll() is None, f"the supervisor exited ({self.proc.returncode}) while waiting for {what}"
            assert time.monotonic() < deadline, f"timed out waiting for {what}:\n" + "".join(self.stderr[-40:])
            time.sleep(0.3)

    def stop(self) -> tuple[int, str, str]:
        self.proc.send_signal(signal.SIGTERM)
        return self.finish()

    def finish(self, timeout: float = 120) -> tuple[int, str, str]:
        """The exit code, stdout and stderr once the supervisor exited."""
        self.proc.wait(timeout)
        for reader in self._readers:
            reader.join(10)
        return self.proc.returncode, "".join(self.stdout), "".join(self.stderr)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def committed_total(bootstrap: str, group: str, topic: str) -> int:
    return sum(max(0, offset) for offset in committed(bootstrap, group, topic, PARTITIONS).values())


def test_two_workers_share_a_backlog_and_stop_on_sigterm(kafka_bootstrap, make_topic, group_id, tmp_path):
    topic = make_topic("orders", partitions=PARTITIONS)
    run = Supervised(tmp_path, kafka_bootstrap, topic, group_id, WORKERS_TEST_DELAY_S="0.01")
    try:
        # /readyz of each worker (port + i) answers 200 once it has partitions: both at once means both have some
        run.wait(lambda: run.ready(0) and run.ready(1), "both workers to have partitions")
        records, ids = orders(300)
        produce(kafka_bootstrap, topic, records)
        run.wait(lambda: ids <= {i for seen in run.handled().values() for i in seen}, "every order handled")
        run.wait(lambda: committed_total(kafka_bootstrap, group_id, topic) >= len(ids), "the commits")
        code, out, err = run.stop()
    finally:
        run.kill()
    assert code == 0, err
    handled = run.handled()
    assert len(handled) == 2 and all(handled.values()), {pid: len(seen) for pid, seen in handled.items()}
    assert "Traceback" not in err and "died" not in err
    assert err.count("stopped (exit code 0)") == 2
    assert committed(kafka_bootstrap, group_id, topic, PARTITIONS) == _ends(kafka_bootstrap, topic, PARTITIONS)
    processed = [int(line.split()[1]) for line in out.splitlines() if line.startswith(topic)]
    assert len(processed) == 2 and sum(processed) >= len(ids)  # each worker printed its own counters


def test_a_killed_worker_is_restarted_and_nothing_is_lost(kafka_bootstrap, make_topic, group_id, tmp_path):
    """Static membership (KAFKA_GROUP_INSTANCE_ID): worker i is <id>-i, so the restarted worker takes its
    predecessor's partitions back at once instead of waiting for the dead member's session to expire."""
    topic = make_topic("orders", partitions=PARTITIONS)
    run = Supervised(
        tmp_path,
        kafka_bootstrap,
        topic,
        group_id,
        WORKERS_TEST_DELAY_S="0.05",
        KAFKA_GROUP_INSTANCE_ID=f"{group_id}-static",
    )
    try:
        run.wait(lambda: run.ready(0) and run.ready(1), "both workers to have partitions")
        records, ids = orders(400)
        produce(kafka_bootstrap, topic, records)
        run.wait(lambda: len(run.handled()) == 2 and all(run.handled().values()), "both workers handling")
        victim = min(run.handled())
        os.kill(victim, signal.SIGKILL)
        run.wait(lambda: len(run.handled()) == 3, "the restarted worker to handle records")
        run.wait(lambda: ids <= {i for seen in run.handled().values() for i in seen}, "every order handled")
        run.wait(lambda: committed_total(kafka_bootstrap, group_id, topic) >= len(ids), "the commits")
        code, _, err = run.stop()
    finally:
        run.kill()
    assert code == 0, err
    assert f"(pid {victim}) died after" in err and "(killed by SIGKILL); restarting it in" in err, err
    assert err.count("stopped (exit code 0)") == 2 and "Traceback" not in err
    assert committed(kafka_bootstrap, group_id, topic, PARTITIONS) == _ends(kafka_bootstrap, topic, PARTITIONS)


def test_until_idle_ends_once_every_worker_drained(kafka_bootstrap, make_topic, group_id, tmp_path):
    topic = make_topic("orders", partitions=PARTITIONS)
    records, ids = orders(200)
    produce(kafka_bootstrap, topic, records)
    run = Supervised(tmp_path, kafka_bootstrap, topic, group_id, "--until-idle")
    try:
        code, _, err = run.finish(timeout=180)
    finally:
        run.kill()
    assert code == 0, err
    assert err.count("finished (exit code 0); not restarted") == 2 and "every worker finished" in err
    assert ids <= {i for seen in run.handled().values() for i in seen}
    assert committed(kafka_bootstrap, group_id, topic, PARTITIONS) == _ends(kafka_bootstrap, topic, PARTITIONS)


def test_a_worker_dying_at_start_up_makes_the_supervisor_give_up(make_topic, group_id, tmp_path):
    """No broker answers (port 9): each worker fails its start-up check after 0.5 s; after 5 deaths in a row
    the supervisor stops the other worker and exits 1 with the worker's own error."""
    started = time.monotonic()
    proc = subprocess.run(
        [*EPISTLE, "run", "--app", APP, "--group-id", group_id, "--topics", "orders", "--workers", "2"],
        cwd=ROOT,
        env=run_env("127.0.0.1:9", "orders", "shipments", KAFKA_STARTUP_TIMEOUT_S="0.5")
        | {"WORKERS_TEST_HANDLED_DIR": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 1, proc.stderr
    last = proc.stderr.strip().splitlines()
    assert "Traceback" not in proc.stderr
    message = "\n".join(last[-8:])
    assert "died 5 times in a row" in message and "(last: exit code 1)" in message
    assert "error: no Kafka broker answered at 127.0.0.1:9" in message and "KAFKA_BOOTSTRAP_SERVERS" in message
    print(f"\ngave up after {time.monotonic() - started:.1f}s")
