"""What the engine needs from a broker: the transport protocols.

The engine (:mod:`toolkit.consumer.engine`) runs lanes, outcomes, commits, rebalances and dead letters; it
reaches the broker only through a :class:`Transport` (fetching, committing, pausing) and the
:class:`DeadLetterSink` it provides. Three implementations ship: librdkafka's
(:class:`toolkit.consumer.kafka_io.KafkaTransport`), RabbitMQ's through aio-pika
(:class:`toolkit.consumer.amqp.RabbitTransport`) and an in-memory one (:class:`toolkit.testing.InMemoryBroker`),
so the engine's behaviour can be tested without a broker and the same tests run against both brokers.

Threads (docs/threads.md): the engine calls every method here from the event loop. A transport calls the
:class:`TransportEvents` methods on the event loop too (a thread of its own hands them over with
``loop.call_soon_threadsafe``), except :meth:`TransportEvents.in_flight`, which may be read from any thread.

Metrics and health checks read a transport through :class:`ObservableTransport`, which the three shipped
transports implement (optional for others: the metrics middleware checks for it).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from toolkit.consumer.deadletter import DeadLetterRecord


@runtime_checkable
class Record(Protocol):
    """One fetched record, as the engine reads it: the shape of ``confluent_kafka.Message``, so librdkafka's
    records pass through without a copy."""

    def topic(self) -> str: ...

    def partition(self) -> int: ...

    def offset(self) -> int: ...

    def key(self) -> bytes | None: ...

    def value(self) -> bytes | None: ...

    def headers(self) -> list[tuple[str, bytes | None]] | None: ...

    def timestamp(self) -> tuple[int, int]:
        """``(type, epoch milliseconds)``; type 0 means the record has none."""
        ...

    # Optional: ``source_details() -> dict``, the broker's own coordinates of the record, which its dead
    # letter keeps in ``source`` beside the fields above (RabbitMQ's ``{"amqp": {...}}``).


class PlainRecord:
    """A record held in Python attributes, with :class:`Record`'s accessors: the base of the in-memory and the
    AMQP transports' records (librdkafka's are its own C objects). ``timestamp()`` says "create time"; a
    transport whose records may have none overrides it."""

    __slots__ = ("_topic", "_partition", "_offset", "_key", "_value", "_headers", "_timestamp")

    _topic: str
    _partition: int
    _offset: int
    _key: bytes | None
    _value: bytes | None
    _headers: list[tuple[str, bytes | None]] | None
    _timestamp: int | None

    def topic(self) -> str:
        return self._topic

    def partition(self) -> int:
        return self._partition

    def offset(self) -> int:
        return self._offset

    def key(self) -> bytes | None:
        return self._key

    def value(self) -> bytes | None:
        return self._value

    def headers(self) -> list[tuple[str, bytes | None]] | None:
        return list(self._headers) if self._headers is not None else None

    def timestamp(self) -> tuple[int, int]:
        return (0, 0) if self._timestamp is None else (1, self._timestamp)


@dataclass(frozen=True, slots=True)
class Assignment:
    """A partition given to this consumer. ``generation`` tells one assignment of it from the next: a
    command queued for an earlier one (pause, commit) is dropped instead of reaching the new one."""

    topic: str
    partition: int
    generation: int


@dataclass(frozen=True, slots=True)
class Position:
    """A committable offset of one assignment: the next record to read after everything done."""

    topic: str
    partition: int
    offset: int
    generation: int


End = tuple[str, int] | tuple[str, int, int]
"""A partition whose end was reached: ``(topic, partition)``, or ``(topic, partition, offset)`` when the
transport knows the offset after the end (librdkafka's: past transaction markers and aborted records, which
are never handed out)."""


class TransportEvents(Protocol):
    """What a transport tells the engine. Called on the event loop."""

    def on_batch(self, records: list[Record], ends: Sequence[End]) -> None:
        """Records fetched, in offset order per partition; ``ends``: partitions whose end was reached
        after their last record of this batch (for ``stop_when_idle``; with an offset, no record below it
        is handed out any more, so the commit may move up to it once every record is done). An
        :class:`AcknowledgingTransport` calls it with no records when it delivered nothing for a while and
        holds nothing: drained, even before any partition was seen."""

    def on_assign(self, assigned: list[Assignment]) -> None:
        """Partitions given to this consumer (before any of their records is handed over)."""

    def release(self, partitions: list[tuple[str, int]], lost: bool) -> Awaitable[list[Position]]:
        """Partitions taken away: the engine drains them and answers the offsets to commit before they
        go (none when ``lost``: another member may own them already)."""
        ...

    def on_fatal(self, reason: str) -> None:
        """The client cannot go on (fenced, authentication refused ...): the consumer stops."""

    def in_flight(self) -> int:
        """Records held by the engine (fetched, not finished). Read from any thread."""
        ...


class Transport(Protocol):
    """The consumer side of a broker, owned by one engine."""

    def connect(self, timeout_s: float, topics: Sequence[str] = ()) -> set[str]:
        """Wait (blocking) until the broker answers; the names of the topics that exist (of ``topics``, the
        ones the consumer will subscribe, at least: a broker that cannot list its topics checks those).

        Raises:
            BrokerUnavailable: no answer within ``timeout_s``. ConfigError: the client configuration
                is refused.
        """
        ...

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
    ) -> DeadLetterSink:
        """Join ``group_id``, subscribe to ``topics`` and start fetching; the dead-letter sink to use, which
        sends records of up to ``dlq_max_message_bytes`` (the consumer's option of that name) and creates
        dead-letter topics that take them.

        Raises:
            ConfigError: the client configuration is refused.
        """
        ...

    def commit(self, positions: list[Position], *, sync: bool = False) -> Future[None]:
        """Commit ``positions`` (those of an assignment that is no longer current are dropped); resolves
        once sent (``sync``: once the broker answered). A failure is also reported by
        :meth:`take_commit_failure`."""
        ...

    def take_commit_failure(self) -> bool:
        """True (once) when a commit failed since the last call: the engine then commits every watermark
        again, not only those that moved."""
        ...

    def pause(self, assignments: list[Assignment]) -> None:
        """Stop fetching these partitions (current assignments only)."""

    def resume(self, assignments: list[Assignment]) -> None:
        """Fetch these partitions again (current assignments only)."""

    def stop_fetching(self) -> None:
        """Hand over no more records (shutdown). The engine then drains and commits; a rebalance that other
        members start meanwhile is served by :meth:`close` (librdkafka's leave-group revokes everything)."""

    def close(self) -> Future[None]:
        """Leave the group and release the client; resolves when done."""
        ...


class DeadLetterSink(Protocol):
    """Where dead letters go (the source broker, a producer of its own)."""

    max_message_bytes: int
    """The largest record it sends: a dead letter over it is shortened (docs/dead-letters.md)."""

    def knows(self, topic: str) -> bool:
        """True once ``topic`` is known to exist."""
        ...

    def ensure_topic(self, topic: str) -> None:
        """Create ``topic`` unless it exists (blocking: the engine calls it in an executor).

        Raises:
            BrokerUnavailable: it could not be created and does not exist.
        """

    def send(self, record: DeadLetterRecord, *, alone: bool = False) -> asyncio.Future[None]:
        """Produce ``record``; the future resolves on the broker's acknowledgement, fails with
        BrokerUnavailable when refused. ``alone``: a resend, in a batch of its own."""
        ...

    def close(self, timeout_s: float = 10.0) -> int:
        """Flush (blocking); the number of dead letters still not acknowledged."""
        ...


@runtime_checkable
class AcknowledgingTransport(Protocol):
    """A transport whose records are settled one by one instead of committed by offset (Kafka share groups:
    :class:`toolkit.consumer.share.ShareTransport`). The engine finds it with ``isinstance`` and then keeps no
    offsets: a record done is accepted, one to try again (or abandoned) is released for the broker to deliver
    again, and a dead-lettered one is accepted once its dead letter is acknowledged. It never rejects: a
    record the broker drops would be kept nowhere. Its :meth:`Transport.commit` sends the pending
    acknowledgements (``positions`` is empty)."""

    delivery_limit: int
    """Deliveries the broker makes of a record before it gives up on it (its last chance to be dead-lettered
    by us is that delivery)."""

    def delivery_count(self, record: Record) -> int:
        """How many times the broker delivered ``record`` (1 on the first delivery)."""
        ...

    def lock_deadline(self, record: Record) -> float:
        """``time.monotonic()`` after which ``record`` may no longer be held by this consumer (its acquisition
        lock may have expired, less a margin): the engine releases it rather than wait past it (except at its
        last delivery: it is handled then). Past already for a record the transport no longer holds."""
        ...

    def acknowledge(self, record: Record, accept: bool) -> None:
        """Accept ``record`` (done: never delivered again) or release it (delivered again, maybe to another
        consumer). Called once per delivery, on the loop."""


@dataclass(frozen=True, slots=True)
class FetchState:
    """How a transport's fetching is doing, for health checks and metrics."""

    alive: bool
    """The fetcher (librdkafka's poll thread, the in-memory fetch task) runs."""
    last_poll: float | None
    """``time.monotonic()`` when it last went round its loop; None before the first round."""
    window_full: bool
    """Fetching is held because the in-flight window is full (backpressure)."""


class TransportObserver(Protocol):
    """Told about commits as they complete; called on the transport's own thread (keep it quick)."""

    def on_commit(self, seconds: float, ok: bool) -> None:
        """A commit request took ``seconds`` until the broker answered (or it failed)."""

    # Optional (an observer without it is not told): ``on_recreated()``, the Kafka consumer was recreated by
    # the rejoin watchdog (out of its group and not getting back in: docs/group-membership.md).


@runtime_checkable
class ObservableTransport(Protocol):
    """What metrics and health checks read from a transport (on the event loop)."""

    def add_observer(self, observer: TransportObserver, *, lag_interval_s: float = 5.0) -> None:
        """Report commits to ``observer``, and measure the lag every ``lag_interval_s``. Call it before
        :meth:`Transport.start`."""

    def fetch_state(self) -> FetchState:
        """Whether the fetcher runs and when it last polled."""
        ...

    def lag(self) -> dict[tuple[str, int], int]:
        """Records between each assigned partition's committed offset and its end, as last measured;
        partitions not measured yet (nothing committed) are left out."""
        ...


__all__ = [
    "AcknowledgingTransport",
    "Assignment",
    "DeadLetterSink",
    "FetchState",
    "ObservableTransport",
    "PlainRecord",
    "Position",
    "Record",
    "Transport",
    "TransportEvents",
    "TransportObserver",
]
