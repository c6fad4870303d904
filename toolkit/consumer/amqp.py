"""RabbitMQ (AMQP 0-9-1) under the same engine: :class:`RabbitTransport` and its dead-letter sink.

The engine was written for Kafka's partitions and offsets; this is how AMQP maps onto them
(docs/contracts.md, "RabbitMQ"):

- Each consumed queue is one partition: topic = the queue name, partition 0. A topic given N partitions
  (``partitions={"orders": 4}``) is the queues ``orders.0`` .. ``orders.3``, each one partition (fed by a
  consistent-hash exchange, or by the producer choosing the queue).
- A record's offset is its delivery tag minus one: the tags of a channel count up from 1 in delivery order,
  so offsets count up from 0 as on a new Kafka partition, and the engine's contiguous-done watermark works
  unchanged. Each queue has a channel of its own: a tag numbers deliveries of one channel, and
  ``basic.ack(multiple=True)`` acknowledges all of them up to it, whatever queue they came from.
- The engine's commit of watermark W is ``basic.ack(delivery_tag=W, multiple=True)``: every delivery up to
  the last done one, none after. Only a watermark above the last acknowledged one is sent (acknowledging a
  tag twice is a channel error).
- Prefetch (``basic.qos``) bounds the deliveries not yet acknowledged, per queue: those held by the engine
  and those done since the last commit. Deliveries beyond the in-flight window or of a paused queue wait
  here (bounded by the prefetch), so a pause costs no round trip and loses nothing.
- A channel that closes (connection lost, broker restart, a channel error) loses its assignment: the engine
  drains it without committing (``release(lost=True)``) and the broker redelivers what was not acknowledged.
  The robust connection reconnects and reopens the channel; consuming starts again there as a new
  assignment (a new generation: commands for the old one are dropped, delivery tags restart at 1).
- A consumer the broker cancels (``basic.cancel``: the queue was deleted, a quorum queue lost its members) is
  handled as a lost channel too: the channel is closed here, so the broker requeues every delivery it holds
  unacknowledged, and the robust channel reopens. Consuming again on the same channel would not do: its
  tags go on counting (offsets would not restart), the deliveries of the cancelled consumer would stay
  unacknowledged there, and the next ``basic.ack(multiple=True)`` would acknowledge them with the new ones,
  including records the engine never handled.
- A queue deleted without a ``basic.cancel`` (RabbitMQ sends none to a client that does not announce
  ``consumer_cancel_notify``, and it has been seen to miss one on deletion) leaves a consumer attached to
  nothing: no delivery, no error. So each assigned queue's existence is checked every
  ``queue_check_interval_s`` (a passive ``queue.declare`` on its channel). A missing queue is reported (a
  warning naming it) and handled as a lost channel: the broker closes that channel (404), the robust channel
  reopens and declares the queue again (with ``declare_queues``; without, it is reported until someone
  declares it), and consuming starts there as a new generation.
- A record's key is the AMQP header ``epistle-key`` (AMQP has none); its headers are the message's header
  table (:func:`headers_from_table`, reversed by :func:`table_from_headers`); its timestamp the
  ``timestamp`` property. The properties and the delivery's coordinates go to the dead letter's
  ``source.amqp`` (:meth:`AmqpRecord.source_details`).
- Metrics (:class:`~toolkit.consumer.transport.ObservableTransport`): the fetch state is the consuming task's
  last round (it goes round at least every 50 ms); a queue's lag, measured every ``lag_interval_s`` once an
  observer is added, is its ready messages (a passive ``queue.declare``) plus the deliveries this consumer
  holds unacknowledged; a commit is observed as the time its ``basic.ack`` frames took to write.
- Dead letters go to the durable queue ``<queue><dlq_suffix>`` through the default exchange, published
  mandatory with publisher confirms on a connection of their own (RabbitMQ's advice: a publisher under
  flow control must not hold up the consumers' acknowledgements).

Everything here runs on the event loop (aio-pika is asyncio-native): no thread of its own. ``connect`` and
the sink's ``ensure_topic``/``close`` are called from executor threads, as the protocol says, and hand
their work to the loop.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import time
from collections import deque
from collections.abc import Mapping, Sequence
from concurrent.futures import Future
from datetime import UTC, datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

from toolkit.consumer.deadletter import DeadLetterRecord
from toolkit.consumer.transport import Assignment, FetchState, PlainRecord, Position, TransportEvents, TransportObserver
from toolkit.errors import BrokerUnavailable, ConfigError

if TYPE_CHECKING:
    from toolkit.settings import RabbitSettings

log = logging.getLogger("toolkit.consumer")

KEY_HEADER = "epistle-key"
"""The AMQP header that carries a record's key (KEY ordering, the dead letter's key)."""

QUEUE_TYPES = ("classic", "quorum")
_PROPERTIES = (
    "content_type",
    "content_encoding",
    "delivery_mode",
    "priority",
    "correlation_id",
    "reply_to",
    "expiration",
    "message_id",
    "timestamp",
    "message_type",
    "user_id",
    "app_id",
    "cluster_id",
)
_IDLE_GAP_S = 0.05  # a queue with nothing ready and no delivery for this long is at its end (stop_when_idle)

Headers = list[tuple[str, bytes | None]]


def redact(url: str) -> str:
    """``url`` with its password replaced by ``***`` (for messages and logs)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "(an unparsable URL)"
    if parts.password is None:
        return url
    netloc = f"{parts.username}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


# -- headers: an AMQP field table <-> the engine's list of (name, bytes | None) ------------------------
def _plain(value: Any) -> Any:
    """A field-table value as JSON can write it (typed values inside tables and arrays)."""
    if isinstance(value, bytes | bytearray):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def _type_of(value: Any) -> str:
    for kind, name in (
        (bool, "bool"),
        (int, "int"),
        (float, "float"),
        (Decimal, "decimal"),
        (datetime, "timestamp"),
        (dict, "table"),
        (list, "array"),
        (tuple, "array"),
    ):
        if isinstance(value, kind):
            return name
    return type(value).__name__


def headers_from_table(table: Mapping[str, Any] | None) -> tuple[bytes | None, Headers | None, dict[str, str]]:
    """The record's key, headers and typed-header names from an AMQP header table.

    Strings become their UTF-8 bytes, byte arrays their bytes, void (None) stays None; any other value
    (a number, boolean, decimal, timestamp, table or array, such as ``x-death``) becomes its JSON text and
    its AMQP type is returned in the third item (``{name: "int" | "bool" | "float" | "decimal" |
    "timestamp" | "table" | "array"}``), which :func:`table_from_headers` uses to write it back.
    ``epistle-key`` is the key, not a header. No table (or an empty one) gives None headers, as a Kafka
    record without headers has.
    """
    if not table:
        return None, None, {}
    key: bytes | None = None
    headers: Headers = []
    types: dict[str, str] = {}
    for name, value in table.items():
        if value is None:
            data: bytes | None = None
        elif isinstance(value, str):
            data = value.encode("utf-8", "surrogatepass")
        elif isinstance(value, bytes | bytearray):
            data = bytes(value)
        else:
            types[name] = _type_of(value)
            data = json.dumps(_plain(value), separators=(",", ":")).encode()
        if name == KEY_HEADER and name not in types:
            key = data
        else:
            headers.append((name, data))
    return key, headers or None, types


def _typed(kind: str, data: bytes) -> Any:
    value = json.loads(data)
    if kind == "decimal":
        return Decimal(value)
    if kind == "timestamp":
        return datetime.fromisoformat(value)
    return value


def table_from_headers(
    key: bytes | None, headers: Sequence[tuple[str, bytes | None]] | None, types: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """The AMQP header table for a key and headers: the inverse of :func:`headers_from_table`.

    Values come back byte for byte: UTF-8 text as a long string, other bytes as a byte array, None as
    void; the names in ``types`` get their AMQP type back (tables and arrays as their JSON, their
    nested byte arrays as base64 text). A name given twice keeps its last value (a table has one).
    """
    table: dict[str, Any] = {}
    for name, data in headers or ():
        if data is None:
            table[name] = None
        elif types and name in types:
            try:
                table[name] = _typed(types[name], data)
            except (ValueError, TypeError):
                table[name] = _text_or_array(data)
        else:
            table[name] = _text_or_array(data)
    if key is not None:
        table[KEY_HEADER] = _text_or_array(key)
    return table


def _text_or_array(data: bytes) -> str | bytearray:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return bytearray(data)


def _epoch_ms(value: Any) -> int | None:
    if isinstance(value, datetime):
        stamp = value if value.tzinfo else value.replace(tzinfo=UTC)
        return int(stamp.timestamp() * 1000)
    if isinstance(value, int | float):
        return int(value * 1000)
    return None


class _DropRefusals(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("error when creating transport")


class AmqpRecord(PlainRecord):
    """One delivery, as the engine reads a record (:class:`~toolkit.consumer.transport.Record`). Its
    timestamp is AMQP's timestamp property (second resolution; set by the producer, or absent)."""

    __slots__ = (
        "_types",
        "queue",
        "delivery_tag",
        "redelivered",
        "exchange",
        "routing_key",
        "properties",
        "channel",
    )

    def __init__(self, topic: str, partition: int, queue: str, message: Any) -> None:
        delivery = message.delivery
        props = message.header.properties
        self._topic, self._partition, self.queue = topic, partition, queue
        self.delivery_tag: int = delivery.delivery_tag
        self._offset = self.delivery_tag - 1
        self.redelivered: bool = bool(delivery.redelivered)
        self.exchange: str = delivery.exchange
        self.routing_key: str = delivery.routing_key
        self._value: bytes = message.body
        self.properties = props
        self.channel = message.channel
        self._key, self._headers, self._types = headers_from_table(props.headers)
        self._timestamp = _epoch_ms(props.timestamp)

    def source_details(self) -> dict[str, Any]:
        """What a dead letter keeps of the delivery besides topic, partition, offset, key, value and headers:
        ``{"amqp": {queue, exchange, routingKey, deliveryTag, redelivered, properties, headerTypes,
        xDeath}}`` (the last two only when there are any)."""
        properties: dict[str, Any] = {}
        for name in _PROPERTIES:
            value = getattr(self.properties, name, None)
            if value is not None:
                properties[name] = _plain(value)
        amqp: dict[str, Any] = {
            "queue": self.queue,
            "exchange": self.exchange,
            "routingKey": self.routing_key,
            "deliveryTag": self.delivery_tag,
            "redelivered": self.redelivered,
            "properties": properties,
        }
        if self._types:
            amqp["headerTypes"] = dict(self._types)
        death = (self.properties.headers or {}).get("x-death")
        if death is not None:
            amqp["xDeath"] = _plain(death)
        return {"amqp": amqp}

    def __repr__(self) -> str:
        return f"AmqpRecord({self.queue}#{self.delivery_tag}, {len(self._value)} bytes)"


# -- the transport --------------------------------------------------------------------------------------
class _Queue:
    """One consumed queue: its channel, the current assignment and the deliveries not handed over yet."""

    __slots__ = (
        "topic",
        "partition",
        "name",
        "channel",
        "underlay",
        "generation",
        "assigned",
        "buffer",
        "acked",
        "paused",
        "lost",
        "reopened",
        "last_delivery",
        "eof_sent",
        "probe_at",
        "checked_at",
        "delivered",
        "consumed_on",
    )

    def __init__(self, topic: str, partition: int, name: str) -> None:
        self.topic, self.partition, self.name = topic, partition, name
        self.channel: Any = None  # aio-pika's RobustChannel (reopened by the robust connection)
        self.underlay: Any = None  # the aiormq channel consumed now: tags and acks belong to it
        self.generation = 0
        self.assigned = False
        self.buffer: deque[AmqpRecord] = deque()
        self.acked = 0  # the last delivery tag acknowledged on underlay
        self.paused = False
        self.lost = False  # underlay closed: the engine must drop the assignment
        self.reopened = False  # the channel is open again: consume there as a new assignment
        self.last_delivery = 0.0
        self.eof_sent = False
        self.probe_at = 0.0
        self.checked_at = 0.0  # when the queue's existence was last checked (or seen in a passive declare)
        self.delivered = 0  # the last delivery tag received on underlay
        self.consumed_on: Any = None  # the last underlying channel consumed on (never consumed on twice)


class RabbitTransport:
    """The :class:`~toolkit.consumer.transport.Transport` over RabbitMQ with aio-pika (module docstring).

    Args:
        url: ``amqp://user:password@host:port/vhost`` (``amqps://`` for TLS); RABBITMQ_URL.
        prefetch_count: unacknowledged deliveries per queue (``basic.qos``); None is the consumer's
            ``max_in_flight``. Acknowledgements go out with the commits (every ``commit_interval_s``),
            so a queue receives at most about ``prefetch_count`` records per commit interval.
        declare_queues: declare each queue (durable) if missing; False requires them to exist.
        queue_type: ``classic`` or ``quorum``, for queues declared here (dead-letter queues included).
        single_active_consumer: declare queues with ``x-single-active-consumer``: of several consumers of
            a queue one receives at a time (the others take over when it goes), which keeps PARTITION and
            KEY ordering across processes; without it they share the queue round robin.
        partitions: topic -> number of queues (``<topic>.0`` ..) consumed as its partitions; 1 by default.
        queue_arguments: further ``x-`` arguments for queues declared here (e.g. ``x-max-length``).
        reconnect_interval_s: seconds between reconnection attempts after the connection is lost.
        queue_check_interval_s: seconds between checks that each consumed queue still exists (module
            docstring: a queue deleted without a cancel notification).
        connection_name: shown in RabbitMQ's connection list.

    Raises:
        ConfigError: an argument is invalid (naming it).
    """

    def __init__(
        self,
        url: str = "amqp://guest:guest@127.0.0.1:5672/",
        *,
        prefetch_count: int | None = None,
        declare_queues: bool = True,
        queue_type: str = "classic",
        single_active_consumer: bool = False,
        partitions: Mapping[str, int] | None = None,
        queue_arguments: Mapping[str, Any] | None = None,
        reconnect_interval_s: float = 2.0,
        connection_name: str = "epistle",
        queue_check_interval_s: float = 5.0,
    ) -> None:
        import importlib.util

        if importlib.util.find_spec("aio_pika") is None:  # an optional extra: say how to get it, no traceback
            raise ConfigError(
                "RabbitMQ needs aio-pika: pip install 'ouroboros-epistle-forge[rabbitmq]' "
                "(or EPISTLE_BROKER=kafka / --broker kafka)",
                setting="EPISTLE_BROKER",
            )
        if not isinstance(url, str) or not url.startswith(("amqp://", "amqps://")):
            raise ConfigError(
                f"url {redact(str(url))!r}: use amqp://user:password@host:5672/vhost (or amqps://); "
                "RABBITMQ_URL sets it",
                setting="url",
            )
        if prefetch_count is not None and (
            isinstance(prefetch_count, bool) or not isinstance(prefetch_count, int) or not 1 <= prefetch_count <= 65535
        ):
            raise ConfigError(
                f"prefetch_count={prefetch_count!r}: use an integer from 1 to 65535 (AMQP's limit), "
                "or None for max_in_flight; RABBITMQ_PREFETCH_COUNT sets it",
                setting="prefetch_count",
            )
        if queue_type not in QUEUE_TYPES:
            raise ConfigError(
                f"queue_type={queue_type!r}: use classic or quorum; RABBITMQ_QUEUE_TYPE sets it", setting="queue_type"
            )
        if queue_type == "quorum" and queue_arguments and "x-queue-type" in queue_arguments:
            raise ConfigError(
                "queue_arguments: give the queue type as queue_type=, not x-queue-type", setting="queue_arguments"
            )
        for topic, count in (partitions or {}).items():
            if (
                not isinstance(topic, str)
                or not topic
                or isinstance(count, bool)
                or not isinstance(count, int)
                or not 1 <= count <= 1000
            ):
                raise ConfigError(
                    f"partitions: {topic!r}={count!r}: use topic names with a queue count from 1 to "
                    '1000, e.g. {"orders": 4}; RABBITMQ_PARTITIONS sets it',
                    setting="partitions",
                )
        if (
            isinstance(reconnect_interval_s, bool)
            or not isinstance(reconnect_interval_s, int | float)
            or not 0 < reconnect_interval_s <= 600
        ):
            raise ConfigError(
                f"reconnect_interval_s={reconnect_interval_s!r}: use seconds above 0, at most 600",
                setting="reconnect_interval_s",
            )
        if (
            isinstance(queue_check_interval_s, bool)
            or not isinstance(queue_check_interval_s, int | float)
            or not 0 < queue_check_interval_s <= 3600
        ):
            raise ConfigError(
                f"queue_check_interval_s={queue_check_interval_s!r}: use seconds above 0, at most 3600; "
                "RABBITMQ_QUEUE_CHECK_INTERVAL_S sets it",
                setting="queue_check_interval_s",
            )
        self.queue_check_interval_s = float(queue_check_interval_s)
        self.url = url
        self.prefetch_count = prefetch_count
        self.declare_queues = declare_queues
        self.queue_type = queue_type
        self.single_active_consumer = single_active_consumer
        self.partitions = dict(partitions or {})
        self.queue_arguments = dict(queue_arguments or {})
        self.reconnect_interval_s = float(reconnect_interval_s)
        self.connection_name = connection_name
        self._observers: list[TransportObserver] = []
        self._lag_interval_s = 5.0
        self._reset()

    def _reset(self) -> None:
        """The state of one run (:meth:`start` .. :meth:`close`): a consumer may be started again."""
        self._queues: dict[tuple[str, int], _Queue] = {}
        self._events: TransportEvents | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._connection: Any = None
        self._sink: RabbitDeadLetterSink | None = None
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._fetching = True
        self._closing = False
        self._commit_failed = False
        self._max_poll_records = 500
        self._max_in_flight = 1000
        self._last_round: float | None = None
        self._window_full = False
        self._lag: dict[tuple[str, int], int] = {}
        self._lag_at = 0.0

    @classmethod
    def from_settings(cls, settings: RabbitSettings) -> RabbitTransport:
        """A transport configured by ``RABBITMQ_*`` (:class:`~toolkit.settings.RabbitSettings`)."""
        return cls(
            settings.url.get_secret_value(),
            prefetch_count=settings.prefetch_count or None,
            declare_queues=settings.declare_queues,
            queue_type=settings.queue_type,
            single_active_consumer=settings.single_active_consumer,
            partitions=settings.partitions,
            reconnect_interval_s=settings.reconnect_interval_s,
            queue_check_interval_s=settings.queue_check_interval_s,
        )

    def describe(self) -> tuple[str, str, str]:
        """(broker, address, setting) for start-up messages."""
        return "RabbitMQ", redact(self.url), "RABBITMQ_URL"

    def queue_names(self, topic: str) -> list[str]:
        """The queues consumed as ``topic``'s partitions, in partition order."""
        count = self.partitions.get(topic, 1)
        return [topic] if count == 1 else [f"{topic}.{p}" for p in range(count)]

    def queue_arguments_for(self, dead_letters: bool = False) -> dict[str, Any]:
        """The arguments of a queue declared here."""
        arguments: dict[str, Any] = dict(self.queue_arguments)
        if self.queue_type == "quorum":
            arguments["x-queue-type"] = "quorum"
        if self.single_active_consumer and not dead_letters:
            arguments["x-single-active-consumer"] = True
        return arguments

    # -- Transport ---------------------------------------------------------------------------------------
    def connect(self, timeout_s: float, topics: Sequence[str] = ()) -> set[str]:
        """Open (and close) a connection in this thread; the topics whose queues exist, or will be declared.

        Raises:
            BrokerUnavailable: no broker answered within ``timeout_s``.
            ConfigError: the broker refused the credentials or the virtual host.
        """
        # aiormq logs each refused attempt as an error: the one BrokerUnavailable raised here says it once
        quiet = _DropRefusals()
        logging.getLogger("aiormq.connection").addFilter(quiet)
        try:
            return asyncio.run(self._probe(timeout_s, list(topics)))
        finally:
            logging.getLogger("aiormq.connection").removeFilter(quiet)

    async def _probe(self, timeout_s: float, topics: list[str]) -> set[str]:
        import aio_pika
        from aiormq.exceptions import ChannelClosed, ProbableAuthenticationError

        deadline = time.monotonic() + timeout_s
        last: BaseException | None = None
        while True:
            left = deadline - time.monotonic()
            try:
                connection = await aio_pika.connect(self.url, timeout=max(0.5, min(left, 10.0)))
                break
            except ProbableAuthenticationError as exc:
                raise ConfigError(
                    f"RabbitMQ at {redact(self.url)} refused the connection: {exc}; check the user, "
                    "password and virtual host in RABBITMQ_URL",
                    setting="RABBITMQ_URL",
                ) from None
            except Exception as exc:  # noqa: BLE001 - refused, reset, timed out: asked again until the deadline
                last = exc
            if time.monotonic() + 0.5 >= deadline:
                raise BrokerUnavailable(f"connecting to {redact(self.url)}: {type(last).__name__}: {last}")
            await asyncio.sleep(0.5)
        try:
            if self.declare_queues:
                return set(topics)
            existing = set()
            for topic in topics:
                try:
                    for name in self.queue_names(topic):
                        channel = await connection.channel(publisher_confirms=False)
                        await channel.declare_queue(name, passive=True)  # a missing queue closes the channel
                        await channel.close()
                except ChannelClosed:
                    continue
                existing.add(topic)
            return existing
        finally:
            await connection.close()

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
    ) -> RabbitDeadLetterSink:
        self._reset()
        self._events, self._loop = events, loop
        self._max_poll_records, self._max_in_flight = max_poll_records, max_in_flight
        for topic in topics:
            for partition, name in enumerate(self.queue_names(topic)):
                self._queues[(topic, partition)] = _Queue(topic, partition, name)
        self._sink = RabbitDeadLetterSink(self, loop, dlq_max_message_bytes)
        self._task = loop.create_task(self._run(group_id))
        return self._sink

    def commit(self, positions: list[Position], *, sync: bool = False) -> Future[None]:
        """Acknowledge each current position's deliveries up to it (AMQP answers no ack: the future
        resolves once the frames are written)."""
        done: Future[None] = Future()
        acks = []
        for position in positions:
            queue = self._queues.get((position.topic, position.partition))
            if queue is None or queue.generation != position.generation or not queue.assigned:
                continue  # an earlier assignment's: its channel is gone, the broker redelivers
            if position.offset > queue.acked:  # offset = the last done tag (watermark = last done offset + 1)
                queue.acked = position.offset
                acks.append((queue, queue.underlay, position.offset))
        if not acks:
            done.set_result(None)
            return done
        assert self._loop is not None
        self._loop.create_task(self._ack(acks, done))
        return done

    async def _ack(self, acks: list[tuple[_Queue, Any, int]], done: Future[None]) -> None:
        failure: BaseException | None = None
        started = time.monotonic()
        for queue, channel, tag in acks:
            try:
                await channel.basic_ack(tag, multiple=True)
            except Exception as exc:  # noqa: BLE001 - the channel is gone: its deliveries come back
                failure = BrokerUnavailable(
                    f"acknowledging {queue.name} up to delivery tag {tag}: {type(exc).__name__}: {exc}"
                )
            else:
                self.acknowledged(queue.topic, queue.partition, tag)
        for observer in self._observers:
            try:
                observer.on_commit(time.monotonic() - started, failure is None)
            except Exception:  # noqa: BLE001 - metrics must not fail a commit
                log.exception("commit observer failed")
        if failure is None:
            done.set_result(None)
        else:
            self._commit_failed = True
            done.set_exception(failure)

    def acknowledged(self, topic: str, partition: int, offset: int) -> None:
        """Called once the acknowledgement of everything before ``offset`` on the partition's current channel
        is written (for observers: AMQP keeps no committed offset to read back)."""

    def take_commit_failure(self) -> bool:
        failed, self._commit_failed = self._commit_failed, False
        return failed

    def pause(self, assignments: list[Assignment]) -> None:
        self._set_paused(assignments, True)

    def resume(self, assignments: list[Assignment]) -> None:
        self._set_paused(assignments, False)

    def _set_paused(self, assignments: list[Assignment], paused: bool) -> None:
        for a in assignments:
            queue = self._queues.get((a.topic, a.partition))
            if queue is not None and queue.generation == a.generation:
                queue.paused = paused
        self._wake.set()

    def stop_fetching(self) -> None:
        self._fetching = False

    # -- ObservableTransport ---------------------------------------------------------------------------
    def add_observer(self, observer: TransportObserver, *, lag_interval_s: float = 5.0) -> None:
        if observer not in self._observers:  # (a consumer started again with the same transport)
            self._observers.append(observer)
        self._lag_interval_s = lag_interval_s

    def fetch_state(self) -> FetchState:
        """Alive while the consuming task runs; its last round (at least every 50 ms while it runs)."""
        alive = self._task is not None and not self._task.done() and not self._closing
        return FetchState(alive, self._last_round, self._window_full)

    def lag(self) -> dict[tuple[str, int], int]:
        """Each assigned queue's ready messages plus the deliveries held here unacknowledged, as last
        measured (every ``lag_interval_s`` once an observer is added; empty without one)."""
        return dict(self._lag)

    def close(self) -> Future[None]:
        done: Future[None] = Future()
        self._closing = True
        self._wake.set()
        if self._loop is None:
            done.set_result(None)
        else:
            self._loop.create_task(self._close(done))
        return done

    async def _close(self, done: Future[None]) -> None:
        try:
            if self._task is not None:
                await asyncio.wait([self._task], timeout=10)
            if self._connection is not None:
                # Deliveries not acknowledged go back to their queues, in their original order
                await self._connection.close()
        except Exception as exc:  # noqa: BLE001
            log.warning("closing the RabbitMQ connection failed: %s", exc)
        finally:
            done.set_result(None)

    # -- the consuming task -------------------------------------------------------------------------------
    async def _run(self, group_id: str) -> None:
        events = self._events
        assert events is not None
        try:
            await self._open(group_id)
        except Exception as exc:  # noqa: BLE001
            if not self._closing:
                events.on_fatal(
                    str(exc)
                    if isinstance(exc, ConfigError | BrokerUnavailable)
                    else f"RabbitMQ at {redact(self.url)}: {type(exc).__name__}: {exc}"
                )
            return
        while not self._closing:
            try:
                for queue in self._queues.values():
                    if queue.lost:
                        await self._lose(queue)
                    if queue.reopened and not self._closing:
                        queue.reopened = False
                        await self._consume(queue)
                now = self._last_round = time.monotonic()
                if self._fetching and not self._closing:
                    self._hand_over(events, now)
                    await self._probe_ends(events, now)
                if self._observers and now >= self._lag_at and not self._closing:
                    self._lag_at = now + self._lag_interval_s
                    await self._measure_lag()
                if not self._closing:
                    await self._check_queues(now)
            except Exception as exc:  # a bug of ours: stop rather than silently stop handing records over
                log.exception("the RabbitMQ transport failed")
                events.on_fatal(f"internal error in the RabbitMQ transport: {type(exc).__name__}: {exc}")
                return
            self._wake.clear()
            # Deliveries waiting for room in the window: look again soon (the engine tells nothing when
            # its in-flight count drops)
            waiting = any(q.buffer and q.assigned and not q.paused for q in self._queues.values())
            try:
                await asyncio.wait_for(self._wake.wait(), 0.002 if waiting else _IDLE_GAP_S)
            except TimeoutError:
                pass

    async def _open(self, group_id: str) -> None:
        import aio_pika
        from aiormq.exceptions import ChannelAccessRefused, ChannelNotFoundEntity, ChannelPreconditionFailed

        self._connection = await aio_pika.connect_robust(
            self.url,
            reconnect_interval=self.reconnect_interval_s,
            client_properties={"connection_name": f"{self.connection_name} consumer ({group_id})"},
        )
        assert self._sink is not None
        await self._sink.open()
        prefetch = self.prefetch_count or min(self._max_in_flight, 65535)
        for queue in self._queues.values():
            channel = await self._connection.channel(publisher_confirms=False)
            await channel.set_qos(prefetch_count=prefetch)
            try:
                if self.declare_queues:
                    await channel.declare_queue(queue.name, durable=True, arguments=self.queue_arguments_for())
                else:
                    await channel.declare_queue(queue.name, passive=True)
            except ChannelNotFoundEntity:
                raise ConfigError(
                    f"queue {queue.name!r} does not exist: declare it, or let the consumer declare "
                    "it (RABBITMQ_DECLARE_QUEUES=true)",
                    setting="RABBITMQ_DECLARE_QUEUES",
                ) from None
            except ChannelPreconditionFailed as exc:
                raise ConfigError(
                    f"queue {queue.name!r} exists with other arguments than ours ({exc}): match "
                    "RABBITMQ_QUEUE_TYPE / RABBITMQ_SINGLE_ACTIVE_CONSUMER to it, or set "
                    "RABBITMQ_DECLARE_QUEUES=false to use it as it is",
                    setting="RABBITMQ_QUEUE_TYPE",
                ) from None
            except ChannelAccessRefused as exc:
                raise ConfigError(
                    f"queue {queue.name!r}: access refused ({exc}); give the RABBITMQ_URL user "
                    "configure and read permissions on it",
                    setting="RABBITMQ_URL",
                ) from None
            queue.channel = channel
            channel.reopen_callbacks.add(lambda _channel, q=queue: self._reopened(q))
            await self._consume(queue)

    def _reopened(self, queue: _Queue) -> None:
        queue.reopened = True
        self._wake.set()

    async def _consume(self, queue: _Queue) -> None:
        """Consume ``queue`` on its channel's current underlying channel, as a new assignment."""
        events = self._events
        assert events is not None
        if queue.assigned:  # reopened before the loss was seen
            await self._lose(queue)
        try:
            underlay = await queue.channel.get_underlay_channel()
        except Exception as exc:  # noqa: BLE001 - closed again: the next reopen comes back here
            log.warning("queue %s: no channel to consume on yet: %s", queue.name, exc)
            return
        if underlay.is_closed:
            return
        if underlay is queue.consumed_on:
            # An earlier generation's channel: its tags go on counting and its unacknowledged deliveries are
            # still held there. A new generation needs a new channel (offsets from 0, nothing of the old one
            # acknowledged with it): close it, the broker requeues, the robust channel reopens
            await self._close_underlay(queue, underlay)
            return
        queue.generation += 1
        queue.consumed_on = underlay
        queue.underlay, queue.acked, queue.delivered, queue.assigned = underlay, 0, 0, True
        queue.lost, queue.eof_sent, queue.paused = False, False, False
        queue.checked_at = time.monotonic()
        queue.buffer.clear()
        events.on_assign([Assignment(queue.topic, queue.partition, queue.generation)])
        underlay.closing.add_done_callback(lambda _f, q=queue, u=underlay: self._channel_closed(q, u))

        async def deliver(message: Any, q: _Queue = queue, u: Any = underlay) -> None:
            if q.underlay is u and q.assigned:  # a delivery of a lost channel comes again on the new one
                record = AmqpRecord(q.topic, q.partition, q.name, message)
                q.delivered = record.delivery_tag
                q.buffer.append(record)
                q.last_delivery = time.monotonic()
                self._wake.set()

        try:
            consuming = await underlay.basic_consume(queue.name, deliver, no_ack=False)
        except Exception as exc:  # noqa: BLE001 - the channel closed meanwhile: lost, reopened later
            log.warning("queue %s: consuming failed: %s", queue.name, exc)
            queue.lost = True
            return

        def cancelled(frame: Any, q: _Queue = queue, u: Any = underlay, tag: str = consuming.consumer_tag) -> None:
            # The broker ended our consumer (the queue was deleted, a quorum queue lost its members): the
            # assignment is lost. _lose closes the channel (the broker requeues what it delivered here and
            # was not acknowledged); the robust channel reopens, declares the queue again, and consuming
            # starts on the new channel, its tags from 1 (module docstring)
            if getattr(frame, "consumer_tag", None) == tag and q.underlay is u and not self._closing:
                log.warning("queue %s: the broker cancelled our consumer; closing its channel to consume again", q.name)
                q.lost = True
                self._wake.set()

        underlay.on_consumer_cancel_callbacks.add(cancelled)
        log.info("consuming queue %s (generation %d)", queue.name, queue.generation)

    def _channel_closed(self, queue: _Queue, underlay: Any) -> None:
        if queue.underlay is underlay and not self._closing:
            log.warning("queue %s: channel closed; its unacknowledged deliveries go back to the queue", queue.name)
            queue.lost = True
            self._wake.set()

    async def _lose(self, queue: _Queue) -> None:
        """The channel is gone (or its consumer cancelled): drop its deliveries and the assignment (nothing can
        be acknowledged). A channel still open is closed, so that the broker requeues its unacknowledged
        deliveries and the robust channel reopens it (:meth:`_reopened` consumes there again)."""
        underlay = queue.underlay
        queue.lost = False
        queue.buffer.clear()
        queue.underlay = None
        self._lag.pop((queue.topic, queue.partition), None)
        if underlay is not None:
            await self._close_underlay(queue, underlay)
        if queue.assigned:
            queue.assigned = False
            assert self._events is not None
            await self._events.release([(queue.topic, queue.partition)], True)

    async def _close_underlay(self, queue: _Queue, underlay: Any) -> None:
        if underlay.is_closed:
            return
        try:
            await asyncio.wait_for(underlay.close(), 10)
        except Exception as exc:  # noqa: BLE001 - closed anyway (a lost connection closes it too)
            log.warning("queue %s: closing its channel failed: %s", queue.name, exc)

    def _hand_over(self, events: TransportEvents, now: float) -> None:
        free = min(self._max_poll_records, self._max_in_flight - events.in_flight())
        self._window_full = free <= 0 and any(q.buffer and q.assigned and not q.paused for q in self._queues.values())
        records: list[AmqpRecord] = []
        for queue in self._queues.values():
            if free <= len(records):
                break
            if queue.paused or not queue.assigned or not queue.buffer:
                continue
            buffer = queue.buffer
            while buffer and len(records) < free:
                records.append(buffer.popleft())
            queue.eof_sent = False
        if records:
            events.on_batch(list(records), [])  # type: ignore[arg-type]

    async def _measure_lag(self) -> None:
        """Each assigned queue's ready messages (a passive declare) plus those delivered here and not
        acknowledged."""
        for queue in list(self._queues.values()):
            underlay = queue.underlay
            if not queue.assigned or underlay is None:
                continue
            declared = await self._declared(queue, underlay)
            if declared is None:
                continue
            if queue.underlay is underlay:
                held = max(0, queue.delivered - queue.acked)
                self._lag[(queue.topic, queue.partition)] = (declared.message_count or 0) + held

    async def _declared(self, queue: _Queue, underlay: Any) -> Any:
        """The passive ``queue.declare`` answer for ``queue`` on its channel; None when the channel closed or
        the queue is gone (reported, and the assignment marked lost: module docstring)."""
        from aiormq.exceptions import ChannelNotFoundEntity

        try:
            declared = await underlay.queue_declare(queue.name, passive=True)
        except ChannelNotFoundEntity:
            if queue.underlay is underlay and not self._closing:
                log.warning(
                    "queue %s no longer exists (deleted without a consumer cancel notification): %s",
                    queue.name,
                    "declaring it again and consuming it as a new assignment"
                    if self.declare_queues
                    else "declare it again (RABBITMQ_DECLARE_QUEUES=false: the consumer does not); "
                    "consuming resumes once it exists",
                )
                queue.lost = True
                self._wake.set()
            return None
        except Exception:  # noqa: BLE001 - the channel closed: handled as lost
            return None
        queue.checked_at = time.monotonic()
        return declared

    async def _check_queues(self, now: float) -> None:
        """Check that each assigned queue still exists, every ``queue_check_interval_s`` (a passive declare
        done for the lag or the end probe counts as one)."""
        for queue in list(self._queues.values()):
            underlay = queue.underlay
            if not queue.assigned or underlay is None or queue.lost:
                continue
            if now - queue.checked_at >= self.queue_check_interval_s:
                await self._declared(queue, underlay)

    async def _probe_ends(self, events: TransportEvents, now: float) -> None:
        """Tell the engine which queues are at their end (for ``stop_when_idle``): nothing waiting here,
        no delivery for a moment, and none ready in the queue, asked after that moment and checked again
        a moment later (a delivery on its way when the broker answered would have arrived by then)."""
        ends: list[tuple[str, int]] = []
        for queue in self._queues.values():
            if (
                queue.eof_sent
                or not queue.assigned
                or queue.buffer
                or now - queue.last_delivery < _IDLE_GAP_S
                or now < queue.probe_at
            ):
                continue
            queue.probe_at = now + _IDLE_GAP_S
            underlay, asked = queue.underlay, queue.last_delivery
            declared = await self._declared(queue, underlay)
            if declared is None:
                continue
            if declared.message_count:
                continue
            await asyncio.sleep(_IDLE_GAP_S)
            if queue.underlay is underlay and queue.last_delivery == asked and not queue.buffer:
                queue.eof_sent = True
                ends.append((queue.topic, queue.partition))
        if ends:
            events.on_batch([], ends)


class RabbitDeadLetterSink:
    """Dead letters to durable queues through the default exchange, mandatory, with publisher confirms
    (the :class:`~toolkit.consumer.transport.DeadLetterSink`), on a robust connection of its own."""

    def __init__(self, transport: RabbitTransport, loop: asyncio.AbstractEventLoop, max_message_bytes: int) -> None:
        self._transport = transport
        self._loop = loop
        self.max_message_bytes = max_message_bytes
        self._connection: Any = None
        self._channel: Any = None
        self._ready = asyncio.Event()
        self._known: set[str] = set()
        self._pending: set[asyncio.Task[None]] = set()

    async def open(self) -> None:
        import aio_pika

        transport = self._transport
        self._connection = await aio_pika.connect_robust(
            transport.url,
            reconnect_interval=transport.reconnect_interval_s,
            client_properties={"connection_name": f"{transport.connection_name} dead letters"},
        )
        self._channel = await self._connection.channel(publisher_confirms=True, on_return_raises=True)
        self._ready.set()

    def knows(self, topic: str) -> bool:
        return topic in self._known

    def ensure_topic(self, topic: str) -> None:
        """Declare the durable dead-letter queue ``topic`` (blocking: called from an executor thread).

        Raises:
            BrokerUnavailable: it could not be declared and does not exist.
        """
        try:
            asyncio.run_coroutine_threadsafe(self._declare(topic), self._loop).result(timeout=60)
        except BrokerUnavailable:
            raise
        except Exception as exc:  # noqa: BLE001 - TimeoutError, a closed connection
            raise BrokerUnavailable(f"declaring dead-letter queue {topic}: {type(exc).__name__}: {exc}") from None

    async def _declare(self, topic: str) -> None:
        from aiormq.exceptions import ChannelClosed, ChannelPreconditionFailed

        await asyncio.wait_for(self._ready.wait(), 30)
        try:
            await self._channel.declare_queue(
                topic, durable=True, arguments=self._transport.queue_arguments_for(dead_letters=True), robust=False
            )
            log.info("declared dead-letter queue %s", topic)
        except ChannelPreconditionFailed:  # it exists with other arguments: use it as it is
            try:
                await self._channel.declare_queue(topic, passive=True, robust=False)
            except ChannelClosed as exc:
                raise BrokerUnavailable(f"dead-letter queue {topic}: {exc}") from None
        except ChannelClosed as exc:
            raise BrokerUnavailable(f"declaring dead-letter queue {topic}: {exc}") from None
        self._known.add(topic)

    def send(self, record: DeadLetterRecord, *, alone: bool = False) -> asyncio.Future[None]:
        """Publish ``record``; the future resolves on the broker's confirm, fails with BrokerUnavailable on a
        nack, a return (no such queue) or a lost connection. (``alone`` needs nothing here: each message
        is confirmed on its own.)"""
        future: asyncio.Future[None] = self._loop.create_future()
        task = self._loop.create_task(self._publish(record, future))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)
        return future

    async def _publish(self, record: DeadLetterRecord, future: asyncio.Future[None]) -> None:
        import aio_pika
        from aiormq.exceptions import DeliveryError
        from pamqp.commands import Basic

        try:
            await asyncio.wait_for(self._ready.wait(), 30)
            message = aio_pika.Message(
                record.value,
                headers=table_from_headers(record.key, record.headers),
                content_type="application/json",
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                timestamp=datetime.now(UTC),
            )
            confirm = await self._channel.default_exchange.publish(
                message, routing_key=record.topic, mandatory=True, timeout=30
            )
            if isinstance(confirm, Basic.Nack):
                raise BrokerUnavailable("the broker refused it (basic.nack)")
        except Exception as exc:  # noqa: BLE001 - every failure fails the future: the engine resends
            if isinstance(exc, DeliveryError) and exc.message is not None:  # returned: no such queue any more
                self._known.discard(record.topic)
                self._loop.create_task(self._redeclare(record.topic))
            if not future.done():
                future.set_exception(
                    BrokerUnavailable(f"dead letter to {record.topic} not confirmed: {type(exc).__name__}: {exc}")
                )
            return
        if not future.done():
            future.set_result(None)

    async def _redeclare(self, topic: str) -> None:
        try:
            await self._declare(topic)
        except Exception as exc:  # noqa: BLE001 - the next send tries again
            log.warning("declaring dead-letter queue %s again failed: %s", topic, exc)

    def close(self, timeout_s: float = 10.0) -> int:
        """Wait for the confirms still due, then close (blocking: called from an executor thread); the number
        of dead letters not confirmed."""
        try:
            return asyncio.run_coroutine_threadsafe(self._close(timeout_s), self._loop).result(timeout_s + 5)
        except Exception:  # noqa: BLE001
            return len(self._pending)

    async def _close(self, timeout_s: float) -> int:
        if self._pending:
            await asyncio.wait(list(self._pending), timeout=timeout_s)
        left = len(self._pending)
        if self._connection is not None:
            try:
                await self._connection.close()
            except Exception as exc:  # noqa: BLE001
                log.warning("closing the dead-letter connection failed: %s", exc)
        return left


__all__ = [
    "KEY_HEADER",
    "AmqpRecord",
    "RabbitDeadLetterSink",
    "RabbitTransport",
    "headers_from_table",
    "redact",
    "table_from_headers",
]
