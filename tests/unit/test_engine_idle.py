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


async def _two_runs_on_one_transport() -> tuple[int, int | None]:
    broker = InMemoryBroker()
    transport = broker.transport()
    handled = 0

    async def handle(message) -> None:
        nonlocal handled
        handled += 1

    for _ in range(2):  # the second run finds the record produced after the first one stopped
        broker.produce("orders", envelope("orders", 1, ORDER))
        consumer = KafkaConsumer(
            group_id="g", transport=transport, registry=LocalFolderRegistry(ROOT / "schemas"), stop_when_idle=True
        )
        consumer.register_handler("orders", handle)
        await asyncio.wait_for(consumer.start(), 10)
    return handled, broker.committed("g", "orders")


def test_a_transport_serves_a_second_run_of_a_consumer() -> None:
    assert asyncio.run(_two_runs_on_one_transport()) == (2, 2)


async def _nothing_committed_for_a_lost_partition_while_it_drains() -> tuple[list[int | None], list[int]]:
    broker = InMemoryBroker()
    for _ in range(2):
        broker.produce("orders", envelope("orders", 1, ORDER))
    transport = broker.transport()
    consumer = KafkaConsumer(
        group_id="g",
        transport=transport,
        registry=LocalFolderRegistry(ROOT / "schemas"),
        stop_when_idle=True,
        commit_interval_s=0.1,
    )
    seen: list[int] = []
    committed_while_draining: list[int | None] = []

    @consumer.handler("orders")
    async def handle(message) -> None:
        seen.append(message.offset)
        if message.offset == 1 and seen.count(1) == 1:  # record 0 is done; no commit tick has gone by yet
            transport.lose_partitions()
            await asyncio.sleep(0.35)  # the drain waits for this handler while commit ticks go by
            committed_while_draining.append(broker.committed("g", "orders"))

    await asyncio.wait_for(consumer.start(), 10)
    return committed_while_draining, seen


def test_nothing_is_committed_for_a_lost_partition_while_its_handlers_drain() -> None:
    committed, seen = asyncio.run(_nothing_committed_for_a_lost_partition_while_it_drains())
    assert committed == [None]  # record 0's watermark belongs to the lost assignment: not committed
    assert seen == [0, 1, 0, 1]  # so both come back, as on Kafka
