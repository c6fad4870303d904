"""The three backends the behaviour tests run on, behind one small API: the in-memory broker of
:mod:`toolkit.testing`, and the real Kafka broker and RabbitMQ node of the integration suite.

A test never asks which backend it has: it makes topics, produces, builds consumers, runs them, reads dead
letters and committed offsets and injects faults through :class:`Backend`, so a behaviour that differs
between them fails on one of them. The few behaviours a broker does not have are listed, with the reason,
in its backend's ``unsupported`` (the ``backend`` fixture skips those tests there).
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


async def until_committed(
    backend: Backend, topic: str, expected: dict[int, int | None], group: str | None = None
) -> dict[int, int | None]:
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
    unsupported: dict[str, str] = {}
    """Test name -> why this broker does not have the behaviour it checks (the test is skipped here)."""

    def topic(self, prefix: str = "orders", partitions: int = 1) -> str:
        """A new, empty topic (its name unique in the test)."""
        raise NotImplementedError

    def produce(
        self, topic: str, records: Iterable[Produced], *, partition: int | None = None, headers: Headers | None = None
    ) -> None:
        """Produce values, or ``(key, value)`` pairs, in order, each with ``headers``; every record is stored
        when this returns."""
        raise NotImplementedError

    def consumer(self, *, group: str | None = None, **options: Any) -> KafkaConsumer:
        """A consumer of ``group`` (default :attr:`group`) with the test defaults: the repository's schemas
        through :class:`LocalFolderRegistry`, :data:`FAST_RETRY`, ``stop_when_idle``, commits every 0.2 s;
        ``options`` override them."""
        defaults: dict[str, Any] = {
            "registry": LocalFolderRegistry(SCHEMAS),
            "retry": FAST_RETRY,
            "stop_when_idle": True,
            "commit_interval_s": 0.2,
        }
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

    def produce(
        self, topic: str, records: Iterable[Produced], *, partition: int | None = None, headers: Headers | None = None
    ) -> None:
        for record in records:
            key, value = record if isinstance(record, tuple) else (None, record)
            self.broker.produce(topic, value, key, headers=headers, partition=partition)

    def _consumer(self, group: str, options: dict[str, Any]) -> KafkaConsumer:
        return KafkaConsumer(group_id=group, transport=self.broker.transport(), **options)

    def records(self, topic: str) -> list[Stored]:
        return [
            Stored(r.topic(), r.partition(), r.offset(), r.key(), r.value(), r.headers() or [])
            for r in self.broker.records(topic)
        ]

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

    def produce(
        self, topic: str, records: Iterable[Produced], *, partition: int | None = None, headers: Headers | None = None
    ) -> None:
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
        return [
            Stored(r.topic, r.partition, r.offset, r.key, r.value, list(r.headers))
            for r in read_topic(self.bootstrap, topic, expected=count)
        ]

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


class RabbitBackend(Backend):
    """A real RabbitMQ node (``rabbitmq_url``): a topic is a queue (``<topic>.<p>`` per partition when it has
    several, consumed as ``RabbitTransport(partitions=...)``), a record's key is its ``epistle-key`` header
    and its offset its delivery tag - 1 on the consumer's channel.

    AMQP keeps no committed offset: :meth:`committed` is the last watermark each partition's channel
    acknowledged (``basic.ack(multiple=True)``), as the transport reports it once written; the integration
    tests check the queues' own counts. Dead letters are refused by wrapping
    ``amqp.RabbitDeadLetterSink.send``."""

    name = "rabbitmq"
    unsupported = {
        "test_a_member_joining_mid_run_takes_partitions_and_nothing_is_lost": (
            "AMQP has no group rebalance: consumers of a queue share its deliveries (or, with "
            "single-active-consumer, one takes all); nothing is revoked from a member (docs/contracts.md)"
        ),
    }
    """Tests of a behaviour AMQP does not have, with the reason; the ``backend`` fixture skips them."""

    def __init__(self, url: str, unique_name: Callable[[str], str], group_id: str, monkeypatch: Any) -> None:
        from toolkit.consumer import amqp

        self.url = url
        self.group = group_id
        self._unique_name = unique_name
        self._partitions: dict[str, int] = {}
        self._queues: list[str] = []
        self._acked: dict[tuple[str, int], int] = {}
        self._refusals: dict[str, list[int | None]] = {}
        self._lock = threading.Lock()
        self._round_robin = 0
        backend = self
        real_send = amqp.RabbitDeadLetterSink.send

        def send(sink: Any, record: Any, **kwargs: Any) -> asyncio.Future[None]:
            if backend._refuse(record.topic):
                future: asyncio.Future[None] = sink._loop.create_future()
                future.set_exception(BrokerUnavailable(f"publish to {record.topic} refused: injected by the test"))
                return future
            return real_send(sink, record, **kwargs)

        def acknowledged(transport: Any, topic: str, partition: int, offset: int) -> None:
            with backend._lock:
                backend._acked[(topic, partition)] = offset

        monkeypatch.setattr(amqp.RabbitDeadLetterSink, "send", send)
        monkeypatch.setattr(amqp.RabbitTransport, "acknowledged", acknowledged)

    def _refuse(self, topic: str) -> bool:
        with self._lock:
            left = self._refusals.get(topic)
            if left is None or left[0] == 0:
                return False
            if left[0] is not None:
                left[0] -= 1
            return True

    def queue(self, topic: str, partition: int = 0) -> str:
        """The queue of a topic's partition."""
        return topic if self._partitions.get(topic, 1) == 1 else f"{topic}.{partition}"

    def topic(self, prefix: str = "orders", partitions: int = 1) -> str:
        name = self._unique_name(prefix)
        self._partitions[name] = partitions
        queues = [self.queue(name, p) for p in range(partitions)]
        self._queues += [*queues, f"{name}.dlq"]
        self._amqp(self._declare, queues)
        return name

    def _amqp(self, coroutine: Callable[..., Awaitable[T]], *args: Any) -> T:
        """Run one AMQP conversation on a connection of its own (from any thread: a loop of its own)."""

        async def conversation() -> T:
            import aio_pika

            connection = await aio_pika.connect(self.url)
            try:
                return await coroutine(connection, *args)
            finally:
                await connection.close()

        return asyncio.run(conversation())

    @staticmethod
    async def _declare(connection: Any, queues: list[str]) -> None:
        channel = await connection.channel()
        for name in queues:
            await channel.declare_queue(name, durable=True)

    def produce(
        self, topic: str, records: Iterable[Produced], *, partition: int | None = None, headers: Headers | None = None
    ) -> None:
        import zlib

        count = self._partitions.get(topic, 1)
        batch = []
        for record in records:
            key, value = record if isinstance(record, tuple) else (None, record)
            p = partition
            if p is None:
                if key is not None:
                    p = zlib.crc32(key) % count
                else:
                    p, self._round_robin = self._round_robin % count, self._round_robin + 1
            batch.append((self.queue(topic, p), key, value))
        self._amqp(self._publish, batch, headers)

    @staticmethod
    async def _publish(
        connection: Any, batch: list[tuple[str, bytes | None, bytes | None]], headers: Headers | None
    ) -> None:
        import datetime

        import aio_pika

        from toolkit.consumer.amqp import table_from_headers

        channel = await connection.channel(publisher_confirms=True)
        for queue, key, value in batch:
            message = aio_pika.Message(
                value or b"", headers=table_from_headers(key, headers), timestamp=datetime.datetime.now(datetime.UTC)
            )
            await channel.default_exchange.publish(message, routing_key=queue, mandatory=True)

    def _consumer(self, group: str, options: dict[str, Any]) -> KafkaConsumer:
        from toolkit.consumer.amqp import RabbitTransport

        partitions = {topic: count for topic, count in self._partitions.items() if count > 1}
        return KafkaConsumer(group_id=group, transport=RabbitTransport(self.url, partitions=partitions), **options)

    def records(self, topic: str) -> list[Stored]:
        if topic.endswith(".dlq"):
            return self._amqp(self._read, topic, topic, 0)
        return [
            stored
            for p in range(self._partitions.get(topic, 1))
            for stored in self._amqp(self._read, self.queue(topic, p), topic, p)
        ]

    @staticmethod
    async def _read(connection: Any, queue: str, topic: str, partition: int) -> list[Stored]:
        """Every message of ``queue``, left in it: fetched unacknowledged, then the channel is closed."""
        from aiormq.exceptions import ChannelNotFoundEntity

        from toolkit.consumer.amqp import headers_from_table

        channel = await connection.channel()
        try:
            declared = await channel.declare_queue(queue, passive=True)
        except ChannelNotFoundEntity:
            return []
        stored = []
        while True:
            message = await declared.get(no_ack=False, fail=False)
            if message is None:
                break
            key, headers, _ = headers_from_table(message.headers)
            stored.append(Stored(topic, partition, len(stored), key, message.body, headers or []))
        await channel.close()  # the messages go back to the queue, in order
        return stored

    def committed(self, topic: str, partitions: int = 1, group: str | None = None) -> dict[int, int | None]:
        with self._lock:
            return {p: self._acked.get((topic, p)) for p in range(partitions)}

    def refuse_dead_letters(self, topic: str, times: int | None = None) -> None:
        with self._lock:
            self._refusals[f"{topic}.dlq"] = [times]

    def heal(self) -> None:
        with self._lock:
            self._refusals.clear()

    async def call(self, function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return await asyncio.to_thread(function, *args, **kwargs)

    def delete_queues(self) -> None:
        """Delete the queues the test made (best effort: the names are unique anyway)."""

        async def delete(connection: Any, names: list[str]) -> None:
            for name in names:
                channel = await connection.channel()
                try:
                    await channel.queue_delete(name)
                except Exception:  # noqa: BLE001
                    pass

        if self._queues:
            self._amqp(delete, list(self._queues))
