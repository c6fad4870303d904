"""scripts/services.py: idempotent start, stale pid files, ports in use, and a stop that leaves nothing."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _services(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "services.py"), *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=300,
    )


def test_starting_a_running_service_is_a_no_op(kafka_bootstrap: str) -> None:
    if os.environ.get("KAFKA_BOOTSTRAP_SERVERS"):
        import pytest

        pytest.skip("an external cluster is configured; our scripts manage nothing")
    result = _services("up", "kafka")
    assert result.returncode == 0, result.stderr
    assert "already running" in result.stdout


def test_stale_pid_file_is_detected_and_removed(tmp_path: Path) -> None:
    state = tmp_path / "state"
    (state / "registry").mkdir(parents=True)
    dead = subprocess.Popen(["true"])
    dead.wait()
    (state / "registry" / "pid").write_text(str(dead.pid))
    env = {"EPISTLE_SERVICES_DIR": str(state), "EPISTLE_REGISTRY_PORT": str(_free_port())}
    result = _services("status", "registry", env=env)
    assert "stale pid file" in result.stdout
    assert "registry: stopped" in result.stdout
    assert not (state / "registry" / "pid").exists()


def test_port_in_use_by_something_else_is_a_clear_error(tmp_path: Path) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        env = {"EPISTLE_SERVICES_DIR": str(tmp_path), "EPISTLE_REGISTRY_PORT": str(port)}
        result = _services("up", "registry", env=env)
    assert result.returncode == 1
    assert f"port {port} on 127.0.0.1 is in use by another process" in result.stderr
    assert "EPISTLE_REGISTRY_PORT" in result.stderr


def test_private_broker_starts_answers_and_stops_without_leftovers(tmp_path: Path) -> None:
    port, controller = _free_port(), _free_port()
    env = {
        "EPISTLE_SERVICES_DIR": str(tmp_path),
        "EPISTLE_KAFKA_PORT": str(port),
        "EPISTLE_KAFKA_CONTROLLER_PORT": str(controller),
    }
    started = _services("up", "kafka", env=env)
    try:
        assert started.returncode == 0, started.stderr + started.stdout
        pid = int((tmp_path / "kafka" / "pid").read_text())
        assert _services("status", "kafka", env=env).returncode == 0
        from confluent_kafka.admin import AdminClient

        metadata = AdminClient({"bootstrap.servers": f"127.0.0.1:{port}"}).list_topics(timeout=20)
        assert len(metadata.brokers) == 1
        assert (tmp_path / "kafka" / "kafka.log").stat().st_size > 0
    finally:
        stopped = _services("down", "kafka", env=env)
    assert stopped.returncode == 0, stopped.stderr
    assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2]
    assert not (tmp_path / "kafka" / "pid").exists()
    assert _services("status", "kafka", env=env).returncode == 3


def test_a_broker_count_other_than_1_or_3_is_a_clear_error(tmp_path: Path) -> None:
    result = _services("status", "kafka", env={"EPISTLE_SERVICES_DIR": str(tmp_path), "EPISTLE_KAFKA_BROKERS": "2"})
    assert result.returncode == 1
    assert "EPISTLE_KAFKA_BROKERS" in result.stderr and "use 1" in result.stderr


def _rabbitmq_env(state: Path) -> dict[str, str]:
    return {
        "EPISTLE_SERVICES_DIR": str(state),
        "EPISTLE_RABBITMQ_PORT": str(_free_port()),
        "EPISTLE_RABBITMQ_DIST_PORT": str(_free_port()),
        "EPISTLE_RABBITMQ_EPMD_PORT": str(_free_port()),
    }


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def test_private_rabbitmq_starts_answers_amqp_and_stops_without_leftovers(tmp_path: Path) -> None:
    env = _rabbitmq_env(tmp_path)
    port, epmd = int(env["EPISTLE_RABBITMQ_PORT"]), int(env["EPISTLE_RABBITMQ_EPMD_PORT"])
    started = _services("up", "rabbitmq", env=env)
    try:
        assert started.returncode == 0, started.stderr + started.stdout
        pid = int((tmp_path / "rabbitmq" / "pid").read_text())
        assert _services("status", "rabbitmq", env=env).returncode == 0
        assert _services("up", "rabbitmq", env=env).stdout.startswith("rabbitmq: already running")
        import asyncio

        import aio_pika

        async def declare() -> int:
            connection = await aio_pika.connect(f"amqp://guest:guest@127.0.0.1:{port}/")
            async with connection:
                channel = await connection.channel()
                return (await channel.declare_queue("probe", durable=True)).declaration_result.message_count

        assert asyncio.run(declare()) == 0
        assert (tmp_path / "rabbitmq" / "mnesia").is_dir()  # its data under the services folder
        assert _listening(epmd)  # its own port mapper
    finally:
        stopped = _services("down", "rabbitmq", env=env)
    assert stopped.returncode == 0, stopped.stderr
    assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2]
    assert not _listening(port) and not _listening(epmd)  # the node and its port mapper are gone
    assert _services("status", "rabbitmq", env=env).returncode == 3


def test_rabbitmq_that_cannot_start_says_why(tmp_path: Path) -> None:
    env = _rabbitmq_env(tmp_path)
    with socket.socket() as squatter:  # its Erlang distribution port is taken: the node cannot boot
        squatter.bind(("127.0.0.1", int(env["EPISTLE_RABBITMQ_DIST_PORT"])))
        squatter.listen()
        try:
            result = _services("up", "rabbitmq", env={**env, "EPISTLE_START_TIMEOUT": "60"})
        finally:
            _services("down", "rabbitmq", env=env)
    assert result.returncode == 1
    assert "rabbitmq" in result.stderr and "rabbitmq.log" in result.stderr  # what failed and where to look
    assert "EPISTLE_RABBITMQ_DIST_PORT" in result.stderr  # and what to change
