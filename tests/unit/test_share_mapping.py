"""Share groups: how the engine's outcomes map to acknowledgements, over a fake share client.

The fake (:class:`FakeShareGroup`) plays the broker's side of one share-partition as KIP-932 describes it:
records are available, acquired by a poll (their delivery count goes up), then accepted, released
(available again, until the delivery limit: then archived) or rejected (archived). It implements the
transport's small :class:`~toolkit.consumer.share.ShareClient` protocol, and refuses a poll while records of
the previous one are not acknowledged, as librdkafka's share consumer does in explicit mode.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from toolkit import KafkaConsumer, RetryableError
from toolkit.consumer import share
from toolkit.consumer.outcomes import RetryPolicy
from toolkit.consumer.share import ACCEPT, RELEASE, ShareTransport
from toolkit.consumer.transport import PlainRecord
from toolkit.errors import ConfigError, RegistryUnavailable
from toolkit.registry import LocalFolderRegistry
from toolkit.testing import InMemoryBroker, InMemoryDeadLetterSink, envelope

ROOT = Path(__file__).resolve().parents[2]
ORDER = json.loads((ROOT / "schemas/orders/samples/1/valid/full-card-payment.json").read_text())


class FakeRecord(PlainRecord):
    __slots__ = ("_count",)

    def __init__(self, offset: int, value: bytes, count: int) -> None:
        self._topic, self._partition, self._offset = "orders", 0, offset
        self._key, self._value, self._headers, self._timestamp = None, value, None, 1_700_000_000_000
        self._count = count

    def delivery_count(self) -> int:
        return self._count

    def error(self) -> None:
        return None


class FakeShareGroup:
    """One share-partition and the log of what happened to it (``events``: (what, offset))."""

    def __init__(self, values: list[bytes], *, limit: int, max_records: int = 10) -> None:
        self.values = values
        self.limit = limit
        self.max_records = max_records
        self.state = dict.fromkeys(range(len(values)), "available")
        self.counts = dict.fromkeys(range(len(values)), 0)
        self.unacked: set[int] = set()
        self.events: list[tuple[str, int]] = []
        self.closed = False

    # -- ShareClient ---------------------------------------------------------------------------------
    def subscribe(self, topics: list[str]) -> None:
        assert topics == ["orders"]

    def poll(self, timeout: float = -1) -> list[FakeRecord]:
        if self.unacked:
            raise RuntimeError(
                f"IllegalStateException: records {sorted(self.unacked)} of the last poll are not acknowledged"
            )
        batch = []
        for offset, state in self.state.items():
            if state == "available" and len(batch) < self.max_records:
                self.state[offset] = "acquired"
                self.counts[offset] += 1
                self.unacked.add(offset)
                batch.append(FakeRecord(offset, self.values[offset], self.counts[offset]))
        if not batch:
            import time

            time.sleep(min(timeout, 0.02))
        return batch

    def acknowledge(self, message: FakeRecord, ack_type: Any) -> None:
        offset = message.offset()
        assert self.state[offset] == "acquired", (offset, self.state[offset])
        self.unacked.discard(offset)
        kind = {ACCEPT: "accept", RELEASE: "release", 3: "reject"}[int(ack_type)]
        self.events.append((kind, offset))
        if kind == "release" and self.counts[offset] < self.limit:
            self.state[offset] = "available"
        else:
            self.state[offset] = {"accept": "acknowledged", "release": "archived", "reject": "archived"}[kind]

    def commit_async(self) -> None: ...

    def commit_sync(self, timeout: float = 60) -> dict:
        return {}

    def close(self) -> None:
        self.closed = True


class LoggingSink(InMemoryDeadLetterSink):
    def __init__(self, broker: InMemoryBroker, group: FakeShareGroup, refuse: bool = False) -> None:
        super().__init__(broker, 1_000_000)
        self.group, self.refuse = group, refuse

    def send(self, record: Any, *, alone: bool = False) -> asyncio.Future[None]:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self.refuse:
            from toolkit.errors import BrokerUnavailable

            future.set_exception(BrokerUnavailable("refused"))
            return future
        self.group.events.append(("dead_letter", json.loads(record.value)["source"]["offset"]))
        return super().send(record, alone=alone)


@pytest.fixture(autouse=True)
def _quick_idle(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(share, "_IDLE_S", 0.1)


def run_share(
    handler: Any, values: list[bytes], *, limit: int = 5, lock_ms: int = 30_000, refuse: bool = False, **options: Any
) -> tuple[FakeShareGroup, InMemoryBroker, KafkaConsumer]:
    group = FakeShareGroup(values, limit=limit)
    broker = InMemoryBroker()
    transport = ShareTransport(
        {"group.id": "g"},
        client_config={},
        client_factory=lambda config: group,
        group_settings={share.DELIVERY_LIMIT: limit, share.LOCK_DURATION: lock_ms},
        dead_letter_sink=LoggingSink(broker, group, refuse),
    )
    options.setdefault("retry", RetryPolicy(max_attempts=10, initial_s=0.0))
    consumer = KafkaConsumer(
        group_id="g",
        mode="share",
        transport=transport,
        registry=LocalFolderRegistry(ROOT / "schemas"),
        stop_when_idle=True,
        max_workers=4,
        **options,
    )
    consumer.register_handler("orders", handler)

    async def main() -> None:
        await asyncio.wait_for(consumer.start(), 30)

    asyncio.run(main())
    assert group.closed
    return group, broker, consumer


def dead_letters(broker: InMemoryBroker) -> list[dict]:
    return [record.json() for record in broker.records("orders.dlq")] if "orders.dlq" in broker.topics else []


ONE = [envelope("orders", 1, ORDER)]


def test_done_is_accepted() -> None:
    group, broker, _ = run_share(lambda message: None, ONE * 3)
    assert sorted(group.events) == [("accept", 0), ("accept", 1), ("accept", 2)]
    assert dead_letters(broker) == []


def test_a_retryable_failure_is_released_and_its_delivery_count_is_the_attempt() -> None:
    seen: list[tuple[int, int | None]] = []

    def handler(message: Any) -> bool:
        seen.append((message.attempt, message.delivery_count))
        return message.attempt == 3  # False twice: released twice, then accepted

    group, broker, _ = run_share(handler, ONE)
    assert seen == [(1, 1), (2, 2), (3, 3)]
    assert group.events == [("release", 0), ("release", 0), ("accept", 0)]
    assert dead_letters(broker) == []


def test_always_failing_is_dead_lettered_at_the_delivery_limit_then_accepted() -> None:
    def handler(message: Any) -> None:
        raise RetryableError("down")

    group, broker, _ = run_share(handler, ONE, limit=3)
    assert group.events == [("release", 0), ("release", 0), ("dead_letter", 0), ("accept", 0)]
    (letter,) = dead_letters(broker)
    assert letter["source"]["attempts"] == 3 and letter["error"]["stage"] == "retries_exhausted"


def test_the_retry_policy_limit_applies_when_lower_than_the_brokers() -> None:
    group, broker, _ = run_share(lambda m: False, ONE, limit=5, retry=RetryPolicy(max_attempts=2, initial_s=0.0))
    assert group.events == [("release", 0), ("dead_letter", 0), ("accept", 0)]
    assert dead_letters(broker)[0]["source"]["attempts"] == 2


def test_a_permanent_failure_is_dead_lettered_first_then_accepted_never_rejected() -> None:
    def handler(message: Any) -> None:
        raise ValueError("bad order")

    group, broker, _ = run_share(handler, ONE + [b"not json"])
    assert sorted(group.events) == [("accept", 0), ("accept", 1), ("dead_letter", 0), ("dead_letter", 1)]
    for offset in (0, 1):
        assert group.events.index(("dead_letter", offset)) < group.events.index(("accept", offset))
    assert {letter["error"]["stage"] for letter in dead_letters(broker)} == {"handler", "decode"}


def test_a_dead_letter_the_broker_refuses_releases_the_record_before_its_lock_expires() -> None:
    def handler(message: Any) -> None:
        raise ValueError("bad order")

    group, broker, _ = run_share(handler, ONE, limit=2, lock_ms=1000, refuse=True)
    assert group.events == [("release", 0), ("release", 0)]  # released each time; never accepted or rejected
    assert group.state[0] == "archived"  # (the broker's own limit: what a RENEW would have spared)


def test_an_outage_is_held_within_the_lock_then_released_never_dead_lettered() -> None:
    calls = 0

    def handler(message: Any) -> None:
        nonlocal calls
        calls += 1
        if calls <= 2:
            raise RegistryUnavailable("registry down")

    group, broker, _ = run_share(handler, ONE, lock_ms=1000, retry=RetryPolicy(max_attempts=3, initial_s=5.0))
    assert group.events == [("release", 0), ("release", 0), ("accept", 0)]
    assert dead_letters(broker) == []


def test_an_outage_shorter_than_the_lock_is_retried_in_place() -> None:
    calls = 0

    def handler(message: Any) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RegistryUnavailable("registry down")

    group, _, _ = run_share(handler, ONE, retry=RetryPolicy(max_attempts=3, initial_s=0.01))
    assert group.events == [("accept", 0)] and calls == 2


def test_share_mode_runs_unordered_and_refuses_the_ordering_modes_it_cannot_keep() -> None:
    consumer = KafkaConsumer(group_id="g", mode="share", registry=LocalFolderRegistry(ROOT / "schemas"))
    assert consumer.ordering.value == "UNORDERED"
    for ordering in ("PARTITION", "KEY"):
        with pytest.raises(ConfigError, match="cannot hold in a share group") as raised:
            KafkaConsumer(group_id="g", mode="share", ordering=ordering)
        assert raised.value.setting == "ordering"
    with pytest.raises(ConfigError, match="use group .* or share") as raised:
        KafkaConsumer(group_id="g", mode="queue")
    assert raised.value.setting == "mode"


def test_a_share_transport_under_an_ordered_consumer_is_refused_at_start() -> None:
    group = FakeShareGroup(ONE, limit=5)
    transport = ShareTransport(
        {"group.id": "g"}, client_config={}, client_factory=lambda config: group, group_settings={}
    )
    consumer = KafkaConsumer(group_id="g", transport=transport, registry=LocalFolderRegistry(ROOT / "schemas"))
    consumer.register_handler("orders", lambda message: None)
    with pytest.raises(ConfigError, match="cannot hold in a share group"):
        asyncio.run(consumer.start())


def test_metrics_count_share_outcomes_as_in_a_consumer_group() -> None:
    from prometheus_client import CollectorRegistry

    from toolkit.observability import PrometheusMiddleware

    registry = CollectorRegistry()
    calls = 0

    def handler(message: Any) -> bool:
        nonlocal calls
        calls += 1
        return calls > 1  # released once, then accepted

    group, _, _ = run_share(handler, ONE + [b"not json"], middleware=[PrometheusMiddleware(registry)])
    assert sorted(group.events) == [("accept", 0), ("accept", 1), ("dead_letter", 1), ("release", 0)]

    def total(outcome: str) -> float:
        return sum(
            sample.value
            for family in registry.collect()
            for sample in family.samples
            if sample.name == "epistle_records_total" and sample.labels.get("outcome") == outcome
        )

    assert (total("processed"), total("retried"), total("dead_lettered")) == (1, 1, 1)
