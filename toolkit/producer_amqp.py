"""Producing to RabbitMQ: the same models, validation, envelopes and headers as :class:`EnvelopeProducer`, over
AMQP 0-9-1 with aio-pika.

    async with make_producer(load_settings()) as producer:   # EPISTLE_BROKER=rabbitmq
        delivery = await producer.publish("orders", order, key=str(order.order_id))

- A record is built by :meth:`~toolkit.producer.ModelProducer.build`, exactly as for Kafka (validated first,
  header filled, correlationId carried over); only the sending differs.
- It goes through the default exchange to the queue the consumer reads as the topic
  (:class:`~toolkit.consumer.amqp.RabbitTransport`): the queue named as the topic, or for a topic of N queues
  (``RABBITMQ_PARTITIONS=orders=4``) ``orders.<crc32(key) mod N>`` (a record without a key: round robin).
- Published ``mandatory`` with publisher confirms and ``delivery_mode`` persistent: the future resolves once
  the broker confirmed the message (on a durable queue: written to disk); a message no queue takes is
  returned and fails with :class:`~toolkit.producer.DeliveryFailed` (``code="NO_ROUTE"``), a nack with
  ``code="NACK"``, a broker that cannot be reached with ``code="BROKER_UNAVAILABLE"`` (all but NO_ROUTE and
  AUTH are ``retriable``).
- The key travels in the ``epistle-key`` header, the record headers in the header table (the consumer reads
  them back as they were); the properties say ``content_type``, ``message_id`` and ``correlation_id`` (the
  envelope header's), ``type`` (the messageType), ``app_id`` (the producer's name) and ``timestamp``.
- aio-pika runs on an event loop of the producer's own in a thread, so :meth:`send` works from any code
  (a ``concurrent.futures.Future``) and :meth:`publish` from any event loop; one robust connection,
  opened on the first send (reconnected by aio-pika after a loss: what was in flight then fails retriable,
  nothing is resent silently). Messages are published in the order they are sent.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import importlib.util
import itertools
import logging
import threading
import zlib
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from toolkit.consumer.amqp import redact, table_from_headers
from toolkit.errors import ConfigError, EpistleError
from toolkit.producer import Delivery, DeliveryFailed, ModelProducer, OutgoingRecord, WireFormat, _check_options
from toolkit.registry.base import SubjectStrategy
from toolkit.settings import ProducerSettings, RabbitSettings, Settings

log = logging.getLogger("toolkit.producer")


def queue_for(topic: str, key: bytes | None, count: int, turn: int = 0) -> tuple[str, int]:
    """(queue, partition) of a record of ``topic`` spread over ``count`` queues: the topic itself when it has
    one, else ``<topic>.<crc32(key) mod count>``, or ``turn mod count`` for a record without a key."""
    if count <= 1:
        return topic, 0
    partition = (zlib.crc32(key) if key is not None else turn) % count
    return f"{topic}.{partition}", partition


class RabbitProducer(ModelProducer):
    """Publishes generated models to RabbitMQ queues, validated against their registry schema first (module
    docstring).

    Args:
        url: ``amqp://user:password@host:port/vhost`` (default ``RABBITMQ_URL``).
        partitions: topic -> number of queues (default ``RABBITMQ_PARTITIONS``), as the consumer reads them.
        confirm_timeout_s: how long a publish waits for the broker's confirm before it fails (retriable;
            default 30 s).
        registry, models, name, subject_strategy, confluent_topics, value_formats, key_formats, settings,
            producer_settings, tracer_provider: as :class:`~toolkit.producer.ModelProducer`.

    Raises:
        ConfigError: an argument is invalid (naming it and the fix), or aio-pika is not installed.
    """

    messaging_system = "rabbitmq"

    def __init__(
        self,
        url: str | None = None,
        *,
        registry: Any = None,
        models: Any = None,
        name: str | None = None,
        subject_strategy: SubjectStrategy | None = None,
        confluent_topics: Iterable[str] | None = None,
        value_formats: Mapping[str, str] | None = None,
        key_formats: Mapping[str, str] | None = None,
        settings: Settings | None = None,
        producer_settings: ProducerSettings | None = None,
        partitions: Mapping[str, int] | None = None,
        confirm_timeout_s: float | None = None,
        tracer_provider: Any = None,
    ) -> None:
        if importlib.util.find_spec("aio_pika") is None:
            raise ConfigError(
                "RabbitMQ needs aio-pika: pip install 'ouroboros-epistle-forge[rabbitmq]' (or EPISTLE_BROKER=kafka)",
                setting="EPISTLE_BROKER",
            )
        confluent_topics = _check_options(locals())
        if url is not None and (not isinstance(url, str) or not url.startswith(("amqp://", "amqps://"))):
            raise ConfigError(
                f"url {redact(str(url))!r}: use amqp://user:password@host:5672/vhost (or amqps://); "
                "RABBITMQ_URL sets it",
                setting="url",
            )
        super().__init__(
            registry=registry,
            models=models,
            name=name,
            subject_strategy=subject_strategy,
            confluent_topics=confluent_topics,
            value_formats=value_formats,
            key_formats=key_formats,
            settings=settings,
            tracer_provider=tracer_provider,
            producer_settings=producer_settings,
        )
        rabbit = settings.rabbitmq if settings else RabbitSettings.model_construct()
        self.url = url or rabbit.url.get_secret_value()
        self.partitions = dict(partitions if partitions is not None else rabbit.partitions)
        self.confirm_timeout_s = 30.0 if confirm_timeout_s is None else float(confirm_timeout_s)
        self.reconnect_interval_s = rabbit.reconnect_interval_s
        self._turn = itertools.count()
        self._lock = threading.Lock()
        self._send_lock = threading.Lock()  # send and close exclude each other: nothing slips past close
        self._pending: dict[concurrent.futures.Future[Delivery], str] = {}  # future -> topic
        self._tasks: set[asyncio.Task[None]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._opening: asyncio.Task[Any] | None = None
        self._connection: Any = None
        self._closed = False

    def describe(self) -> str:
        """Where it publishes (the URL without its password)."""
        return f"RabbitMQ at {redact(self.url)}"

    # -- sending ----------------------------------------------------------------------------------------
    def send_record(self, record: OutgoingRecord) -> concurrent.futures.Future[Delivery]:
        """Publish a record made by :meth:`build`; the future resolves with the :class:`Delivery` on the
        broker's confirm, or fails with :class:`DeliveryFailed`.

        Raises:
            EpistleError: the producer is closed (or closing).
        """
        future: concurrent.futures.Future[Delivery] = concurrent.futures.Future()
        with self._send_lock:
            loop = self._started()
            queue, partition = queue_for(
                record.topic, record.key, self.partitions.get(record.topic, 1), next(self._turn)
            )
            self._pending[future] = record.topic
            future.add_done_callback(lambda done: self._pending.pop(done, None))
            # call_soon_threadsafe keeps the order of the sends: each task publishes before the next starts
            loop.call_soon_threadsafe(self._spawn, record, queue, partition, future)
        return future

    def _spawn(self, record: OutgoingRecord, queue: str, partition: int, future: concurrent.futures.Future) -> None:
        task = asyncio.get_running_loop().create_task(self._publish(record, queue, partition, future))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _channel(self) -> Any:
        """The publishing channel, the connection opened on first use (again after a failed attempt)."""
        if self._opening is None or (self._opening.done() and self._opening.exception() is not None):
            self._opening = asyncio.get_running_loop().create_task(self._open())
        return await asyncio.shield(self._opening)

    async def _open(self) -> Any:
        import aio_pika

        self._connection = await aio_pika.connect_robust(
            self.url,
            timeout=self.confirm_timeout_s,
            reconnect_interval=self.reconnect_interval_s,
            client_properties={"connection_name": f"{self.name} producer"},
        )
        return await self._connection.channel(publisher_confirms=True, on_return_raises=True)

    async def _publish(
        self, record: OutgoingRecord, queue: str, partition: int, future: concurrent.futures.Future[Delivery]
    ) -> None:
        import aio_pika
        from aiormq.exceptions import DeliveryError, ProbableAuthenticationError
        from pamqp.commands import Basic

        header = record.header
        stamp = datetime.now(UTC).replace(microsecond=0)  # AMQP's timestamp has second resolution
        where = f"record {header.message_id} to queue {queue!r}"
        failure: DeliveryFailed | None = None
        try:
            channel = await self._channel()
            message = aio_pika.Message(
                record.value,
                headers=table_from_headers(record.key, record.headers),
                content_type="application/json" if record.wire_format is WireFormat.ENVELOPE else None,
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                message_id=header.message_id,
                correlation_id=header.correlation_id,
                timestamp=stamp,
                type=header.message_type,
                app_id=self.name,
            )
            confirm = await channel.default_exchange.publish(
                message, routing_key=queue, mandatory=True, timeout=self.confirm_timeout_s
            )
            if isinstance(confirm, Basic.Nack):
                failure = DeliveryFailed(
                    f"{where} was refused by the broker (basic.nack); publish it again",
                    topic=record.topic,
                    code="NACK",
                    retriable=True,
                )
        except DeliveryError as exc:
            returned = exc.message is not None
            failure = DeliveryFailed(
                f"{where} was returned: no queue named {queue!r} takes it; declare the queue (the consumer "
                "declares its queues when it starts) or check the topic name, then publish it again"
                if returned
                else f"{where} was refused by the broker ({exc}); publish it again",
                topic=record.topic,
                code="NO_ROUTE" if returned else "NACK",
                retriable=not returned,
            )
        except ProbableAuthenticationError as exc:
            failure = DeliveryFailed(
                f"{where}: RabbitMQ at {redact(self.url)} refused the connection ({exc}); check the user, "
                "password and virtual host in RABBITMQ_URL",
                topic=record.topic,
                code="AUTH",
            )
        except asyncio.CancelledError:
            failure = DeliveryFailed(
                f"{where}: the producer was closed before the broker confirmed it; publish it again",
                topic=record.topic,
                code="_PURGE_QUEUE",
                retriable=True,
            )
        except Exception as exc:  # noqa: BLE001 - refused, reset, timed out: the broker did not confirm it
            failure = DeliveryFailed(
                f"{where} was not confirmed by RabbitMQ at {redact(self.url)} ({type(exc).__name__}: {exc}); "
                "check that it is running (RABBITMQ_URL), then publish it again",
                topic=record.topic,
                code="BROKER_UNAVAILABLE",
                retriable=True,
            )
        with contextlib.suppress(concurrent.futures.InvalidStateError):  # close() failed it meanwhile
            if failure is not None:
                future.set_exception(failure)
            else:
                future.set_result(
                    Delivery(
                        record.topic,
                        partition,
                        -1,
                        int(stamp.timestamp() * 1000),
                        header.message_id,
                        header.correlation_id,
                        queue,
                    )
                )

    # -- lifecycle ----------------------------------------------------------------------------------------
    def _started(self) -> asyncio.AbstractEventLoop:
        if self._closed:
            raise EpistleError("the producer is closed; make a new RabbitProducer")
        if self._loop is None:
            with self._lock:
                if self._loop is None:
                    loop = asyncio.new_event_loop()
                    self._thread = threading.Thread(
                        target=loop.run_forever, name="epistle-rabbit-producer", daemon=True
                    )
                    self._thread.start()
                    self._loop = loop
        return self._loop

    def flush(self, timeout_s: float | None = None) -> int:
        """Wait for every message in flight to be confirmed; returns how many are still unconfirmed."""
        pending = list(self._pending)
        if not pending:
            return 0
        _, left = concurrent.futures.wait(pending, self.flush_timeout_s if timeout_s is None else timeout_s)
        return len(left)

    def close(self, timeout_s: float | None = None) -> int:
        """Refuse new sends, wait for the confirms (up to ``timeout_s``, default
        ``EPISTLE_PRODUCER_FLUSH_TIMEOUT_S``) and close the connection; returns how many messages were not
        confirmed by then (their futures fail with :class:`DeliveryFailed`, logged as an error)."""
        with self._send_lock:
            if self._closed:
                return 0
            self._closed = True
        left = self.flush(timeout_s)
        for future, topic in list(self._pending.items()):
            with contextlib.suppress(concurrent.futures.InvalidStateError):
                future.set_exception(
                    DeliveryFailed(
                        "the producer was closed and the message was not confirmed by the broker; publish it again",
                        topic=topic,
                        code="_PURGE_QUEUE",
                        retriable=True,
                    )
                )
        loop = self._loop
        if loop is not None:
            try:
                asyncio.run_coroutine_threadsafe(self._shutdown(), loop).result(15)
            except Exception as exc:  # noqa: BLE001 - the connection goes with the thread anyway
                log.warning("closing the RabbitMQ producer's connection failed: %s", exc)
            loop.call_soon_threadsafe(loop.stop)
            if self._thread is not None:
                self._thread.join(5)
            if not loop.is_running():
                loop.close()
        if left:
            log.error(
                "producer closed with %d message(s) not confirmed by RabbitMQ; their deliveries failed with "
                "DeliveryFailed",
                left,
            )
        return left

    async def _shutdown(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=5)
        if self._opening is not None and not self._opening.done():
            self._opening.cancel()
        if self._connection is not None:
            await asyncio.wait_for(self._connection.close(), 10)


__all__ = ["RabbitProducer", "queue_for"]
