"""``epistle dlq --broker rabbitmq`` as a subprocess on a real RabbitMQ node, on dead letters written by a real
consumer: stats and show leave the queue as it was, tail follows it until Ctrl-C, replay republishes the
exact originals (body, key, typed header table, properties) to their source queue and removes only the dead
letters it replayed."""

from __future__ import annotations

import asyncio
import functools
import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from tests.integration.test_rabbitmq import _count, _delete, _publish, _take, amqp
from toolkit.consumer import KafkaConsumer, RetryPolicy
from toolkit.consumer.amqp import RabbitTransport, headers_from_table
from toolkit.consumer.testing import envelope_bytes
from toolkit.dlq.letters import REPLAYED_FROM
from toolkit.registry import LocalFolderRegistry

ROOT = Path(__file__).resolve().parents[2]
SCHEMAS = ROOT / "schemas"
EPISTLE = [sys.executable, "-m", "toolkit.cli", "dlq"]
ORDER = json.loads((SCHEMAS / "orders/samples/1/valid/full-card-payment.json").read_text())


@functools.cache  # the same bytes each time (the envelope's timestamp is now)
def order(message_id: str) -> bytes:
    return envelope_bytes("orders", 1, ORDER, message_id=message_id, message_type="OrderPlaced")


def epistle(url: str, *args: str, broker: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "RABBITMQ_URL": url}
    if not broker:
        env["EPISTLE_BROKER"] = "rabbitmq"
    arguments = [*args, "--broker", "rabbitmq"] if broker else list(args)
    return subprocess.run([*EPISTLE, *arguments], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def consume(url: str, topic: str, group: str) -> None:
    """Drain ``topic``: malformed messages and the handler's failures (ids starting "boom") are dead-lettered."""

    async def handler(message):
        if message.header.message_id.startswith("boom"):
            raise RuntimeError(f"downstream down for {message.header.message_id}")

    consumer = KafkaConsumer(
        group_id=group,
        transport=RabbitTransport(url),
        registry=LocalFolderRegistry(SCHEMAS),
        stop_when_idle=True,
        retry=RetryPolicy(max_attempts=1),
        commit_interval_s=0.2,
    )
    consumer.register_handler(topic, handler)
    asyncio.run(asyncio.wait_for(consumer.start(), 60))


async def _publish_typed(connection: Any, queue: str) -> None:
    """An order the handler fails, with typed headers and properties a replay must give back."""
    import aio_pika

    channel = await connection.channel(publisher_confirms=True)
    message = aio_pika.Message(
        order("boom-typed"),
        headers={"epistle-key": "k-typed", "retries": 3, "urgent": True, "trace": "t-1"},
        content_type="application/json",
        message_id="amqp-id-1",
        correlation_id="conversation-9",
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
    )
    await channel.default_exchange.publish(message, routing_key=queue, mandatory=True)


@pytest.fixture
def dead_letters(rabbitmq_url, unique_name, group_id):
    """A queue drained by the consumer: 2 handler failures and 2 malformed messages in ``<queue>.dlq``, one
    valid order processed."""
    topic = unique_name("dlqcli")
    amqp(
        rabbitmq_url,
        _publish,
        topic,
        [
            (b"k1", order("ok-1"), [("origin", b"test")]),
            (b"k2", order("boom-1"), [("origin", b"test")]),
            (b"k3", b"not json at all", []),
            (None, b'{"header": {}}', []),
        ],
    )
    amqp(rabbitmq_url, _publish_typed, topic)
    consume(rabbitmq_url, topic, group_id)
    assert amqp(rabbitmq_url, _count, f"{topic}.dlq") == 4
    yield topic
    amqp(rabbitmq_url, _delete, [topic, f"{topic}.dlq", f"{topic}.other"])


def test_stats_and_show_read_the_queue_and_leave_it_as_it_was(rabbitmq_url, dead_letters) -> None:
    dlq = f"{dead_letters}.dlq"
    stats = epistle(rabbitmq_url, "stats", dlq, "--json")
    assert stats.returncode == 0, stats.stderr
    counts = json.loads(stats.stdout)
    assert counts["dead_letters"] == 4 and counts["by_stage"]["handler"] == 2, counts
    shown = epistle(rabbitmq_url, "show", dlq, "--stage", "handler", "--json")
    assert shown.returncode == 0, shown.stderr
    letters = [json.loads(line) for line in shown.stdout.splitlines()]
    assert len(letters) == 2 and {letter["stage"] for letter in letters} == {"handler"}
    assert amqp(rabbitmq_url, _count, dlq) == 4  # nothing read was removed
    limited = epistle(rabbitmq_url, "show", dlq, "--limit", "1", broker=False)  # EPISTLE_BROKER=rabbitmq
    assert limited.returncode == 0 and "there are more" in limited.stderr, limited.stderr
    assert amqp(rabbitmq_url, _count, dlq) == 4


def test_replay_republishes_the_exact_originals_and_removes_only_their_dead_letters(rabbitmq_url, dead_letters) -> None:
    dlq = f"{dead_letters}.dlq"
    dry = epistle(rabbitmq_url, "replay", dlq, "--stage", "handler", "--dry-run")
    assert dry.returncode == 0 and dry.stdout.count("would replay") == 2, dry.stdout + dry.stderr
    assert amqp(rabbitmq_url, _count, dlq) == 4 and amqp(rabbitmq_url, _count, dead_letters) == 0

    replayed = epistle(rabbitmq_url, "replay", dlq, "--stage", "handler", "--quiet")
    assert replayed.returncode == 0, replayed.stderr
    assert "2 replayed" in replayed.stdout and f"removed from {dlq}" in replayed.stdout, replayed.stdout
    remaining = amqp(rabbitmq_url, _take, dlq)  # the malformed ones stay
    assert sorted(json.loads(m.body)["error"]["stage"] for m in remaining) == ["decode", "envelope"]
    back = {json.loads(m.body)["header"]["messageId"]: m for m in amqp(rabbitmq_url, _take, dead_letters)}
    assert sorted(back) == ["boom-1", "boom-typed"]
    plain = back["boom-1"]
    key, headers, _ = headers_from_table(plain.headers)
    assert plain.body == order("boom-1") and key == b"k2"
    table = dict(headers)  # a table has no order
    assert table["origin"] == b"test" and table[REPLAYED_FROM].decode().startswith(f"{dlq}:0:")
    typed = back["boom-typed"]
    assert typed.body == order("boom-typed") and typed.delivery_mode == 2
    assert (typed.headers["retries"], typed.headers["urgent"], typed.headers["trace"]) == (3, True, "t-1")
    assert typed.headers["epistle-key"] == "k-typed"
    assert (typed.message_id, typed.correlation_id, typed.content_type) == (
        "amqp-id-1",
        "conversation-9",
        "application/json",
    )


def test_a_replayed_original_that_fails_again_is_skipped_unless_forced(rabbitmq_url, dead_letters, group_id) -> None:
    dlq = f"{dead_letters}.dlq"
    assert epistle(rabbitmq_url, "replay", dlq, "--stage", "handler", "-q").returncode == 0
    consume(rabbitmq_url, dead_letters, group_id)  # they fail again: dead letters of replayed records
    again = epistle(rabbitmq_url, "replay", dlq, "--stage", "handler", "-q")
    assert again.returncode == 0 and "2 of records that failed again" in again.stdout, again.stdout + again.stderr
    assert amqp(rabbitmq_url, _count, dlq) == 4
    forced = epistle(rabbitmq_url, "replay", dlq, "--stage", "handler", "-q", "--force", "--to", f"{dead_letters}")
    assert forced.returncode == 0 and "2 replayed" in forced.stdout, forced.stderr
    assert amqp(rabbitmq_url, _count, dlq) == 2 and amqp(rabbitmq_url, _count, dead_letters) == 2


def test_replay_refuses_a_dead_letter_queue_and_a_missing_one_and_not_dead_letters(rabbitmq_url, dead_letters) -> None:
    dlq = f"{dead_letters}.dlq"
    into_dlq = epistle(rabbitmq_url, "replay", dlq, "--to", dlq)
    assert into_dlq.returncode == 1 and "dead-letter topic" in into_dlq.stderr
    missing = epistle(rabbitmq_url, "stats", f"{dead_letters}-nothing.dlq")
    assert missing.returncode == 1 and "no queue named" in missing.stderr and "guest:guest" not in missing.stderr
    amqp(rabbitmq_url, _publish, dlq, [(None, b"not a dead letter", [])])
    refused = epistle(rabbitmq_url, "replay", dlq, "-q")
    assert refused.returncode == 1 and "not one of our dead letters" in refused.stderr, refused.stderr
    # the four dead letters before it were replayed (each to its source queue); the stranger stays
    assert amqp(rabbitmq_url, _count, dlq) == 1 and amqp(rabbitmq_url, _count, dead_letters) == 4
    skipped = epistle(rabbitmq_url, "replay", dlq, "-q", "--skip-invalid")
    assert skipped.returncode == 0 and "1 not dead letters" in skipped.stdout, skipped.stdout
    assert amqp(rabbitmq_url, _count, dlq) == 1


def test_tail_follows_new_dead_letters_until_ctrl_c(rabbitmq_url, dead_letters, group_id) -> None:
    dlq = f"{dead_letters}.dlq"
    env = {**os.environ, "RABBITMQ_URL": rabbitmq_url}
    tail = subprocess.Popen(
        [*EPISTLE, "tail", dlq, "--json", "--broker", "rabbitmq"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        started = tail.stderr.readline()
        assert f"following {dlq} from 0@4" in started, started
        lines: list[str] = []
        reader = threading.Thread(target=lambda: lines.extend(iter(tail.stdout.readline, "")), daemon=True)
        reader.start()
        amqp(rabbitmq_url, _publish, dead_letters, [(b"k9", order("boom-new"), [])])
        consume(rabbitmq_url, dead_letters, group_id)
        for _ in range(200):
            if lines:
                break
            threading.Event().wait(0.05)
        tail.send_signal(signal.SIGINT)
        assert tail.wait(30) == 0
        reader.join(5)
    finally:
        if tail.poll() is None:
            tail.kill()
    (shown,) = [json.loads(line) for line in lines]
    assert shown["stage"] == "handler" and "boom-new" in json.dumps(shown)
    assert amqp(rabbitmq_url, _count, dlq) == 5  # everything it read went back
