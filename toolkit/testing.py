"""Test your handlers and the whole consumer without a broker or a registry: in milliseconds.

    from toolkit import KafkaConsumer
    from toolkit.testing import InMemoryBroker, envelope

    async def test_orders_are_handled():
        broker = InMemoryBroker()
        broker.produce("orders", envelope("orders", 1, {"orderId": "A-1", "amount": 12.5}))
        consumer = KafkaConsumer(group_id="orders-service", transport=broker.transport(),
                                 registry=LocalFolderRegistry("schemas"), stop_when_idle=True)
        consumer.register_handler("orders", OrderCreatedHandler(FakeOrderService()))
        await consumer.start()          # returns once every record is handled and committed
        assert broker.committed("orders-service", "orders") == 1
        assert broker.records("orders.dlq") == []

:class:`InMemoryBroker` implements the consumer's transport protocol
(:mod:`toolkit.consumer.transport`): partitions, consumer groups with committed offsets and cooperative
rebalances between the group's consumers, pause/resume, dead-letter topics, and faults to inject (refused
produces, failed commits, a member losing its partitions). The engine is the same code that runs on Kafka;
the project's behaviour tests run on both. :class:`InMemoryRegistry` implements
:class:`~toolkit.registry.SchemaRegistry`. Neither subclasses a real client.

Everything here runs on the event loop of the test; nothing is thread-safe.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
import zlib
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from toolkit import _args
from toolkit.consumer.deadletter import DeadLetterRecord
from toolkit.consumer.transport import Assignment, FetchState, PlainRecord, Position, TransportEvents, TransportObserver
from toolkit.errors import (
    BrokerUnavailable,
    InvalidArgument,
    InvalidArgumentType,
    RegistryRejected,
    RegistryUnavailable,
    SchemaNotFound,
)
from toolkit.layout import SchemaFormat
from toolkit.registry.base import CompatibilityResult, RegisteredSchema, SchemaById, same_references, same_schema

Headers = list[tuple[str, bytes | None]]


def envelope(
    schema_name: str,
    version: int | str,
    body: Any,
    *,
    message_type: str | None = None,
    message_id: str | None = None,
    correlation_id: str | None = None,
    producer: str = "tests",
) -> bytes:
    """The bytes of a JSON envelope ``{header, body}`` with a valid header (new ids unless given).

    Raises:
        InvalidArgument: a header field is not a string (``version``: a positive integer), ``body`` not JSON.
    """
    _args.text("schema_name", schema_name, empty=False)
    if isinstance(version, bool) or not isinstance(version, int | str) or not str(version).isdigit():
        raise InvalidArgumentType(f"version: expected a positive integer, got {version!r}"[:120], argument="version")
    for name, given in (("message_type", message_type), ("message_id", message_id), ("correlation_id", correlation_id)):
        if given is not None:
            _args.text(name, given, empty=False)
    _args.text("producer", producer, empty=False)
    header = {
        "messageType": message_type or f"{schema_name}.v{version}",
        "schemaName": schema_name,
        "schemaVersion": str(version),
        "correlationId": correlation_id or str(uuid.uuid4()),
        "messageId": message_id or str(uuid.uuid4()),
        "timestamp": datetime.now(UTC).isoformat(timespec="milliseconds"),
        "producer": producer,
    }
    try:
        return json.dumps({"header": header, "body": body}, separators=(",", ":"), allow_nan=False).encode()
    except (TypeError, ValueError) as exc:
        raise InvalidArgument(f"body: not a JSON value ({exc})"[:200], argument="body") from None


class InMemoryRecord(PlainRecord):
    """A stored record; the accessors are those of ``confluent_kafka.Message`` (the engine's
    :class:`~toolkit.consumer.transport.Record`); its timestamp is the create time the producer set."""

    __slots__ = ()

    def __init__(
        self,
        topic: str,
        partition: int,
        offset: int,
        key: bytes | None,
        value: bytes | None,
        headers: Headers | None,
        timestamp: int,
    ) -> None:
        self._topic, self._partition, self._offset = topic, partition, offset
        self._key, self._value, self._headers, self._timestamp = key, value, headers, timestamp

    def json(self) -> Any:
        """The value parsed as JSON (None for a tombstone)."""
        return None if self._value is None else json.loads(self._value)

    def __repr__(self) -> str:
        return f"InMemoryRecord({self._topic}[{self._partition}]@{self._offset}, {len(self._value or b'')} bytes)"


@dataclass
class _Topic:
    partitions: list[list[InMemoryRecord]]
    max_message_bytes: int


@dataclass
class _Group:
    members: list[InMemoryTransport] = field(default_factory=list)
    committed: dict[tuple[str, int], int] = field(default_factory=dict)
    owner: dict[tuple[str, int], InMemoryTransport] = field(default_factory=dict)


class InMemoryBroker:
    """Topics, partitions and consumer groups in memory.

    Args:
        partitions: the partition count of topics created implicitly (by :meth:`produce`).
        max_message_bytes: the default largest value a topic accepts (Kafka's default is ~1 MiB).
    """

    def __init__(self, *, partitions: int = 1, max_message_bytes: int = 1_048_588) -> None:
        _args.integer("partitions", partitions, low=1, high=10_000)
        _args.integer("max_message_bytes", max_message_bytes, low=1)
        self._topics: dict[str, _Topic] = {}
        self._groups: dict[str, _Group] = {}
        self._default_partitions = partitions
        self._max_message_bytes = max_message_bytes
        self._refusals: list[tuple[Callable[[str], bool], str, list[int | None]]] = []
        self._commit_failures = 0
        self._round_robin = 0
        self.produced: Counter[str] = Counter()
        """Records stored, by topic."""

    # -- topics and records ----------------------------------------------------------------------------
    def create_topic(self, name: str, partitions: int | None = None, *, max_message_bytes: int | None = None) -> None:
        """Create ``name`` (a no-op when it exists).

        Raises:
            InvalidArgument: an empty name, or counts that are not positive integers.
        """
        _args.text("name", name, empty=False)
        if partitions is not None:
            _args.integer("partitions", partitions, low=1, high=10_000)
        if max_message_bytes is not None:
            _args.integer("max_message_bytes", max_message_bytes, low=1)
        if name not in self._topics:
            count = partitions or self._default_partitions
            self._topics[name] = _Topic([[] for _ in range(count)], max_message_bytes or self._max_message_bytes)

    @property
    def topics(self) -> list[str]:
        return sorted(self._topics)

    def produce(
        self,
        topic: str,
        value: bytes | None,
        key: bytes | None = None,
        *,
        headers: Headers | None = None,
        partition: int | None = None,
        timestamp_ms: int | None = None,
    ) -> InMemoryRecord:
        """Append a record (creating the topic); the partition is ``partition``, else the key's hash, else
        round robin.

        Raises:
            BrokerUnavailable: a fault set with :meth:`refuse` applies, or the value is over the topic's
                ``max_message_bytes`` (as Kafka's MSG_SIZE_TOO_LARGE).
            InvalidArgument: ``value``/``key`` not bytes (or None), headers not ``(str, bytes | None)`` pairs.
        """
        self.create_topic(topic)
        value = None if value is None else _args.bytes_like("value", value)
        key = None if key is None else _args.bytes_like("key", key)
        if headers is not None:
            if not isinstance(headers, list | tuple) or not all(
                isinstance(h, tuple)
                and len(h) == 2
                and isinstance(h[0], str)
                and (h[1] is None or isinstance(h[1], bytes))
                for h in headers
            ):
                raise InvalidArgumentType("headers: expected a list of (str, bytes or None) pairs", argument="headers")
        if partition is not None:
            _args.integer("partition", partition, low=0)
        if timestamp_ms is not None:
            _args.integer("timestamp_ms", timestamp_ms, low=0)
        stored = self._topics[topic]
        for matches, reason, times in self._refusals:
            if matches(topic) and (times[0] is None or times[0] > 0):
                if times[0] is not None:
                    times[0] -= 1
                raise BrokerUnavailable(f"produce to {topic} refused: {reason}")
        if value is not None and len(value) > stored.max_message_bytes:
            raise BrokerUnavailable(
                f"produce to {topic} refused: MSG_SIZE_TOO_LARGE: {len(value)} bytes over the "
                f"topic's max.message.bytes {stored.max_message_bytes}"
            )
        count = len(stored.partitions)
        if partition is None:
            if key is not None:
                partition = zlib.crc32(key) % count
            else:
                partition, self._round_robin = self._round_robin % count, self._round_robin + 1
        if partition >= count:
            raise InvalidArgument(
                f"partition: {topic} has partitions 0..{count - 1}, not {partition}", argument="partition"
            )
        log = stored.partitions[partition]
        ts = timestamp_ms if timestamp_ms is not None else int(datetime.now(UTC).timestamp() * 1000)
        # No headers read back as None, not [], as from librdkafka
        record = InMemoryRecord(topic, partition, len(log), key, value, list(headers) if headers else None, ts)
        log.append(record)
        self.produced[topic] += 1
        return record

    def records(self, topic: str) -> list[InMemoryRecord]:
        """Every record of ``topic`` (none when it does not exist), by partition then offset."""
        _args.text("topic", topic)
        stored = self._topics.get(topic)
        return [] if stored is None else [record for log in stored.partitions for record in log]

    def end_offset(self, topic: str, partition: int = 0) -> int:
        """The offset the next record of the partition will get (0 when the topic does not exist)."""
        _args.text("topic", topic)
        _args.integer("partition", partition, low=0)
        stored = self._topics.get(topic)
        return 0 if stored is None or partition >= len(stored.partitions) else len(stored.partitions[partition])

    def committed(self, group_id: str, topic: str, partition: int = 0) -> int | None:
        """The group's committed offset (the next record to read), None when nothing was committed."""
        _args.text("group_id", group_id)
        _args.text("topic", topic)
        _args.integer("partition", partition, low=0)
        group = self._groups.get(group_id)
        return None if group is None else group.committed.get((topic, partition))

    # -- faults ------------------------------------------------------------------------------------------
    def refuse(
        self, topic: str | Callable[[str], bool], reason: str = "broker unavailable", *, times: int | None = None
    ) -> None:
        """Refuse produces to ``topic`` (a name or a predicate), ``times`` times or until :meth:`heal`."""
        if not callable(topic):
            _args.text("topic", topic, empty=False)
        _args.text("reason", reason)
        if times is not None:
            _args.integer("times", times, low=1)
        matches = topic if callable(topic) else (lambda name, wanted=topic: name == wanted)
        self._refusals.append((matches, reason, [times]))

    def fail_commits(self, times: int = 1) -> None:
        """The next ``times`` commits fail (the engine commits again at the next interval)."""
        _args.integer("times", times, low=1)
        self._commit_failures += times

    def heal(self) -> None:
        """Forget every injected fault."""
        self._refusals.clear()
        self._commit_failures = 0

    # -- consumers ---------------------------------------------------------------------------------------
    def transport(self, group_id: str | None = None, *, poll_interval_s: float = 0.001) -> InMemoryTransport:
        """A transport for one consumer of ``group_id`` (the consumer's own group_id when None): pass it as
        ``KafkaConsumer(transport=...)``. Several transports of one group share its partitions. Dead letters
        are limited by the consumer's ``dlq_max_message_bytes``, as on Kafka."""
        if group_id is not None:
            _args.text("group_id", group_id, empty=False)
        _args.number("poll_interval_s", poll_interval_s, positive=True)
        return InMemoryTransport(self, group_id, poll_interval_s=poll_interval_s)

    def _group(self, group_id: str) -> _Group:
        return self._groups.setdefault(group_id, _Group())

    def _target(self, member: InMemoryTransport) -> set[tuple[str, int]]:
        """The partitions ``member`` should own: each subscribed partition goes to one member of the group
        (round robin over the members subscribed to its topic, in joining order)."""
        group = self._group(member.group_id)
        target: set[tuple[str, int]] = set()
        for topic in sorted({t for m in group.members for t in m.topics}):
            stored = self._topics.get(topic)
            subscribed = [m for m in group.members if topic in m.topics]
            if stored is None or not subscribed:
                continue
            for partition in range(len(stored.partitions)):
                if subscribed[partition % len(subscribed)] is member:
                    target.add((topic, partition))
        return target

    def _commit(self, group_id: str, positions: list[tuple[str, int, int]]) -> None:
        if self._commit_failures:
            self._commit_failures -= 1
            raise BrokerUnavailable("commit failed: injected fault (InMemoryBroker.fail_commits)")
        committed = self._group(group_id).committed
        for topic, partition, offset in positions:
            committed[(topic, partition)] = offset


class InMemoryTransport:
    """One consumer's side of an :class:`InMemoryBroker` (the :class:`~toolkit.consumer.transport.Transport`
    protocol). Fetching runs as a task on the consumer's event loop."""

    def __init__(self, broker: InMemoryBroker, group_id: str | None, *, poll_interval_s: float) -> None:
        self.broker = broker
        self._group_id = group_id
        self._poll_interval_s = poll_interval_s
        self.topics: list[str] = []
        self._events: TransportEvents | None = None
        self._owned: dict[tuple[str, int], int] = {}  # partition -> generation
        self._position: dict[tuple[str, int], int] = {}
        self._eof_sent: set[tuple[str, int]] = set()
        self._paused: set[tuple[str, int]] = set()
        self._fetching = True
        self._commit_failed = False
        self._task: asyncio.Task[None] | None = None
        self._closed: Future[None] | None = None
        self._lose: bool = False
        self._generation = 0
        self._max_poll_records = 500
        self._max_in_flight = 1000
        self._observers: list[TransportObserver] = []
        self._last_poll: float | None = None
        self._window_full = False

    @property
    def group_id(self) -> str:
        if self._group_id is None:
            raise RuntimeError("the transport has no group: pass group_id to the consumer or to transport()")
        return self._group_id

    @property
    def assignment(self) -> list[tuple[str, int]]:
        """The partitions this consumer owns now."""
        return sorted(self._owned)

    def lose_partitions(self) -> None:
        """Fault: the member loses its partitions as after a session timeout (no commit; they go to
        the other members, or back to it at the next reconciliation)."""
        self._lose = True

    # -- Transport -------------------------------------------------------------------------------------
    def connect(self, timeout_s: float, topics: Sequence[str] = ()) -> set[str]:
        return set(self.broker.topics)

    def start(
        self,
        topics: list[str],
        group_id: str,
        events: TransportEvents,
        loop: asyncio.AbstractEventLoop,
        *,
        max_poll_records: int,
        max_in_flight: int,
        dlq_max_message_bytes: int,
    ) -> InMemoryDeadLetterSink:
        if self._group_id is None:
            self._group_id = group_id
        # A transport may serve several runs of a consumer, one after the other: nothing of the last one
        # carries over (the group's committed offsets do, as on Kafka).
        self._closed, self._fetching, self._lose, self._commit_failed = None, True, False, False
        self._owned.clear()
        self._position.clear()
        self._eof_sent.clear()
        self._paused.clear()
        self.topics = list(topics)
        self._events = events
        self._max_poll_records, self._max_in_flight = max_poll_records, max_in_flight
        self.broker._group(self.group_id).members.append(self)
        self._task = loop.create_task(self._run())
        return InMemoryDeadLetterSink(self.broker, dlq_max_message_bytes)

    def commit(self, positions: list[Position], *, sync: bool = False) -> Future[None]:
        done: Future[None] = Future()
        current = [
            (p.topic, p.partition, p.offset)
            for p in positions
            if self._owned.get((p.topic, p.partition)) == p.generation
        ]
        started = time.monotonic()
        try:
            if current:
                self.broker._commit(self.group_id, current)
        except BrokerUnavailable as exc:
            self._commit_failed = True
            done.set_exception(exc)
        else:
            done.set_result(None)
        if current:
            for observer in self._observers:
                observer.on_commit(time.monotonic() - started, not done.exception())
        return done

    def take_commit_failure(self) -> bool:
        failed, self._commit_failed = self._commit_failed, False
        return failed

    def pause(self, assignments: list[Assignment]) -> None:
        self._paused.update(
            (a.topic, a.partition) for a in assignments if self._owned.get((a.topic, a.partition)) == a.generation
        )

    def resume(self, assignments: list[Assignment]) -> None:
        self._paused.difference_update(
            (a.topic, a.partition) for a in assignments if self._owned.get((a.topic, a.partition)) == a.generation
        )

    def stop_fetching(self) -> None:
        self._fetching = False

    # -- ObservableTransport (metrics and health checks) -----------------------------------------------
    def add_observer(self, observer: TransportObserver, *, lag_interval_s: float = 5.0) -> None:
        if observer not in self._observers:
            self._observers.append(observer)

    def fetch_state(self) -> FetchState:
        alive = self._task is not None and not self._task.done()
        return FetchState(alive, self._last_poll, self._window_full)

    def lag(self) -> dict[tuple[str, int], int]:
        """Each owned partition's end offset minus the group's committed offset (0 when none)."""
        group = self.broker._group(self.group_id)
        return {tp: self.broker.end_offset(*tp) - group.committed.get(tp, 0) for tp in self._owned}

    def close(self) -> Future[None]:
        self._closed = Future()
        if self._task is None or self._task.done():
            self._closed.set_result(None)
        return self._closed

    # -- the fetch task ----------------------------------------------------------------------------------
    async def _run(self) -> None:
        events = self._events
        assert events is not None
        group = self.broker._group(self.group_id)
        try:
            while self._closed is None:
                self._last_poll = time.monotonic()
                await self._reconcile(group, events)
                fetched = self._fetch(events) if self._fetching else False
                await asyncio.sleep(0 if fetched else self._poll_interval_s)
            await self._give_up(group, events, sorted(self._owned), lost=False)
        finally:
            if self in group.members:
                group.members.remove(self)
            for tp, owner in list(group.owner.items()):
                if owner is self:
                    del group.owner[tp]
            if self._closed is not None and not self._closed.done():
                self._closed.set_result(None)

    async def _reconcile(self, group: _Group, events: TransportEvents) -> None:
        """Cooperative rebalancing: give up what another member should own, then take what is ours and
        free (a partition is never owned by two members at once)."""
        if self._lose:
            self._lose = False
            await self._give_up(group, events, sorted(self._owned), lost=True)
            return
        target = self.broker._target(self)
        revoked = sorted(tp for tp in self._owned if tp not in target)
        if revoked:
            await self._give_up(group, events, revoked, lost=False)
        gained = [tp for tp in sorted(target) if tp not in self._owned and tp not in group.owner]
        if gained:
            assigned = []
            for tp in gained:
                self._generation += 1
                group.owner[tp] = self
                self._owned[tp] = self._generation
                self._position[tp] = group.committed.get(tp, 0)
                self._eof_sent.discard(tp)
                self._paused.discard(tp)
                assigned.append(Assignment(tp[0], tp[1], self._generation))
            events.on_assign(assigned)

    async def _give_up(self, group: _Group, events: TransportEvents, tps: list[tuple[str, int]], lost: bool) -> None:
        if not tps:
            return
        if lost:  # as on Kafka: gone at once (another member may own them already), nothing committed for them
            for tp in tps:
                self._owned.pop(tp, None)
                self._paused.discard(tp)
                if group.owner.get(tp) is self:
                    del group.owner[tp]
            await events.release(tps, lost)
            return
        positions = await events.release(tps, lost)
        self.commit(positions)
        for tp in tps:
            self._owned.pop(tp, None)
            self._paused.discard(tp)
            if group.owner.get(tp) is self:
                del group.owner[tp]

    def _fetch(self, events: TransportEvents) -> bool:
        free = min(self._max_poll_records, self._max_in_flight - events.in_flight())
        self._window_full = free <= 0
        if free <= 0:
            return False
        records: list[InMemoryRecord] = []
        ends: list[tuple[str, int]] = []
        for tp in sorted(self._owned):
            if tp in self._paused:
                continue
            stored = self.broker._topics.get(tp[0])
            if stored is None:
                continue
            log = stored.partitions[tp[1]]
            start = self._position[tp]
            taken = log[start : start + free - len(records)]
            if taken:
                records.extend(taken)
                self._position[tp] = start + len(taken)
                self._eof_sent.discard(tp)
            if self._position[tp] >= len(log) and tp not in self._eof_sent:
                self._eof_sent.add(tp)
                ends.append(tp)
            if len(records) >= free:
                break
        if records or ends:
            events.on_batch(list(records), ends)  # type: ignore[arg-type]
        return bool(records)


class InMemoryDeadLetterSink:
    """Dead letters into the broker's topics (the :class:`~toolkit.consumer.transport.DeadLetterSink`)."""

    def __init__(self, broker: InMemoryBroker, max_message_bytes: int) -> None:
        self.broker = broker
        self.max_message_bytes = max_message_bytes

    def knows(self, topic: str) -> bool:
        return topic in self.broker._topics

    def ensure_topic(self, topic: str) -> None:
        self.broker.create_topic(topic, max_message_bytes=self.max_message_bytes)

    def send(self, record: DeadLetterRecord, *, alone: bool = False) -> asyncio.Future[None]:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        try:
            self.broker.produce(record.topic, record.value, record.key, headers=record.headers)
        except BrokerUnavailable as exc:
            future.set_exception(exc)
        else:
            future.set_result(None)
        return future

    def close(self, timeout_s: float = 10.0) -> int:
        return 0


class InMemoryRegistry:
    """A schema registry in memory (the :class:`~toolkit.registry.SchemaRegistry` protocol): versions numbered
        from 1, a schema identical to a registered version registers nothing and answers that version, ids
        unique across subjects (``share_id`` registers one under another subject with the same id, as Confluent
    does for identical schemas).

        Args:
            incompatible: ``(registered text, new text) -> reason or None``: what this registry refuses as
                incompatible (nothing, by default).
    """

    def __init__(self, incompatible: Callable[[str, str], str | None] = lambda old, new: None) -> None:
        if not callable(incompatible):
            raise InvalidArgumentType(
                "incompatible: expected a function (old text, new text) -> reason or None", argument="incompatible"
            )
        self.store: dict[str, list[RegisteredSchema]] = {}
        self.incompatible = incompatible
        self.calls: Counter[str] = Counter()
        """Calls by method name, for tests of caching."""
        self.down = False
        """Set it to make every call raise RegistryUnavailable (an outage)."""
        self._next_id = 1

    def _count(self, name: str) -> None:
        self.calls[name] += 1
        if self.down:
            raise RegistryUnavailable("in-memory registry is down", attempts=1)

    def _versions_of(self, subject: str) -> list[RegisteredSchema]:
        _args.text("subject", subject)
        if subject not in self.store:
            raise SchemaNotFound(f"subject {subject!r} not found", subject=subject)
        return self.store[subject]

    def get(self, subject: str, version: int) -> RegisteredSchema:
        self._count("get")
        _args.subject_version(subject, version)
        for schema in self._versions_of(subject):
            if schema.version == version:
                return schema
        raise SchemaNotFound(f"subject {subject!r} has no version {version}", subject=subject, version=version)

    def latest(self, subject: str) -> RegisteredSchema:
        self._count("latest")
        return self._versions_of(subject)[-1]

    supports_schema_ids = True

    def get_by_id(self, schema_id: int) -> SchemaById:
        """The schema of ``schema_id`` and every (subject, version) registered with it."""
        self._count("get_by_id")
        _args.integer("schema_id", schema_id, low=0)
        found = [schema for versions in self.store.values() for schema in versions if schema.schema_id == schema_id]
        if not found:
            raise SchemaNotFound(f"schema id {schema_id} not found")
        return SchemaById(
            schema_id,
            found[0].format,
            found[0].text,
            tuple((schema.subject, schema.version) for schema in found),
            found[0].references,
        )

    def share_id(self, subject: str, schema_id: int) -> RegisteredSchema:
        """Register the schema of ``schema_id`` under ``subject`` too, keeping its id (as Confluent does: one id
        per schema content, whatever the subjects)."""
        original = self.get_by_id(schema_id)
        existing = self.store.setdefault(subject, [])
        schema = RegisteredSchema(subject, len(existing) + 1, original.format, original.text, schema_id=schema_id)
        existing.append(schema)
        return schema

    def subjects(self) -> list[str]:
        self._count("subjects")
        return list(self.store)

    def versions(self, subject: str) -> list[int]:
        self._count("versions")
        return [schema.version for schema in self._versions_of(subject)]

    def register(
        self, subject: str, text: str, schema_format: SchemaFormat, *, references: Sequence[Mapping[str, Any]] = ()
    ) -> RegisteredSchema:
        self._count("register")
        _args.text("subject", subject, empty=False)
        _args.text("text", text)
        schema_format = SchemaFormat(schema_format)
        existing = self.store.setdefault(subject, [])
        for schema in existing:
            if same_schema(schema.text, text) and same_references(schema.references, references):
                return schema
        if existing and (reason := self.incompatible(existing[-1].text, text)):
            raise RegistryRejected(f"incompatible: {reason}", reasons=[reason], subject=subject)
        schema = RegisteredSchema(
            subject,
            len(existing) + 1,
            schema_format,
            text,
            schema_id=self._next_id,
            references=tuple(dict(ref) for ref in references),
        )
        self._next_id += 1
        existing.append(schema)
        return schema

    def check_compatibility(
        self,
        subject: str,
        text: str,
        schema_format: SchemaFormat,
        version: int | str = "latest",
        *,
        references: Sequence[Mapping[str, Any]] = (),
    ) -> CompatibilityResult:
        self._count("check_compatibility")
        _args.text("subject", subject, empty=False)
        _args.text("text", text)
        if not self.store.get(subject):
            return CompatibilityResult(True)
        against = self.latest(subject) if version == "latest" else self.get(subject, int(version))
        reason = self.incompatible(against.text, text)
        return CompatibilityResult(reason is None, (reason,) if reason else ())

    def close(self) -> None:
        pass


__all__ = [
    "InMemoryBroker",
    "InMemoryDeadLetterSink",
    "InMemoryRecord",
    "InMemoryRegistry",
    "InMemoryTransport",
    "envelope",
]
