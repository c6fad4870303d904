"""The two backends the behaviour tests run on, behind one small API: the in-memory broker of
:mod:`toolkit.testing` and the real Kafka broker of the integration suite.

A test never asks which backend it has: it makes topics, produces, builds consumers, runs them, reads dead
letters and committed offsets and injects faults through :class:`Backend`, so a behaviour that differs
between the two fails on one of them.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from toolkit.consumer import KafkaConsumer, RetryPolicy
from toolkit.errors import BrokerUnavailable
from toolkit.registry import LocalFolderRegistry
from toolkit.testing import InMemoryBroker, envelope

ROOT = Path(__file__).resolve().parents[2]
SCHEMAS = ROOT / "schemas"
FAST_RETRY = RetryPolicy(max_attempts=3, initial_s=0.02, max_s=0.1)
TIMEOUT_S = 60.0  # a bound for "never": a run that has not ended by then has hung
UNTIL_S = 30.0  # the same for one awaited condition (shorter, so the failure names it)

Headers = list[tuple[str, bytes | None]]
Produced = bytes | None | tuple[bytes | None, bytes | None]
T = TypeVar("T")


def sample(version: int = 1, kind: str = "valid", name: str | None = None) -> dict[str, Any]:
    """A body from schemas/orders/samples/<version>/<kind>/ (the first file unless ``name`` is given)."""
    folder = SCHEMAS / "orders" / "samples" / str(version) / kind
    path = folder / f"{name}.json" if name else sorted(folder.glob("*.json"))[0]
    return json.loads(path.read_text())


def order(message_id: str, version: int = 1, **header: Any) -> bytes:
    """A valid orders envelope with ``message_id``."""
    return envelope("orders", version, sample(version), message_id=message_id, **header)


@dataclass(frozen=True)
class Stored:
    """A record read back from a topic, the same shape from either backend."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: Headers

    def json(self) -> Any:
        return None if self.value is None else json.loads(self.value)


def run(consumer: KafkaConsumer, timeout_s: float = TIMEOUT_S) -> None:
    """Run ``consumer`` (built with ``stop_when_idle``) until it stops."""
    asyncio.run(asyncio.wait_for(consumer.start(), timeout_s))


def scenario(coroutine: Callable[[], Awaitable[T]], timeout_s: float = TIMEOUT_S) -> T:
    """Run an ``async def`` scenario (consumers started as tasks, checks while they run)."""

    async def bounded() -> T:
        return await asyncio.wait_for(coroutine(), timeout_s)

    return asyncio.run(bounded())


async def until(condition: Callable[[], Any], what: str, timeout_s: float = UNTIL_S) -> None:
    """Wait until ``condition()`` (a plain or ``async`` function) is true; fails naming ``what`` otherwise."""

    async def poll() -> None:
        while True:
            result = condition()
            if asyncio.iscoroutine(result):
                result = await result
            if result:
                return
            await asyncio.sleep(0.02)

    try:
        await asyncio.wait_for(poll(), timeout_s)
    except TimeoutError:
        raise AssertionError(f"timed out waiting for: {what}") from None


async def until_committed(backend: Backend, topic: str, expected: dict[int, int | None],
                          group: str | None = None) -> dict[int, int | None]:
    """Wait until the committed offsets of ``topic`` (its partitions 0 .. len(expected) - 1) are ``expected``."""
    last: dict[int, int | None] = {}

    async def reached() -> bool:
        nonlocal last
        last = await backend.call(backend.committed, topic, len(expected), group)
        return last == expected

    try:
        await until(reached, f"committed offsets {expected}")
    except AssertionError:
        raise AssertionError(f"committed offsets: {last}, waited for {expected}") from None
    return last


class Backend:
    """What every behaviour test uses. Subclasses implement the broker side."""

    name: str
    group: str
    """The group of consumers built without ``group=``."""

    def topic(self, prefix: str = "orders", partitions: int = 1) -> str:
        """A new, empty topic (its name unique in the test)."""
        raise NotImplementedError

    def produce(self, topic: str, records: Iterable[Produced], *, partition: int | None = None,
                headers: Headers | None = None) -> None:
        """Produce values, or ``(key, value)`` pairs, in order, each with ``headers``; every record is stored
        when this returns."""
        raise NotImplementedError

    def consumer(self, *, group: str | None = None, **options: Any) -> KafkaConsumer:
        """A consumer of ``group`` (default :attr:`group`) with the test defaults: the repository's schemas
        through :class:`LocalFolderRegistry`, :data:`FAST_RETRY`, ``stop_when_idle``, commits every 0.2 s;
        ``options`` override them."""
        defaults: dict[str, Any] = {"registry": LocalFolderRegistry(SCHEMAS), "retry": FAST_RETRY,
                                    "stop_when_idle": True, "commit_interval_s": 0.2}
        return self._consumer(group or self.group, {**defaults, **options})

    def _consumer(self, group: str, options: dict[str, Any]) -> KafkaConsumer:
        raise NotImplementedError

    def records(self, topic: str) -> list[Stored]:
        """Every record of ``topic`` (none when it does not exist), by partition and offset."""
        raise NotImplementedError

    def dead_letters(self, topic: str) -> list[Stored]:
        """The dead letters of ``topic``, in the order of their source partition and offset."""
        dead = self.records(f"{topic}.dlq")
        return sorted(dead, key=lambda d: (d.json()["source"]["partition"], d.json()["source"]["offset"]))

    def committed(self, topic: str, partitions: int = 1, group: str | None = None) -> dict[int, int | None]:
        """The group's committed offset per partition; None where nothing was committed."""
        raise NotImplementedError

    def refuse_dead_letters(self, topic: str, times: int | None = None) -> None:
        """The broker refuses the next ``times`` dead letters of ``topic`` (every one until :meth:`heal`
        when None)."""
        raise NotImplementedError

    def heal(self) -> None:
        """Clear the injected faults."""
        raise NotImplementedError

    async def call(self, function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``function(*args, **kwargs)`` from inside a running scenario: on the event loop for the in-memory
        broker (which is not thread-safe), in a thread for Kafka (whose clients block)."""
        return function(*args, **kwargs)


class MemoryBackend(Backend):
    """:class:`toolkit.testing.InMemoryBroker`: consumers get ``transport=broker.transport()``."""

    name = "memory"

    def __init__(self) -> None:
        self.broker = InMemoryBroker()
        self.group = "behaviour"
        self._topics = 0

    def topic(self, prefix: str = "orders", partitions: int = 1) -> str:
        self._topics += 1
        name = f"{prefix}-{self._topics}"
        self.broker.create_topic(name, partitions)
        return name

    def produce(self, topic: str, records: Iterable[Produced], *, partition: int | None = None,
                headers: Headers | None = None) -> None:
        for record in records:
            key, value = record if isinstance(record, tuple) else (None, record)
            self.broker.produce(topic, value, key, headers=headers, partition=partition)

    def _consumer(self, group: str, options: dict[str, Any]) -> KafkaConsumer:
        return KafkaConsumer(group_id=group, transport=self.broker.transport(), **options)

    def records(self, topic: str) -> list[Stored]:
        return [Stored(r.topic(), r.partition(), r.offset(), r.key(), r.value(), r.headers() or [])
                for r in self.broker.records(topic)]

    def committed(self, topic: str, partitions: int = 1, group: str | None = None) -> dict[int, int | None]:
        return {p: self.broker.committed(group or self.group, topic, p) for p in range(partitions)}

    def refuse_dead_letters(self, topic: str, times: int | None = None) -> None:
        self.broker.refuse(f"{topic}.dlq", "injected by the test", times=times)

    def heal(self) -> None:
        self.broker.heal()


class KafkaBackend(Backend):
    """The real broker (the integration suite's fixtures); dead letters are refused by wrapping
    ``kafka_io.DeadLetterSender.send``."""

    name = "kafka"

    def __init__(self, bootstrap: str, make_topic: Callable[..., str], group_id: str, monkeypatch: Any) -> None:
        from toolkit.consumer import kafka_io

        self.bootstrap = bootstrap
        self.group = group_id
        self._make_topic = make_topic
        self._refusals: dict[str, list[int | None]] = {}  # dead-letter topic -> [refusals left, None: all]
        self._lock = threading.Lock()
        real_send = kafka_io.DeadLetterSender.send
        backend = self

        def send(sender: Any, record: Any, **kwargs: Any) -> asyncio.Future[None]:
            if backend._refuse(record.topic):
                future: asyncio.Future[None] = sender._loop.create_future()
                future.set_exception(BrokerUnavailable(f"produce to {record.topic} refused: injected by the test"))
                return future
            return real_send(sender, record, **kwargs)

        monkeypatch.setattr(kafka_io.DeadLetterSender, "send", send)

    def _refuse(self, topic: str) -> bool:
        with self._lock:
            left = self._refusals.get(topic)
            if left is None or left[0] == 0:
                return False
            if left[0] is not None:
                left[0] -= 1
            return True

    def topic(self, prefix: str = "orders", partitions: int = 1) -> str:
        return self._make_topic(prefix, partitions=partitions)

    def produce(self, topic: str, records: Iterable[Produced], *, partition: int | None = None,
                headers: Headers | None = None) -> None:
        from toolkit.consumer.testing import produce

        produce(self.bootstrap, topic, list(records), partition=partition, headers=headers)  # type: ignore[arg-type]

    def _consumer(self, group: str, options: dict[str, Any]) -> KafkaConsumer:
        return KafkaConsumer(bootstrap_servers=self.bootstrap, group_id=group, **options)

    def records(self, topic: str) -> list[Stored]:
        from tests.kafka_checks import records_in
        from toolkit.consumer.testing import read_topic

        count = records_in(self.bootstrap, topic)  # exact: reading stops at this count
        if not count:
            return []
        return [Stored(r.topic, r.partition, r.offset, r.key, r.value, list(r.headers))
                for r in read_topic(self.bootstrap, topic, expected=count)]

    def committed(self, topic: str, partitions: int = 1, group: str | None = None) -> dict[int, int | None]:
        from toolkit.consumer.testing import committed

        offsets = committed(self.bootstrap, group or self.group, topic, partitions)
        return {p: (offset if offset >= 0 else None) for p, offset in offsets.items()}

    def refuse_dead_letters(self, topic: str, times: int | None = None) -> None:
        with self._lock:
            self._refusals[f"{topic}.dlq"] = [times]

    def heal(self) -> None:
        with self._lock:
            self._refusals.clear()

    async def call(self, function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return await asyncio.to_thread(function, *args, **kwargs)
