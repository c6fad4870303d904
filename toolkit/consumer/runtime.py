"""The consumer's facade: options, handlers, lifecycle and signals; the work is the engine's.

    consumer = KafkaConsumer(bootstrap_servers="localhost:9092", group_id="orders-service", registry=registry)
    consumer.register_handler("orders", OrderCreatedHandler(order_service))

    @consumer.handler("payments")
    async def on_payment(message: Message[PaymentV1]) -> None: ...

    await consumer.start()          # runs until stop(), SIGTERM/SIGINT (handle_signals=True) or idle

:meth:`KafkaConsumer.start` resolves the registry and the model index into a
:class:`~toolkit.consumer.pipeline.Pipeline`, checks the broker answers, and runs an
:class:`~toolkit.consumer.engine.Engine` (lanes, outcomes, commits, rebalances, dead letters) over a
:class:`~toolkit.consumer.transport.Transport`: librdkafka's unless another is given. Contracts:
docs/contracts.md; threads: docs/threads.md.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, TypeVar

from toolkit.consumer.engine import Engine
from toolkit.consumer.handlers import HandlerLike, HandlerRegistry
from toolkit.consumer.middleware import Hooks, LoggingMiddleware, Middleware, StatsMiddleware
from toolkit.consumer.options import ConsumerOptions
from toolkit.consumer.outcomes import ErrorPolicy, RetryPolicy
from toolkit.consumer.pipeline import ModelLookup, Pipeline, as_resolver
from toolkit.consumer.stats import ConsumerStats
from toolkit.consumer.transport import AcknowledgingTransport, Transport
from toolkit.envelope import SerializerLike
from toolkit.errors import BrokerUnavailable, BrokerUnreachable, ConfigError, ConsumerStopped
from toolkit.registry.base import SubjectStrategy
from toolkit.settings import OrderingMode, Settings

log = logging.getLogger("toolkit.consumer")

H = TypeVar("H", bound=Callable[..., Any])


class KafkaConsumer:
    """Consumes topics, runs each message through the pipeline to its handler, commits what is done.

    Every argument left as None comes from ``settings`` (or the defaults of
    :class:`~toolkit.settings.ConsumerSettings` and :class:`~toolkit.settings.KafkaSettings`).

    Args:
        bootstrap_servers, group_id: the cluster and the consumer group.
        registry: a :class:`~toolkit.registry.base.SchemaRegistry` or a caching resolver with
            ``resolve(subject, version) -> (RegisteredSchema, CompiledSchema)``; None builds one from
            ``settings.registry`` (the local ``schemas/`` folder when no URL is set).
        models: a model index with ``get(schema_name, version)``; None loads ``generated_models``.
        topics: topics to subscribe; None means every topic with a registered handler.
        max_workers: handlers running at once. max_poll_records: records per fetch.
        max_in_flight: records held (fetched and not finished) before fetching pauses.
        ordering: PARTITION (default), KEY or UNORDERED (see :class:`~toolkit.settings.OrderingMode`).
        error_policy: DEAD_LETTER (default) or STOP. retry: attempts and backoff for False/RetryableError.
        serializer: turns record bytes into the envelope document (JSON by default).
        stop_when_idle: stop once every assigned partition reached its end and nothing is in flight.
        unknown_schema_grace_s: how long a record whose schema the registry does not know waits (its
            partition holding, asking again with backoff) before it is dead-lettered; 0 = at once.
        kafka_config: extra librdkafka settings for the consumer (override ours).
        max_nesting_depth: the deepest JSON nesting accepted, counted over the whole envelope (default
            ``EPISTLE_MAX_NESTING_DEPTH``, 4096; at most 5000); deeper records are dead-lettered at
            stage ``decode``.
        dlq_max_message_bytes: the dead-letter producer's ``message.max.bytes`` and the ``max.message.bytes``
            of the dead-letter topics it creates (``EPISTLE_DLQ_MAX_MESSAGE_BYTES``, 10 MiB): a dead letter
            over it is sent in its shortened form (docs/dead-letters.md).
        dead_letter_producer_config: extra librdkafka settings for the dead-letter producer (override ours).
        startup_timeout_s: how long :meth:`start` waits for a broker to answer (KAFKA_STARTUP_TIMEOUT_S).
        group_instance_id: static membership (KAFKA_GROUP_INSTANCE_ID): a restarted process with the same id
            takes its predecessor's partitions at once. Each process of the group needs its own id.
        value_formats: topic -> ``envelope`` (the JSON envelope), ``confluent`` (Confluent's wire format: magic
            byte, schema id, Avro or JSON payload) or ``auto`` (either, by the first byte); ``*`` for every
            other topic (``EPISTLE_VALUE_FORMATS``; envelope by default). Wire formats need a registry URL.
        key_formats: topic -> ``raw`` (the key's bytes as they are, the default), ``confluent`` (the key in
            Confluent's wire format, decoded with its schema into ``Message.key_value``) or ``auto`` (by the
            first byte); ``*`` for every other topic (``EPISTLE_KEY_FORMATS``).
        middleware: :class:`~toolkit.consumer.middleware.Middleware` run around every record (first given,
            outermost), after the built-in statistics and logging.
        mode: ``group`` (a consumer group, the default) or ``share`` (a Kafka share group, KIP-932: any number of
            consumers share every partition, each record is acknowledged on its own, nothing is ordered;
            ordering must be UNORDERED, the default there); EPISTLE_CONSUMER_MODE.
        handler_timeout_s: how long one handler attempt may run (``EPISTLE_HANDLER_TIMEOUT_S``; None: no
            limit). Past it the attempt fails with :class:`~toolkit.errors.HandlerTimedOut`, retried like a
            :class:`~toolkit.errors.RetryableError` and dead-lettered at stage ``retries_exhausted`` after the
            last attempt: an ``async def`` handler is cancelled, a plain function keeps its thread until it
            returns (Python cannot stop a thread; its result is ignored).
        rejoin_timeout_s: how long a Kafka consumer may have no partition before the broker is asked whether
            it is stuck out of its group, then recreated (``EPISTLE_REJOIN_TIMEOUT_S``; unset: three session
            timeouts, at least 30 s; 0: never; docs/group-membership.md).
        transport: the broker side; None is Kafka through librdkafka (a share consumer with mode share).
            ``toolkit.consumer.amqp.RabbitTransport(url)`` consumes RabbitMQ queues instead (topic = queue);
            ``toolkit.testing.InMemoryBroker``'s ``transport(group_id)`` runs the same consumer without a broker.

    Raises:
        ConfigError: an argument is invalid.
    """

    def __init__(
        self,
        bootstrap_servers: str | None = None,
        group_id: str | None = None,
        *,
        registry: Any = None,
        models: ModelLookup | None = None,
        topics: Iterable[str] | None = None,
        max_workers: int | None = None,
        max_poll_records: int | None = None,
        max_in_flight: int | None = None,
        ordering: OrderingMode | str | None = None,
        error_policy: ErrorPolicy | str | None = None,
        retry: RetryPolicy | None = None,
        serializer: SerializerLike | None = None,
        settings: Settings | None = None,
        dlq_suffix: str | None = None,
        commit_interval_s: float | None = None,
        stop_when_idle: bool = False,
        subject_strategy: SubjectStrategy | None = None,
        kafka_config: dict[str, Any] | None = None,
        shutdown_timeout_s: float = 30.0,
        max_nesting_depth: int | None = None,
        dlq_max_message_bytes: int | None = None,
        dead_letter_producer_config: dict[str, Any] | None = None,
        unknown_schema_grace_s: float | None = None,
        startup_timeout_s: float | None = None,
        group_instance_id: str | None = None,
        value_formats: Mapping[str, str] | None = None,
        key_formats: Mapping[str, str] | None = None,
        middleware: Sequence[Middleware] | None = None,
        transport: Transport | None = None,
        mode: str | None = None,
        rejoin_timeout_s: float | None = None,
        handler_timeout_s: float | None = None,
    ) -> None:
        self.options = ConsumerOptions.resolve(settings, locals())
        self.settings = settings
        self.handlers = HandlerRegistry()
        self.stats = ConsumerStats()
        # Checked now (ConfigError naming it), run in this order, after the built-in two.
        self._hooks = Hooks([StatsMiddleware(self.stats), LoggingMiddleware(), *(middleware or ())])
        self._registry = registry
        self._models = models
        self._serializer = serializer
        if subject_strategy is None:
            from toolkit.registry.factory import default_subject_strategy

            subject_strategy = default_subject_strategy(settings)
        self._subject_strategy = subject_strategy
        self._transport = transport
        self._engine: Engine | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._running = False

    @classmethod
    def from_settings(
        cls, settings: Settings, registry: Any = None, models: ModelLookup | None = None, **overrides: Any
    ) -> KafkaConsumer:
        """A consumer configured entirely from :func:`~toolkit.settings.load_settings`."""
        return cls(settings=settings, registry=registry, models=models, **overrides)

    # The resolved options most often read (all are in ``options``).
    @property
    def bootstrap_servers(self) -> str:
        return self.options.bootstrap_servers

    @property
    def group_id(self) -> str:
        return self.options.group_id

    @property
    def topics(self) -> list[str] | None:
        return self.options.topics

    @property
    def max_workers(self) -> int:
        return self.options.max_workers

    @property
    def ordering(self) -> OrderingMode:
        return self.options.ordering

    @property
    def error_policy(self) -> ErrorPolicy:
        return self.options.error_policy

    @property
    def retry(self) -> RetryPolicy:
        return self.options.retry

    @property
    def max_nesting_depth(self) -> int:
        return self.options.max_nesting_depth

    def __getattr__(self, name: str) -> Any:
        # Every resolved option reads as an attribute, as in the first releases (consumer.commit_interval_s);
        # they are set through the constructor (or Settings) only.
        options = self.__dict__.get("options")
        if options is not None and name in ConsumerOptions.__dataclass_fields__:
            return getattr(options, name)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def register_handler(
        self,
        topic: str,
        handler: HandlerLike,
        message_type: str | None = None,
        *,
        accepts: dict[str, Any] | None = None,
    ) -> None:
        """Route messages of ``topic`` (or only its ``message_type``) to ``handler``.

        Raises:
            ConfigError: a handler is already registered for that topic / message type, or it is not callable.
        """
        self.handlers.register(topic, handler, message_type, accepts)
        if self._engine is not None:
            self._engine.pipeline.forget_plans()  # routes may have changed

    def handler(
        self, topic: str, message_type: str | None = None, *, accepts: dict[str, Any] | None = None
    ) -> Callable[[H], H]:
        """Decorator form of :meth:`register_handler`; returns the function unchanged::

        @consumer.handler("orders")
        async def on_order(message: Message[OrderCreatedV1]) -> None: ...
        """

        def register(function: H) -> H:
            self.register_handler(topic, function, message_type, accepts=accepts)
            return function

        return register

    # -- lifecycle -----------------------------------------------------------------------------------
    async def start(self, *, handle_signals: bool = False) -> None:
        """Consume until :meth:`stop`, a signal (with ``handle_signals``) or, with ``stop_when_idle``,
        until every assigned partition is drained. Commits what is done before returning.

        Raises:
            ConsumerStopped: ErrorPolicy.STOP met a failing message, or the Kafka client failed fatally.
            ConfigError: no topic to consume, no registry could be built, ``handle_signals`` outside
                the main thread, or (with ``stop_when_idle``) a topic that does not exist.
            BrokerUnreachable: no broker answered within ``startup_timeout_s`` (nothing was started).
        """
        if self._running:
            raise ConfigError("this consumer is already running")
        options = self.options
        topics = options.topics or self.handlers.topics
        if not topics:
            raise ConfigError("no topics: register a handler or pass topics=")
        loop = asyncio.get_running_loop()
        # Built before anything is marked running: a registry or model index that cannot be loaded leaves
        # the consumer as it was, so it can be fixed and started again.
        pipeline = Pipeline(
            as_resolver(self._registry or self._default_registry()),
            self.handlers,
            self._models if self._models is not None else _default_models(),
            self._serializer,
            self._subject_strategy,
            max_depth=options.max_nesting_depth,
            unknown_schema_grace_s=options.unknown_schema_grace_s,
            value_formats=options.value_formats,
            key_formats=options.key_formats,
        )
        transport = self._transport or self._kafka_transport()
        if isinstance(transport, AcknowledgingTransport):  # a share group keeps no order
            from toolkit.consumer.share import check_share_ordering

            check_share_ordering(options.ordering, explicit=True)
        self._loop, self._running = loop, True
        engine = self._engine = Engine(options, pipeline, transport, self._hooks)
        try:
            if handle_signals:
                try:
                    install_signal_handlers(self, loop)
                except (RuntimeError, ValueError) as exc:  # a loop outside the main thread cannot get signals
                    raise ConfigError(
                        f"handle_signals=True needs the event loop of the main thread ({exc}); "
                        "run the consumer there or pass handle_signals=False",
                        setting="handle_signals",
                    ) from None
            try:
                existing = await loop.run_in_executor(None, transport.connect, options.startup_timeout_s, list(topics))
            except BrokerUnavailable as exc:
                broker, address, setting = _describe(transport, options.bootstrap_servers)
                raise BrokerUnreachable(
                    f"no {broker} broker answered at {address} within "
                    f"{options.startup_timeout_s:g}s ({exc}); check {setting}, or give a slow "
                    f"broker longer with KAFKA_STARTUP_TIMEOUT_S (startup_timeout_s=)",
                    bootstrap_servers=address,
                    timeout_s=options.startup_timeout_s,
                ) from None
            missing = [topic for topic in topics if topic not in existing]
            if missing and options.stop_when_idle:
                raise ConfigError(
                    f"topic(s) {', '.join(missing)} do not exist: stop_when_idle (--until-idle) "
                    "would never see them drained; create them or fix topics= (--topics) or the "
                    "handlers' registrations",
                    setting="topics",
                )
            if missing:
                log.warning("topic(s) %s do not exist yet", ", ".join(missing))
            log.info(
                "consuming %s as %s group %s",
                topics,
                "share" if options.mode == "share" else "consumer",
                options.group_id,
            )
            await engine.run(topics)
        finally:
            engine.close_pools()  # (a no-op once run() shut down)
            if handle_signals:
                for sig in (signal.SIGTERM, signal.SIGINT):
                    loop.remove_signal_handler(sig)
            self._running = False
            log.info("stopped; %s", self.stats.as_dict())

    def _kafka_transport(self) -> Transport:
        from toolkit.consumer.kafka_io import KafkaTransport

        options = self.options
        if options.mode == "share":
            from toolkit.consumer.share import ShareTransport

            return ShareTransport(
                options.share_consumer_config(),
                client_config=options.client_config,
                dead_letter_config=options.dead_letter_producer_config,
                auto_offset_reset=options.auto_offset_reset,
            )
        return KafkaTransport(
            options.consumer_config(),
            client_config=options.client_config,
            dead_letter_config=options.dead_letter_producer_config,
            drain_timeout_s=options.shutdown_timeout_s,
            dead_letter_suffix=options.dlq_suffix if options.error_policy is ErrorPolicy.DEAD_LETTER else None,
            rejoin_timeout_s=options.rejoin_timeout_s,
        )

    async def stop(self) -> None:
        """Stop fetching, finish in-flight handlers, commit, close. Returns once requested (start() ends)."""
        self.request_stop()

    def request_stop(self) -> None:
        """Synchronous form of :meth:`stop`; safe from signal handlers, sync handlers and other threads."""
        loop, engine = self._loop, self._engine
        if loop is None or engine is None:
            return
        try:
            on_loop = asyncio.get_running_loop() is loop
        except RuntimeError:
            on_loop = False
        if on_loop:
            engine.request_stop()
        else:
            loop.call_soon_threadsafe(engine.request_stop)

    @property
    def in_flight(self) -> int:
        """Records fetched and not finished."""
        return self._engine.in_flight_count if self._engine is not None else 0

    def _default_registry(self) -> Any:
        from toolkit.registry.factory import default_cached_registry

        return default_cached_registry(self.settings)


def _describe(transport: Transport, bootstrap_servers: str) -> tuple[str, str, str]:
    """(broker, address, setting) for start-up messages: the transport's own ``describe()`` if it has one."""
    describe = getattr(transport, "describe", None)
    if callable(describe):
        return describe()
    return "Kafka", bootstrap_servers, "KAFKA_BOOTSTRAP_SERVERS"


def _default_models() -> ModelLookup | None:
    try:
        from toolkit.codegen.index import load_model_index
    except ImportError:
        log.warning("toolkit.codegen.index is not available: handlers get validated values, not models")
        return None
    return load_model_index()


def install_signal_handlers(consumer: KafkaConsumer, loop: asyncio.AbstractEventLoop | None = None) -> None:
    """SIGTERM and SIGINT stop ``consumer`` gracefully: stop fetching, finish in-flight work, commit."""
    loop = loop or asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, consumer.request_stop)


def run(consumer: KafkaConsumer) -> int:
    """Run ``consumer`` with signal handling until it stops; the process exit code (0 on a clean stop)."""
    try:
        asyncio.run(consumer.start(handle_signals=True))
    except ConsumerStopped as exc:
        log.error("consumer stopped: %s", exc)
        return 1
    return 0


__all__ = ["ConsumerStopped", "KafkaConsumer", "install_signal_handlers", "run"]
