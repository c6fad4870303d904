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
import threading
import time
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

    def __init__(
        self, values: list[bytes], *, limit: int, max_records: int = 10, lock_s: float = 30.0, join_s: float = 0.0
    ) -> None:
        self.values = values
        self.joined_at = time.monotonic() + join_s  # nothing is delivered before (the member's first heartbeats)
        self.limit = limit
        self.max_records = max_records
        self.lock_s = lock_s
        self.state = dict.fromkeys(range(len(values)), "available")
        self.counts = dict.fromkeys(range(len(values)), 0)
        self.acquired_at = dict.fromkeys(range(len(values)), 0.0)
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
        for offset, state in self.state.items() if time.monotonic() >= self.joined_at else ():
            if state == "available" and len(batch) < self.max_records:
                self.state[offset] = "acquired"
                self.counts[offset] += 1
                self.acquired_at[offset] = time.monotonic()
                self.unacked.add(offset)
                batch.append(FakeRecord(offset, self.values[offset], self.counts[offset]))
        if not batch:
            time.sleep(min(timeout, 0.02))
        return batch

    def holds(self, offset: int, delivery: int) -> bool:
        """Whether that delivery of the record is still acquired, its lock not expired (a handler may run)."""
        return (
            self.state[offset] == "acquired"
            and self.counts[offset] == delivery
            and time.monotonic() < self.acquired_at[offset] + self.lock_s
        )

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
    def __init__(self, broker: InMemoryBroker, group: FakeShareGroup, refuse: bool | int = False) -> None:
        super().__init__(broker, 1_000_000)
        self.group = group
        self.refusals = -1 if refuse is True else int(refuse)  # -1: every send; N: the first N sends

    def send(self, record: Any, *, alone: bool = False) -> asyncio.Future[None]:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self.refusals:
            self.refusals -= 1 if self.refusals > 0 else 0
            from toolkit.errors import BrokerUnavailable

            future.set_exception(BrokerUnavailable("refused"))
            return future
        self.group.events.append(("dead_letter", json.loads(record.value)["source"]["offset"]))
        return super().send(record, alone=alone)


@pytest.fixture(autouse=True)
def _quick_idle(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(share, "_IDLE_S", 0.1)


def run_share(
    handler: Any,
    values: list[bytes],
    *,
    limit: int = 5,
    lock_ms: int = 30_000,
    refuse: bool | int = False,
    max_records: int = 10,
    heartbeat_ms: int = 50,
    group: FakeShareGroup | None = None,
    **options: Any,
) -> tuple[FakeShareGroup, InMemoryBroker, KafkaConsumer]:
    if group is None:
        group = FakeShareGroup(values, limit=limit, max_records=max_records, lock_s=lock_ms / 1000)
    assert (group.limit, group.lock_s) == (limit, lock_ms / 1000)
    broker = InMemoryBroker()
    transport = ShareTransport(
        {"group.id": "g"},
        client_config={},
        client_factory=lambda config: group,
        group_settings={
            share.DELIVERY_LIMIT: limit,
            share.LOCK_DURATION: lock_ms,
            share.HEARTBEAT_INTERVAL: heartbeat_ms,
        },
        dead_letter_sink=LoggingSink(broker, group, refuse),
    )
    options.setdefault("retry", RetryPolicy(max_attempts=10, initial_s=0.0))
    consumer = KafkaConsumer(
        group_id="g",
        mode="share",
        transport=transport,
        registry=LocalFolderRegistry(ROOT / "schemas"),
        stop_when_idle=True,
        **{"max_workers": 4, **options},
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


def test_a_refused_dead_letter_releases_the_record_before_its_lock_expires_but_not_at_its_last_delivery() -> None:
    """First delivery: the dead letter is refused, the lock would run out first: released. Second (the last:
    a release would let the broker archive it, kept nowhere): held and the dead letter retried in place."""

    def handler(message: Any) -> None:
        raise ValueError("bad order")

    group, broker, _ = run_share(
        handler, ONE, limit=2, lock_ms=1000, refuse=3, retry=RetryPolicy(max_attempts=10, initial_s=0.6)
    )
    assert group.events == [("release", 0), ("dead_letter", 0), ("accept", 0)]
    assert len(dead_letters(broker)) == 1 and group.state[0] == "acknowledged"


def test_an_outage_at_the_last_delivery_is_retried_in_place_however_long_never_released() -> None:
    calls = 0

    def handler(message: Any) -> None:
        nonlocal calls
        calls += 1
        if calls <= 2:
            raise RegistryUnavailable("registry down")

    group, broker, _ = run_share(handler, ONE, limit=1, lock_ms=1000, retry=RetryPolicy(max_attempts=3, initial_s=0.6))
    assert group.events == [("accept", 0)] and calls == 3  # released, the broker would have archived it
    assert dead_letters(broker) == []


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


def test_a_retry_is_released_at_once_without_the_backoff() -> None:
    # The broker's redelivery is the retry: a record held for a backoff would hold back the next poll.
    from toolkit.consumer import Middleware
    from toolkit.consumer.outcomes import RetryAfter

    delays: list[tuple[float, float | None]] = []

    class Delays(Middleware):
        def on_outcome(self, record: Any, message: Any, outcome: Any, attempt: int, delay_s: float | None) -> None:
            if isinstance(outcome, RetryAfter):
                delays.append((outcome.delay_s, delay_s))

    group, _, _ = run_share(
        lambda message: message.attempt == 3,
        ONE,
        lock_ms=2000,
        retry=RetryPolicy(max_attempts=5, initial_s=3600.0),
        middleware=[Delays()],
    )
    assert group.events == [("release", 0), ("release", 0), ("accept", 0)]
    assert delays == [(0.0, 0.0), (0.0, 0.0)]


def test_a_hung_handler_holds_back_the_other_records_for_one_lock_at_most() -> None:
    # librdkafka polls again only once the whole batch is settled: when the batch's lock runs out, the poll
    # thread releases the hung record (delivered again) and polls on.
    handled: set[int] = set()
    everything_else = threading.Event()
    freed: list[bool] = []

    def handler(message: Any) -> None:
        if message.offset == 0 and message.delivery_count == 1:
            freed.append(everything_else.wait(10))  # hangs until every other record was handled
            return
        handled.add(message.offset)
        if handled == set(range(15)):
            everything_else.set()

    group, _, _ = run_share(handler, ONE * 15, lock_ms=1000, max_records=5)
    assert freed == [True]
    assert group.events.index(("release", 0)) < group.events.index(("accept", 0))
    assert sorted(offset for kind, offset in group.events if kind == "accept") == list(range(15))
    assert set(group.state.values()) == {"acknowledged"}


def test_a_record_whose_lock_ran_out_while_it_waited_for_a_worker_is_released_not_handled() -> None:
    late: list[tuple[int, int]] = []
    first: list[int] = []
    group = FakeShareGroup(ONE * 6, limit=5, max_records=6, lock_s=2.0)

    def handler(message: Any) -> None:
        if not group.holds(message.offset, message.delivery_count):
            late.append((message.offset, message.delivery_count))
        if not first:  # the one worker is busy until the batch's locks ran out: the others wait for it
            first.append(message.offset)
            wait_until(lambda: ("release", first[0]) in group.events)

    run_share(handler, [], group=group, lock_ms=2000, max_workers=1)
    assert late == []
    assert [event for event in group.events if event[0] == "release"] == [("release", n) for n in range(6)]
    assert sorted(offset for kind, offset in group.events if kind == "accept") == list(range(6))


def test_the_middleware_path_releases_a_record_whose_lock_ran_out_waiting_for_a_worker() -> None:
    from toolkit.consumer import Middleware

    late: list[tuple[int, int]] = []
    first: list[int] = []
    group = FakeShareGroup(ONE * 4, limit=5, max_records=4, lock_s=2.0)

    class Around(Middleware):
        async def around_handler(self, message: Any, call_next: Any) -> Any:
            return await call_next(message)

    def handler(message: Any) -> None:
        if not group.holds(message.offset, message.delivery_count):
            late.append((message.offset, message.delivery_count))
        if not first:
            first.append(message.offset)
            wait_until(lambda: ("release", first[0]) in group.events)

    run_share(handler, [], group=group, lock_ms=2000, max_workers=1, middleware=[Around()])
    assert late == []
    assert [event for event in group.events if event[0] == "release"] == [("release", n) for n in range(4)]
    assert sorted(offset for kind, offset in group.events if kind == "accept") == list(range(4))


def test_at_its_last_delivery_a_record_is_handled_however_late_never_released_for_its_lock() -> None:
    # Released at its last delivery, the record would be archived by the broker: kept nowhere.
    group = FakeShareGroup(ONE * 3, limit=2, max_records=3, lock_s=2.0)
    seen: list[tuple[int, int]] = []

    def handler(message: Any) -> bool:
        seen.append((message.offset, message.delivery_count))
        if message.delivery_count == 1:
            return False  # released: the next delivery is the last
        if len(seen) == 4:  # the one worker is busy past the lock of the whole batch: the others wait for it
            wait_until(lambda: time.monotonic() > group.acquired_at[message.offset] + 2.2)
        return message.offset != 2  # offset 2 fails at its last delivery: dead-lettered

    _, broker, _ = run_share(handler, [], group=group, limit=2, lock_ms=2000, max_workers=1)
    assert sorted(seen) == [(0, 1), (0, 2), (1, 1), (1, 2), (2, 1), (2, 2)]
    assert sorted(group.events) == [
        ("accept", 0),
        ("accept", 1),
        ("accept", 2),
        ("dead_letter", 2),
        ("release", 0),
        ("release", 1),
        ("release", 2),
    ]
    (letter,) = dead_letters(broker)
    assert letter["source"]["attempts"] == 2 and letter["error"]["stage"] == "retries_exhausted"


def test_until_idle_stops_a_share_consumer_that_was_never_given_a_record() -> None:
    group, _, consumer = run_share(lambda message: None, [])
    assert group.events == [] and consumer.stats.as_dict() == {}


def test_until_idle_waits_for_a_members_first_records_that_come_with_its_heartbeats() -> None:
    group = FakeShareGroup(ONE * 2, limit=5, join_s=0.5)  # nothing for a while after the start: then records
    run_share(lambda message: None, [], group=group, heartbeat_ms=500)
    assert sorted(group.events) == [("accept", 0), ("accept", 1)]


def test_commit_resolves_at_once_without_a_poll_thread_and_a_refused_subscription_closes_the_client() -> None:
    group = FakeShareGroup(ONE, limit=5)
    transport = ShareTransport(
        {"group.id": "g"}, client_config={}, client_factory=lambda config: group, group_settings={}
    )
    assert transport.commit([]).done()  # never started

    def refuse(topics: list[str]) -> None:
        raise RuntimeError("subscription refused")

    group.subscribe = refuse  # type: ignore[method-assign]

    async def start() -> None:
        transport.start(
            ["orders"],
            "g",
            None,  # type: ignore[arg-type]
            asyncio.get_running_loop(),
            max_poll_records=10,
            max_in_flight=10,
            dlq_max_message_bytes=1_000_000,
        )

    with pytest.raises(ConfigError, match="subscription refused"):
        asyncio.run(start())
    assert group.closed


def wait_until(condition: Any, timeout_s: float = 10.0) -> None:
    """Block (a handler's thread) until ``condition()`` or ``timeout_s``: a guard against a hang, not a timing."""
    end = time.monotonic() + timeout_s
    while not condition() and time.monotonic() < end:
        time.sleep(0.01)
