"""Middleware's per-record guarantee: every record given to on_record ends with exactly one of on_outcome
Done/Stop, an acknowledged on_dead_letter, or on_abandoned, also when its partition is revoked or the
consumer stops while it waits for a retry or for its dead letter (in-memory broker)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from toolkit import KafkaConsumer
from toolkit.consumer import Middleware, RetryPolicy
from toolkit.consumer.outcomes import Done, RetryAfter, Stop
from toolkit.registry import LocalFolderRegistry
from toolkit.testing import InMemoryBroker, envelope

ROOT = Path(__file__).resolve().parents[2]
ORDER = json.loads((ROOT / "schemas/orders/samples/2/valid/required-fields-only.json").read_text())


class Recorder(Middleware):
    def __init__(self) -> None:
        self.events: list[tuple[str, int, str]] = []

    def on_record(self, record: Any) -> None:
        self.events.append(("record", record.offset(), ""))

    def on_outcome(self, record: Any, message: Any, outcome: Any, attempt: int, delay_s: float | None) -> None:
        self.events.append(("outcome", record.offset(), type(outcome).__name__))

    def on_dead_letter(
        self,
        record: Any,
        dead_letter: Any,
        outcome: Any,
        error: BaseException | None,
        failures: int,
        delay_s: float | None,
    ) -> None:
        self.events.append(("dead_letter", record.offset(), "acknowledged" if error is None else "refused"))

    def on_abandoned(self, record: Any) -> None:
        self.events.append(("abandoned", record.offset(), ""))

    def finals(self) -> list[tuple[str, int, str]]:
        return [
            e
            for e in self.events
            if e[0] == "abandoned"
            or e == ("dead_letter", e[1], "acknowledged")
            or (e[0] == "outcome" and e[2] in (Done.__name__, Stop.__name__))
        ]

    def seen(self, kind: str, detail: str = "") -> bool:
        return any(e[0] == kind and (not detail or e[2] == detail) for e in self.events)


async def _until(condition: Any, timeout_s: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.005)


def _consumer(broker: InMemoryBroker, recorder: Recorder, **options: Any) -> KafkaConsumer:
    return KafkaConsumer(
        group_id="shop",
        transport=broker.transport(),
        registry=LocalFolderRegistry(ROOT / "schemas"),
        middleware=[recorder],
        **options,
    )


async def _stopped_during_a_retry_backoff() -> Recorder:
    broker, recorder = InMemoryBroker(), Recorder()
    broker.produce("orders", envelope("orders", 2, ORDER))
    consumer = _consumer(broker, recorder, retry=RetryPolicy(max_attempts=5, initial_s=60))
    consumer.handler("orders")(lambda message: False)
    run = asyncio.create_task(consumer.start())
    await _until(lambda: recorder.seen("outcome", RetryAfter.__name__))
    await consumer.stop()
    await asyncio.wait_for(run, 10)
    assert broker.committed("shop", "orders") is None
    return recorder


def test_a_record_stopped_in_its_retry_backoff_is_abandoned() -> None:
    recorder = asyncio.run(_stopped_during_a_retry_backoff())
    assert recorder.events == [("record", 0, ""), ("outcome", 0, "RetryAfter"), ("abandoned", 0, "")]


async def _revoked_during_a_retry_backoff() -> Recorder:
    broker, recorder = InMemoryBroker(), Recorder()
    broker.produce("orders", envelope("orders", 2, ORDER))
    transport = broker.transport()
    consumer = KafkaConsumer(
        group_id="shop",
        transport=transport,
        registry=LocalFolderRegistry(ROOT / "schemas"),
        middleware=[recorder],
        retry=RetryPolicy(max_attempts=5, initial_s=60),
    )
    calls = []

    @consumer.handler("orders")
    async def handle(message: Any) -> bool:
        calls.append(message.offset)
        return len(calls) > 1  # the first attempt asks for a retry; the redelivery succeeds

    run = asyncio.create_task(consumer.start())
    await _until(lambda: recorder.seen("outcome", RetryAfter.__name__))
    transport.lose_partitions()  # taken away, then given back: the record comes again
    await _until(lambda: recorder.seen("outcome", Done.__name__))
    await consumer.stop()
    await asyncio.wait_for(run, 10)
    assert broker.committed("shop", "orders") == 1
    return recorder


def test_a_record_revoked_in_its_retry_backoff_is_abandoned_then_handled_again() -> None:
    recorder = asyncio.run(_revoked_during_a_retry_backoff())
    assert recorder.events == [
        ("record", 0, ""),
        ("outcome", 0, "RetryAfter"),
        ("abandoned", 0, ""),
        ("record", 0, ""),
        ("outcome", 0, "Done"),
    ]


async def _stopped_while_its_dead_letter_is_refused() -> Recorder:
    broker, recorder = InMemoryBroker(), Recorder()
    broker.produce("orders", b"not json")
    broker.create_topic("orders.dlq")
    broker.refuse("orders.dlq")
    consumer = _consumer(broker, recorder)
    consumer.handler("orders")(lambda message: True)
    run = asyncio.create_task(consumer.start())
    await _until(lambda: recorder.seen("dead_letter", "refused"))
    await consumer.stop()
    await asyncio.wait_for(run, 10)
    assert broker.records("orders.dlq") == []
    return recorder


def test_a_record_whose_dead_letter_is_refused_until_the_stop_is_abandoned() -> None:
    recorder = asyncio.run(_stopped_while_its_dead_letter_is_refused())
    assert recorder.events[:3] == [("record", 0, ""), ("outcome", 0, "ToDeadLetter"), ("dead_letter", 0, "refused")]
    assert recorder.events[-1] == ("abandoned", 0, "")
    assert recorder.finals() == [("abandoned", 0, "")]


async def _many_records_end_once_each() -> Recorder:
    broker, recorder = InMemoryBroker(partitions=2), Recorder()
    for n in range(40):
        broker.produce("orders", envelope("orders", 2, ORDER) if n % 3 else b"junk", key=str(n).encode())
    consumer = _consumer(broker, recorder, stop_when_idle=True, retry=RetryPolicy(max_attempts=2, initial_s=0))
    consumer.handler("orders")(lambda message: message.attempt > 1 or message.offset % 2 == 0)
    await asyncio.wait_for(consumer.start(), 20)
    return recorder


def test_every_record_ends_exactly_once() -> None:
    recorder = asyncio.run(_many_records_end_once_each())
    started = sorted(e[1] for e in recorder.events if e[0] == "record")
    ended = [e for e in recorder.finals()]
    assert len(started) == 40 and len(ended) == 40
