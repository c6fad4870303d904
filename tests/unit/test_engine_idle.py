"""stop_when_idle on the in-memory broker: a partition being revoked is not "drained"."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from toolkit import KafkaConsumer, Retry
from toolkit.registry import LocalFolderRegistry
from toolkit.testing import InMemoryBroker, envelope

ROOT = Path(__file__).resolve().parents[2]
ORDER = json.loads((ROOT / "schemas/orders/samples/1/valid/full-card-payment.json").read_text())


async def _lost_while_in_backoff() -> tuple[int, int | None, int]:
    broker = InMemoryBroker()
    broker.produce("orders", envelope("orders", 1, ORDER))
    transport = broker.transport()
    consumer = KafkaConsumer(
        group_id="g",
        transport=transport,
        registry=LocalFolderRegistry(ROOT / "schemas"),
        stop_when_idle=True,
        commit_interval_s=0.05,
    )
    calls = 0
    waiting = asyncio.Event()

    @consumer.handler("orders")
    async def handle(message) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            waiting.set()
            raise Retry("later", delay_s=3600)

    started = asyncio.create_task(consumer.start())
    await waiting.wait()
    transport.lose_partitions()  # the only partition goes while its record waits out the backoff
    await asyncio.wait_for(started, 10)  # stops once the record, fetched again, is handled
    return calls, broker.committed("g", "orders"), consumer.stats["orders"].processed


def test_a_member_whose_only_partition_is_lost_mid_backoff_does_not_stop_as_drained() -> None:
    calls, committed, processed = asyncio.run(_lost_while_in_backoff())
    assert (calls, committed, processed) == (2, 1, 1)
