"""The rejoin watchdog on the real broker (toolkit/consumer/rejoin.py).

A consumer that is out of its group and not getting back in is recreated and handles what comes next, with
nothing lost and nothing handled twice. The stuck state librdkafka can fall into after a coordinator outage is
stood in for by unsubscribing its consumer under it (the symptom is the same: no partitions, no member in the
group, no JoinGroup under way). A member that is legitimately without partitions (more members than
partitions, or its topic does not exist yet) is never recreated.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka.admin import AdminClient
from prometheus_client import CollectorRegistry

from toolkit.consumer import KafkaConsumer
from toolkit.consumer.testing import committed, envelope_bytes, produce
from toolkit.observability.metrics import PrometheusMiddleware
from toolkit.registry import LocalFolderRegistry

ROOT = Path(__file__).resolve().parents[2]
BODY = json.loads((ROOT / "schemas/orders/samples/1/valid/required-fields-only.json").read_text())
SESSION_MS = 6000
REJOIN_S = 6.0  # (at least one session)
RECREATED = "is not a member of group"

pytestmark = pytest.mark.integration


def _consumer(bootstrap: str, group: str, topic: str, handled: Counter[str], **kw: Any) -> KafkaConsumer:
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=group,
        registry=LocalFolderRegistry(ROOT / "schemas"),
        commit_interval_s=0.2,
        rejoin_timeout_s=REJOIN_S,
        kafka_config={"session.timeout.ms": SESSION_MS, "heartbeat.interval.ms": 500},
        topics=[topic],
        **kw,
    )

    async def handler(message):
        handled[message.header.message_id] += 1

    consumer.register_handler(topic, handler)
    return consumer


def _poller(consumer: KafkaConsumer) -> Any:
    engine = consumer._engine
    assert engine is not None
    return engine.transport._poller  # type: ignore[attr-defined]


def _members(bootstrap: str, group: str) -> list[str]:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    return [m.member_id for m in admin.describe_consumer_groups([group], request_timeout=15)[group].result(30).members]


def _unsubscribe_on_the_poll_thread(poller: Any) -> None:
    """Unsubscribe the poll thread's consumer from its next fetch, on that thread (librdkafka serves the
    revoke there; our own thread calling it would wait on a rebalance the poll thread has to serve)."""
    fetch = poller._fetch

    def once(consumer: Any, limit: int) -> list[Any]:
        poller._fetch = fetch
        consumer.unsubscribe()
        return []

    poller._fetch = once


async def _until(condition, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.1)


def test_a_consumer_stuck_out_of_its_group_is_recreated_and_loses_nothing(
    kafka_bootstrap, make_topic, group_id, caplog
):
    caplog.set_level(logging.INFO, logger="toolkit")
    topic = make_topic("rejoin", partitions=2)
    first = [envelope_bytes("orders", 1, BODY, message_id=f"first-{i}") for i in range(100)]
    second = [envelope_bytes("orders", 1, BODY, message_id=f"second-{i}") for i in range(100)]
    handled: Counter[str] = Counter()
    metrics = CollectorRegistry()
    consumer = _consumer(kafka_bootstrap, group_id, topic, handled, middleware=[PrometheusMiddleware(registry=metrics)])

    async def scenario() -> float:
        task = asyncio.create_task(consumer.start())
        produce(kafka_bootstrap, topic, first)
        await _until(lambda: len(handled) == 100, 60, "the first 100 records")
        poller = _poller(consumer)
        await _until(lambda: sum(committed(kafka_bootstrap, group_id, topic, 2).values()) == 100, 30, "their commit")
        assert poller.recreated == 0
        stuck_consumer = poller.consumer
        _unsubscribe_on_the_poll_thread(poller)  # out of the group, and nothing will take it back in
        await _until(lambda: poller._unassigned_since is not None, 30, "the partitions to be given up")
        stuck_at = time.monotonic()
        produce(kafka_bootstrap, topic, second)  # waits in the topic: nobody is assigned it
        await asyncio.sleep(1)
        assert len(handled) == 100, "records were handled with no partition assigned"
        await _until(lambda: poller.recreated == 1, 60, "the watchdog to recreate the consumer")
        assert poller.consumer is not stuck_consumer
        await _until(lambda: len(handled) == 200, 60, "the records produced while it was stuck")
        recovered_s = time.monotonic() - stuck_at
        await _until(lambda: sum(committed(kafka_bootstrap, group_id, topic, 2).values()) == 200, 30, "the commit")
        await consumer.stop()
        await asyncio.wait_for(task, 30)
        return recovered_s

    recovered_s = asyncio.run(asyncio.wait_for(scenario(), 180))
    assert sorted(handled) == sorted([f"first-{i}" for i in range(100)] + [f"second-{i}" for i in range(100)])
    assert max(handled.values()) == 1, [k for k, n in handled.items() if n > 1][:10]
    warnings = [r.getMessage() for r in caplog.records if RECREATED in r.getMessage()]
    assert len(warnings) == 1 and "does not list it" in warnings[0], warnings
    assert metrics.get_sample_value("epistle_consumer_recreated_total") == 1
    # after REJOIN_S without partitions, two answers one interval (1 s here) apart, then a join
    assert recovered_s < REJOIN_S + 30, recovered_s


def test_an_idle_member_and_a_consumer_of_a_missing_topic_are_left_alone(
    kafka_bootstrap, make_topic, group_id, unique_name, caplog
):
    caplog.set_level(logging.INFO, logger="toolkit")
    topic = make_topic("rejoin-idle", partitions=1)  # two members, one partition: one of them is idle
    missing = unique_name("rejoin-missing")  # (never created)
    handled: Counter[str] = Counter()
    a = _consumer(kafka_bootstrap, group_id, topic, handled)
    b = _consumer(kafka_bootstrap, group_id, topic, handled)
    c = _consumer(kafka_bootstrap, unique_name("group-missing"), missing, handled)

    async def scenario() -> None:
        tasks = [asyncio.create_task(member.start()) for member in (a, b, c)]
        await _until(lambda: all(m._engine is not None and m._engine.transport._poller for m in (a, b, c)), 60, "start")
        await _until(lambda: len(_members(kafka_bootstrap, group_id)) == 2, 60, "both members in the group")
        members = sorted(_members(kafka_bootstrap, group_id))
        pollers = [_poller(m) for m in (a, b)]
        await _until(lambda: any(p._unassigned_since is None for p in pollers), 60, "an assignment")
        idle = [p for p in pollers if p._unassigned_since is not None]
        assert len(idle) == 1, "both members have the partition"
        # The watchdogs of the idle member and of the missing topic's consumer got answers, several times.
        watched = [*idle, _poller(c)]
        await _until(lambda: all(p._watchdog.answers >= 3 for p in watched), 60, "three answers each")
        assert [p.recreated for p in (*pollers, _poller(c))] == [0, 0, 0]
        assert sorted(_members(kafka_bootstrap, group_id)) == members  # no member replaced or added
        for member in (a, b, c):
            await member.stop()
        await asyncio.wait_for(asyncio.gather(*tasks), 30)

    asyncio.run(asyncio.wait_for(scenario(), 180))
    assert not [r.getMessage() for r in caplog.records if RECREATED in r.getMessage()]
