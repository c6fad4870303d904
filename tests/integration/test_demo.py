"""``make demo`` end to end: ``python -m examples.demo`` on the real broker shows every outcome."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_demo_shows_every_outcome(kafka_bootstrap, tmp_path):
    summary_file = tmp_path / "demo.json"
    env = {
        **os.environ,
        "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "SCHEMA_REGISTRY_URL": "http://127.0.0.1:1/ignored",
    }  # the demo always uses schemas/
    # From the repository root, as `make demo` runs it: examples/ is not part of the installed package.
    proc = subprocess.run(
        [sys.executable, "-m", "examples.demo", "--json", str(summary_file)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    summary = json.loads(summary_file.read_text())
    assert summary["ok"] and summary["problems"] == []
    outcomes = summary["outcomes"]
    assert set(outcomes) == {
        "processed",
        "recovered after retry",
        "retries_exhausted",
        "handler",
        "decode",
        "envelope",
        "schema",
        "validation",
        "routing",
    }
    assert all(count > 0 for count in outcomes.values()), outcomes
    stats = summary["stats"]
    assert stats["orders"]["retried"] >= 3 and stats["orders"]["processed"] > 0
    assert stats["shipments"]["processed"] > 0
    # Every dead letter read back from the .dlq topics got the stage its record was produced for.
    assert all(d["stage"] == d["expected"] for d in summary["dead_letters"])
    assert sum(s["dead_lettered_total"] for s in stats.values()) == len(summary["dead_letters"])
    # The table the user reads names every outcome.
    for word in (
        "processed",
        "retried",
        "dead-lettered",
        "retries_exhausted",
        "handler",
        "decode",
        "envelope",
        "schema",
        "validation",
        "routing",
        "every outcome was seen",
    ):
        assert word in proc.stdout
    # Topics are cleaned up.
    from confluent_kafka.admin import AdminClient

    existing = AdminClient({"bootstrap.servers": kafka_bootstrap}).list_topics(timeout=10).topics
    assert not [t for t in summary["topics"].values() if t in existing]


def test_demo_on_rabbitmq_shows_every_outcome_and_deletes_its_queues(rabbitmq_url, tmp_path):
    summary_file = tmp_path / "demo.json"
    env = {
        **os.environ,
        "RABBITMQ_URL": rabbitmq_url,
        "EPISTLE_BROKER": "rabbitmq",  # the switch (or --broker rabbitmq)
        "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1",  # Kafka is not used at all
    }
    proc = subprocess.run(
        [sys.executable, "-m", "examples.demo", "--json", str(summary_file)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "RabbitMQ at amqp://guest:***@" in proc.stdout and "2 queues each" in proc.stdout
    summary = json.loads(summary_file.read_text())
    assert summary["ok"] and summary["problems"] == []
    assert all(count > 0 for count in summary["outcomes"].values()), summary["outcomes"]
    assert all(d["stage"] == d["expected"] for d in summary["dead_letters"])
    stats = summary["stats"]
    assert sum(s["dead_lettered_total"] for s in stats.values()) == len(summary["dead_letters"])

    async def remaining(connection) -> list[str]:
        from aiormq.exceptions import ChannelNotFoundEntity

        left = []
        for topic in summary["topics"].values():
            for queue in (f"{topic}.0", f"{topic}.1", f"{topic}.dlq"):
                channel = await connection.channel()
                try:
                    await channel.declare_queue(queue, passive=True)
                    left.append(queue)
                except ChannelNotFoundEntity:
                    pass
        return left

    from tests.integration.test_rabbitmq import amqp

    assert amqp(rabbitmq_url, remaining) == []
