"""The Kafka consumer runtime: fetch, run the pipeline and the handlers, decide, dead-letter, commit.

    consumer = KafkaConsumer(bootstrap_servers="localhost:9092", group_id="orders-service", registry=registry)
    consumer.register_handler("orders", OrderCreatedHandler(order_service))
    await consumer.start()          # runs until stop(), SIGTERM/SIGINT (handle_signals=True) or idle

How it works (docs/contracts.md, "Commits"): a poll thread owns the librdkafka consumer and hands batches
to the event loop. Each partition's records go to *lanes* (one per partition in PARTITION ordering, one per
key in KEY, one per record in UNORDERED); a lane handles its records one at a time, so a record waiting
for a retry backoff holds back only its own lane, never other partitions. At most ``max_workers`` handlers
run at once (async handlers as tasks, plain functions in a thread pool). An offset becomes committable
only when its record and every earlier one of its partition are done (handled, or dead letter
acknowledged by the broker); watermarks are stored and committed in batches every ``commit_interval_s``,
synchronously when partitions are revoked and on shutdown. At most ``max_in_flight`` records are held;
a full window (or a partition holding too many) pauses fetching until work drains.
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import logging
import signal
import time
from collections import deque
from collections.abc import Hashable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from confluent_kafka import KafkaError, TopicPartition

from toolkit.consumer.context import handling
from toolkit.consumer.deadletter import SourceRecord, build_dead_letter, minimal_dead_letter
from toolkit.consumer.handlers import HandlerLike, HandlerRegistry
from toolkit.consumer.kafka_io import DeadLetterSender, PollThread, wait_for_broker
from toolkit.consumer.kafka_log import kafka_logger
from toolkit.consumer.offsets import OffsetTracker
from toolkit.consumer.options import check_consumer_options
from toolkit.consumer.outcomes import DeadLetter, Done, ErrorPolicy, Pause, Retry, RetryPolicy, Stop, decide
from toolkit.consumer.pipeline import CompiledSchema, ModelLookup, Pipeline, Plan, Prepared, as_resolver
from toolkit.consumer.slots import WorkerSlots
from toolkit.consumer.stats import ConsumerStats
from toolkit.envelope import DecodedRecord, SerializerLike
from toolkit.errors import BrokerUnavailable, BrokerUnreachable, ConfigError, ConsumerStopped, safe_str
from toolkit.registry.base import SubjectStrategy
from toolkit.settings import ConsumerSettings, KafkaSettings, OrderingMode, Settings
from toolkit.settings import group_instance_id as instance_id

log = logging.getLogger("toolkit.consumer")

_LANE_SLICE_S = 0.005  # longest a lane runs without letting the event loop serve others


class _Partition:
    """One assigned partition: its offset tracker, its lanes, and whether fetching it is paused."""

    __slots__ = ("topic", "partition", "generation", "tracker", "lanes", "tasks", "pending", "buffered",
                 "paused", "revoked", "abandon", "eof", "waiting", "held", "unheld")

    def __init__(self, topic: str, partition: int, generation: int) -> None:
        self.topic, self.partition, self.generation = topic, partition, generation
        self.tracker = OffsetTracker()
        self.lanes: dict[Hashable, deque[Any]] = {}
        self.tasks: dict[Hashable, asyncio.Task] = {}
        self.pending: set[asyncio.Task] = set()  # dead letters waiting for the broker's acknowledgement
        self.buffered = 0
        self.paused = False
        self.revoked = False
        self.abandon = asyncio.Event()  # set on revoke/stop: stop waiting for backoffs, drop queued records
        self.eof = False
        self.waiting = 0  # lanes sleeping out a retry or outage backoff
        self.held = 0  # dead letters of this partition the broker refused, being resent
        self.unheld = asyncio.Event()  # set when held drops back to 0


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

    Raises:
        ConfigError: an argument is invalid.
    """

    def __init__(self, bootstrap_servers: str | None = None, group_id: str | None = None, *,
                 registry: Any = None, models: ModelLookup | None = None, topics: Iterable[str] | None = None,
                 max_workers: int | None = None, max_poll_records: int | None = None,
                 max_in_flight: int | None = None, ordering: OrderingMode | str | None = None,
                 error_policy: ErrorPolicy | str | None = None, retry: RetryPolicy | None = None,
                 serializer: SerializerLike | None = None, settings: Settings | None = None,
                 dlq_suffix: str | None = None, commit_interval_s: float | None = None,
                 stop_when_idle: bool = False, subject_strategy: SubjectStrategy | None = None,
                 kafka_config: dict[str, Any] | None = None, shutdown_timeout_s: float = 30.0,
                 max_nesting_depth: int | None = None, dlq_max_message_bytes: int | None = None,
                 dead_letter_producer_config: dict[str, Any] | None = None,
                 unknown_schema_grace_s: float | None = None, startup_timeout_s: float | None = None,
                 group_instance_id: str | None = None) -> None:
        topics = check_consumer_options(locals())  # ConfigError naming the option: nothing silently replaced
        kafka = settings.kafka if settings else KafkaSettings.model_construct()
        cfg = settings.consumer if settings else ConsumerSettings.model_construct()
        self.settings = settings
        self.bootstrap_servers = bootstrap_servers or kafka.bootstrap_servers
        self.group_id = group_id or kafka.group_id
        self._client_config = {**kafka.client_config(), "bootstrap.servers": self.bootstrap_servers}
        self._auto_offset_reset = kafka.auto_offset_reset
        self.startup_timeout_s = startup_timeout_s if startup_timeout_s is not None else kafka.startup_timeout_s
        try:  # the same rules (and {hostname}) as KAFKA_GROUP_INSTANCE_ID
            self.group_instance_id = (kafka.group_instance_id if group_instance_id is None
                                      else instance_id(group_instance_id))
        except ValueError as exc:
            raise ConfigError(f"group_instance_id: {exc}", setting="group_instance_id") from None
        self.max_workers = max_workers or cfg.max_workers
        self.max_poll_records = max_poll_records or cfg.max_poll_records
        self.max_in_flight = max_in_flight or cfg.max_in_flight
        self.max_nesting_depth = max_nesting_depth or cfg.max_nesting_depth
        self.ordering = OrderingMode(ordering or cfg.ordering)
        self.error_policy = ErrorPolicy(error_policy or cfg.error_policy)
        self.retry = retry or RetryPolicy(cfg.max_attempts, cfg.retry_backoff_initial_s,
                                          cfg.retry_backoff_max_s)
        self.dlq_suffix = dlq_suffix if dlq_suffix is not None else cfg.dlq_suffix
        self.dlq_max_message_bytes = dlq_max_message_bytes or cfg.dlq_max_message_bytes
        self._dead_letter_config = dict(dead_letter_producer_config or {})
        self.commit_interval_s = commit_interval_s or cfg.commit_interval_s
        self.stop_when_idle = stop_when_idle
        grace = cfg.unknown_schema_grace_s if unknown_schema_grace_s is None else unknown_schema_grace_s
        self.unknown_schema_grace_s = float(grace)
        self.shutdown_timeout_s = shutdown_timeout_s
        self.topics = list(topics) if topics is not None else None
        self._kafka_config = dict(kafka_config or {})
        self._registry = registry
        self._models = models
        self._serializer = serializer
        if subject_strategy is None:
            from toolkit.registry.factory import default_subject_strategy

            subject_strategy = default_subject_strategy(settings)
        self._subject_strategy = subject_strategy
        self.handlers = HandlerRegistry()
        self.stats = ConsumerStats()
        self._parts: dict[tuple[str, int], _Partition] = {}
        self._in_flight = 0
        self._stop_event: asyncio.Event | None = None
        self._stopping = False
        self._failure: BaseException | None = None
        self._running = False

    @classmethod
    def from_settings(cls, settings: Settings, registry: Any = None, models: ModelLookup | None = None,
                      **overrides: Any) -> KafkaConsumer:
        """A consumer configured entirely from :func:`~toolkit.settings.load_settings`."""
        return cls(settings=settings, registry=registry, models=models, **overrides)

    def register_handler(self, topic: str, handler: HandlerLike, message_type: str | None = None, *,
                         accepts: dict[str, Any] | None = None) -> None:
        """Route messages of ``topic`` (or only its ``message_type``) to ``handler``.

        Raises:
            ConfigError: a handler is already registered for that topic / message type, or it is not callable.
        """
        self.handlers.register(topic, handler, message_type, accepts)
        if self._running:
            self._pipeline.forget_plans()  # routes may have changed

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
        topics = self.topics or self.handlers.topics
        if not topics:
            raise ConfigError("no topics: register a handler or pass topics=")
        loop = asyncio.get_running_loop()
        # Built before anything is marked running: a registry or model index that cannot be loaded leaves
        # the consumer as it was, so it can be fixed and started again.
        pipeline = Pipeline(as_resolver(self._registry or self._default_registry()), self.handlers,
                            self._models if self._models is not None else _default_models(),
                            self._serializer, self._subject_strategy, max_depth=self.max_nesting_depth,
                            unknown_schema_grace_s=self.unknown_schema_grace_s)
        self._loop, self._pipeline, self._running = loop, pipeline, True
        self._stop_event = asyncio.Event()
        self._stopping, self._failure, self._parts, self._in_flight = False, None, {}, 0
        self._workers = WorkerSlots(self.max_workers)
        self._handler_pool = ThreadPoolExecutor(self.max_workers, thread_name_prefix="epistle-handler")
        self._io_pool = ThreadPoolExecutor(2, thread_name_prefix="epistle-io")
        self._poller = PollThread(self._consumer_config(), topics, loop,
                                  max_poll_records=self.max_poll_records, on_batch=self._dispatch,
                                  on_assign=self._assign, release=self._release,
                                  in_flight=lambda: self._in_flight, max_in_flight=self.max_in_flight,
                                  drain_timeout_s=self.shutdown_timeout_s)
        if handle_signals:
            try:
                install_signal_handlers(self, loop)
            except (RuntimeError, ValueError) as exc:  # a loop outside the main thread cannot get signals
                self._abort_start(None, signals=True)  # (removes whichever handler was added)
                raise ConfigError(f"handle_signals=True needs the event loop of the main thread ({exc}); "
                                  "run the consumer there or pass handle_signals=False",
                                  setting="handle_signals") from None
        try:
            metadata = await loop.run_in_executor(None, wait_for_broker, self._broker_check_config(),
                                                  self.startup_timeout_s)
        except BaseException as exc:  # cancelled too: the consumer must not stay "running"
            self._abort_start(None, signals=handle_signals)
            if not isinstance(exc, BrokerUnavailable):
                raise
            raise BrokerUnreachable(
                f"no Kafka broker answered at {self.bootstrap_servers} within {self.startup_timeout_s:g}s "
                f"({exc}); check KAFKA_BOOTSTRAP_SERVERS, or give a slow cluster longer with "
                f"KAFKA_STARTUP_TIMEOUT_S (startup_timeout_s=)",
                bootstrap_servers=self.bootstrap_servers, timeout_s=self.startup_timeout_s) from None
        missing = [topic for topic in topics if topic not in metadata.topics]
        if missing and self.stop_when_idle:
            self._abort_start(None, signals=handle_signals)
            raise ConfigError(f"topic(s) {', '.join(missing)} do not exist: stop_when_idle (--until-idle) would "
                              "never see them drained; create them or fix topics= (--topics) or the handlers' "
                              "registrations", setting="topics")
        if missing:
            log.warning("topic(s) %s do not exist yet", ", ".join(missing))
        sender = None
        try:
            sender = DeadLetterSender(self._client_config, loop, producer_overrides=self._dead_letter_config,
                                      max_message_bytes=self.dlq_max_message_bytes)
            self._poller.start()
        except Exception as exc:  # librdkafka refused the configuration
            self._abort_start(sender, signals=handle_signals)
            raise ConfigError(f"the Kafka client could not be created: {exc}",
                              setting="kafka_config") from None
        self._sender = sender
        log.info("consuming %s as group %s", topics, self.group_id)
        ticker = asyncio.create_task(self._commit_ticker())
        try:
            await self._stop_event.wait()
        finally:
            ticker.cancel()
            await self._shutdown()
            if handle_signals:
                for sig in (signal.SIGTERM, signal.SIGINT):
                    loop.remove_signal_handler(sig)
            self._running = False
        if self._failure is not None:
            raise self._failure

    def _abort_start(self, sender: DeadLetterSender | None, *, signals: bool) -> None:
        """Undo a start that failed before consuming: nothing was fetched, so nothing is committed."""
        if sender is not None:
            sender.close(timeout_s=0)
        if signals:
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._loop.remove_signal_handler(sig)
        self._handler_pool.shutdown(wait=False)
        self._io_pool.shutdown(wait=False)
        self._running = False

    async def stop(self) -> None:
        """Stop fetching, finish in-flight handlers, commit, close. Returns once requested (start() ends)."""
        self.request_stop()

    def request_stop(self) -> None:
        """Synchronous form of :meth:`stop`; safe from signal handlers, sync handlers and other threads."""
        loop = getattr(self, "_loop", None)
        if loop is None or self._stop_event is None:
            return
        try:
            on_loop = asyncio.get_running_loop() is loop
        except RuntimeError:
            on_loop = False
        if on_loop:
            self._set_stop()
        else:
            loop.call_soon_threadsafe(self._set_stop)

    def _set_stop(self) -> None:
        if self._stop_event is not None and not self._stop_event.is_set():
            log.info("stopping: no more fetching; finishing in-flight work")
            self._stop_event.set()

    @property
    def in_flight(self) -> int:
        """Records fetched and not finished."""
        return self._in_flight

    def _broker_check_config(self) -> dict[str, Any]:
        """The start-up check's settings: ours with ``kafka_config`` over them, as the consumer gets them
        (SASL/SSL may be given only there). librdkafka ignores consumer-only properties in an admin client."""
        return {**self._client_config, **self._kafka_config}

    def _consumer_config(self) -> dict[str, Any]:
        return {**self._client_config, "group.id": self.group_id,
                "auto.offset.reset": self._auto_offset_reset,
                "enable.auto.commit": False, "enable.auto.offset.store": False,
                "enable.partition.eof": True, "partition.assignment.strategy": "cooperative-sticky",
                # librdkafka's prefetch queue (default 64 MB) is memory beside our in-flight window.
                "queued.max.messages.kbytes": 32768,
                "logger": kafka_logger(),  # librdkafka's lines via Python logging, repeats held back
                **({"group.instance.id": self.group_instance_id} if self.group_instance_id else {}),
                **self._kafka_config}

    def _default_registry(self) -> Any:
        from toolkit.registry.factory import default_cached_registry

        return default_cached_registry(self.settings)

    async def _shutdown(self) -> None:
        self._stopping = True
        self._poller.stop_fetching()
        for part in list(self._parts.values()):
            self._drop_queued(part)
            part.abandon.set()
        tasks = [t for part in self._parts.values() for t in (*part.tasks.values(), *part.pending)]
        if tasks:
            done, pending = await asyncio.wait(tasks, timeout=self.shutdown_timeout_s)
            for task in pending:
                task.cancel()
        offsets = self._watermarks(list(self._parts.values()), only_moved=False)
        try:
            await asyncio.wrap_future(self._poller.store_and_commit(offsets, sync=True))
        except Exception as exc:
            log.warning("final commit failed: %s", exc)
        try:
            await asyncio.wait_for(asyncio.wrap_future(self._poller.close()), self.shutdown_timeout_s)
        except TimeoutError:
            log.error("the Kafka consumer did not close within %.0fs", self.shutdown_timeout_s)
        undelivered = await self._loop.run_in_executor(None, self._sender.close)
        if undelivered:
            log.error("%d dead letters were not acknowledged; their offsets were not committed", undelivered)
        self._handler_pool.shutdown(wait=False, cancel_futures=True)
        self._io_pool.shutdown(wait=False, cancel_futures=True)
        log.info("stopped; %s", self.stats.as_dict())

    async def _commit_ticker(self) -> None:
        while True:
            await asyncio.sleep(self.commit_interval_s)
            offsets = self._watermarks(list(self._parts.values()), only_moved=not self._poller.commit_failed)
            if offsets:
                self._poller.commit_failed = False
                self._poller.store_and_commit(offsets)

    @staticmethod
    def _watermarks(parts: list[_Partition], only_moved: bool) -> list[tuple[str, int, int, int]]:
        offsets = []
        for part in parts:
            offset = part.tracker.to_commit() if only_moved else part.tracker.watermark
            if offset is not None:
                offsets.append((part.topic, part.partition, offset, part.generation))
        return offsets

    # -- rebalance (called via the poll thread) -------------------------------------------------------
    def _assign(self, assigned: list[tuple[str, int, int]]) -> None:
        for topic, partition, generation in assigned:
            self._parts[(topic, partition)] = _Partition(topic, partition, generation)

    async def _release(self, tps: list[tuple[str, int]], lost: bool) -> list[TopicPartition]:
        """Drain revoked partitions: drop queued records, let running handlers finish, return watermarks."""
        parts = [part for tp in tps if (part := self._parts.get(tp)) is not None]
        for part in parts:
            part.revoked = True
            part.abandon.set()
            self._drop_queued(part)
        tasks = [t for part in parts for t in (*part.tasks.values(), *part.pending)]
        if tasks:
            await asyncio.wait(tasks, timeout=self.shutdown_timeout_s)
        offsets = []
        for part in parts:
            self._parts.pop((part.topic, part.partition), None)
            for lane in part.lanes.values():  # a handler that outlived the drain timeout: forget its record
                self._in_flight -= len(lane)
                part.buffered -= len(lane)
                lane.clear()
            if part.tracker.watermark is not None and not lost:
                offsets.append(TopicPartition(part.topic, part.partition, part.tracker.watermark))
        self._update_pauses()
        return offsets

    # -- fetching --------------------------------------------------------------------------------------
    def _dispatch(self, batch: list[Any]) -> None:
        eof_seen = False
        lane_key_of = self._lane_key
        by_partition = self.ordering is OrderingMode.PARTITION
        for msg in batch:
            err = msg.error()
            if err is not None:
                eof_seen |= self._fetch_error(msg, err)
                continue
            part = self._parts.get((msg.topic(), msg.partition()))
            if part is None or part.revoked or self._stopping:
                continue  # fetched before a revoke: the next owner gets it, nothing was committed
            try:
                part.tracker.add(msg.offset())
            except ValueError:
                log.warning("skipping redelivered offset", extra=_extra(msg))
                continue
            part.eof = False
            lane_key = None if by_partition else lane_key_of(msg)
            lane = part.lanes.get(lane_key)
            if lane is None:
                lane = part.lanes[lane_key] = deque()
            lane.append(msg)
            part.buffered += 1
            self._in_flight += 1
            if lane_key not in part.tasks:
                part.tasks[lane_key] = asyncio.create_task(self._run_lane(part, lane_key, lane))
        self._update_pauses()
        if eof_seen:
            self._check_idle()

    def _lane_key(self, msg: Any) -> Hashable:
        if self.ordering is OrderingMode.PARTITION:
            return None
        if self.ordering is OrderingMode.KEY:
            return msg.key()
        return msg.offset()

    def _fetch_error(self, msg: Any, err: KafkaError) -> bool:
        if err.code() == KafkaError._PARTITION_EOF:
            part = self._parts.get((msg.topic(), msg.partition()))
            if part is not None:
                part.eof = True
            return True
        # librdkafka reports a fatal consumer error (e.g. fenced by another member with the same
        # group.instance.id) as _FATAL on the message, and confluent-kafka builds that error with fatal()
        # False: the consumer is dead either way, so stop rather than wait for retries that never come.
        if err.fatal() or err.code() == KafkaError._FATAL:
            hint = ""
            text = err.str() or ""
            if (err.code() == KafkaError.FENCED_INSTANCE_ID or "group.instance.id" in text
                    or "fenced" in text.lower()):
                hint = (f"; another process joined with group.instance.id {self.group_instance_id!r}: give each "
                        "process of the group its own KAFKA_GROUP_INSTANCE_ID")
            self._fail(ConsumerStopped(f"fatal Kafka error: {err.str()}{hint}"))
        else:
            log.warning("fetch error (librdkafka retries): %s", err.str(), extra={"topic": msg.topic()})
        return False

    def _update_pauses(self) -> None:
        """Pause a partition that is held up (a lane waiting out a backoff) with many records buffered, so
        the others keep the window; the whole-window limit is the poll thread's job. A partition that is
        merely busy is never paused: a pause drops librdkafka's prefetch, and each resume waits for a
        new fetch (that cost 40 % of the throughput when every partition above half the window was paused)."""
        high = max(self.max_poll_records, self.max_in_flight // 2)
        to_pause, to_resume = [], []
        for part in self._parts.values():
            want = ((part.waiting > 0 and part.buffered >= high)
                    or (part.paused and part.buffered > high // 2))
            if want != part.paused:
                part.paused = want
                (to_pause if want else to_resume).append((part.topic, part.partition, part.generation))
        if to_pause:
            self._poller.pause(to_pause)
        if to_resume:
            self._poller.resume(to_resume)

    def _check_idle(self) -> None:
        if (self.stop_when_idle and self._parts and self._in_flight == 0
                and all(part.eof for part in self._parts.values())):
            log.info("every assigned partition is drained; stopping (stop_when_idle)")
            self.request_stop()

    # -- processing --------------------------------------------------------------------------------------
    async def _run_lane(self, part: _Partition, lane_key: Hashable, lane: deque[Any]) -> None:
        # A handler that never awaits would keep the loop to this lane for a whole window: hand the loop
        # over every few milliseconds so commits, new batches and signals are served on time.
        yield_at = time.monotonic() + _LANE_SLICE_S
        try:
            while lane and not part.revoked and not self._stopping:
                if time.monotonic() >= yield_at:
                    await asyncio.sleep(0)
                    yield_at = time.monotonic() + _LANE_SLICE_S
                    continue
                if part.held:  # a dead letter of this partition is refused: wait until it is delivered
                    await self._until_unheld(part)
                    if part.abandon.is_set():
                        break
                    continue
                msg = lane[0]
                try:
                    finished = await self._process(part, msg)
                except Exception as exc:  # a bug of ours: stop rather than silently stall the partition
                    log.exception("internal error processing a record", extra=_extra(msg))
                    self._fail(ConsumerStopped(f"internal error: {type(exc).__name__}: {exc}",
                                               topic=part.topic, partition=part.partition,
                                               offset=msg.offset()))
                    return
                if lane and lane[0] is msg:
                    lane.popleft()
                    part.buffered -= 1
                    self._in_flight -= 1
                if finished:
                    part.tracker.done(msg.offset())
                elif finished is False and not part.revoked:
                    break  # stopping (STOP policy or shutdown): nothing after it may be committed
        finally:
            part.tasks.pop(lane_key, None)
            if not lane:
                part.lanes.pop(lane_key, None)
            self._update_pauses()
            self._check_idle()

    async def _process(self, part: _Partition, msg: Any) -> bool | None:
        """Run one record to a final outcome: True when done (commit may pass it), None when its dead
        letter is on its way (done on acknowledgement), False when abandoned (never committed)."""
        topic = part.topic
        stats = self.stats[topic]
        attempt, outages = 1, 0
        prepared: Prepared | None = None
        workers = self._workers
        while True:
            try:
                if prepared is None:
                    # No coroutine on the hot path: the registry is asked (off the loop) only on a miss.
                    decoded, source = self._decode(msg)
                    if isinstance(source, tuple):
                        source = await self._loop.run_in_executor(self._io_pool, self._pipeline.resolve, source)
                    prepared = self._finish(msg, decoded, source)
                prepared.message.attempt = attempt
                route = prepared.route
                handled = handling.set(prepared.message)  # for the producer's correlationId carry-over
                try:
                    if route.is_async and workers.try_acquire():  # the common case: no extra coroutine
                        try:
                            result = await route.call(prepared.message)
                        finally:
                            workers.release()
                    else:
                        result = await self._call(prepared)
                finally:
                    handling.reset(handled)
            except asyncio.CancelledError:
                raise
            except BaseException as exc:  # noqa: BLE001 - every failure is an outcome
                result = exc
            if result is True or result is None:  # the common case, as decide() has it: done
                stats.processed += 1
                if log.isEnabledFor(logging.DEBUG):
                    log.debug("done", extra=_extra(msg, prepared))
                return True
            outcome = decide(result, attempt, self.retry, self.error_policy)
            extra = _extra(msg, prepared)  # log context, built only off the happy path
            if isinstance(outcome, Done):
                stats.processed += 1
                return True
            if isinstance(outcome, Retry):
                stats.retried += 1
                log.info("retrying in %.2fs (attempt %d failed: %s)", outcome.delay_s, attempt,
                         outcome.reason, extra=extra)
                if await self._wait(part, outcome.delay_s):
                    return False
                attempt += 1
                continue
            if isinstance(outcome, Pause):
                outages += 1
                stats.paused += 1
                delay = min(self.retry.delay(outages), outcome.max_delay_s)
                log.warning("outage, waiting %.2fs: %s", delay, outcome.reason, extra=extra)
                if await self._wait(part, delay):
                    return False
                continue
            if isinstance(outcome, Stop):
                dl = outcome.dead_letter
                log.error("stopping (ErrorPolicy.STOP) at %s: %s", dl.stage, dl.reason, extra=extra)
                self._fail(ConsumerStopped(f"{dl.stage}: {dl.reason}", stage=dl.stage, topic=topic,
                                           partition=part.partition, offset=msg.offset()))
                return False
            assert isinstance(outcome, DeadLetter)
            attempts = attempt if prepared is not None else 1
            return await self._dead_letter(part, msg, outcome, attempts, extra)

    def _decode(self, msg: Any) -> tuple[DecodedRecord, Plan | CompiledSchema | tuple[str, int]]:
        """Stages decode and envelope, then what the rest needs: the plan of an earlier record with the
        same header, else the schema if already resolved, else the (subject, version) to ask for."""
        pipeline, topic = self._pipeline, msg.topic()
        decoded = pipeline.decode(msg.value())
        plan = pipeline.plan(topic, decoded.header)
        if plan is not None:
            return decoded, plan
        key = pipeline.subject_of(topic, decoded)
        compiled = pipeline.cached(key)
        return decoded, key if compiled is None else compiled

    def _finish(self, msg: Any, decoded: DecodedRecord, source: Plan | CompiledSchema) -> Prepared:
        _, timestamp = msg.timestamp()
        return self._pipeline.finish(decoded, source, topic=msg.topic(), partition=msg.partition(),
                                     offset=msg.offset(), key=msg.key(), value=msg.value(),
                                     headers=msg.headers(), timestamp=timestamp if timestamp > 0 else None)

    async def _call(self, prepared: Prepared) -> Any:
        """Run the handler in a worker slot, waiting for one; plain functions in the handler pool."""
        route = prepared.route
        workers = self._workers
        await workers.acquire()
        try:
            if route.is_async:
                return await route.call(prepared.message)
            # A copy of this context, so the worker thread sees the message in `handling` too.
            result = await self._loop.run_in_executor(self._handler_pool, contextvars.copy_context().run,
                                                      route.call, prepared.message)
            if inspect.isawaitable(result):
                result = await result
            return result
        finally:
            workers.release()

    async def _dead_letter(self, part: _Partition, msg: Any, outcome: DeadLetter, attempts: int,
                           extra: dict[str, Any]) -> bool | None:
        """Produce the dead letter without waiting for the broker: the lane moves on, and the record's
        offset is marked done by :meth:`_confirm_dead_letter` once the broker acknowledged it.
        Returns None (pending) or False (abandoned before the first send)."""
        headers = _headers(msg)
        try:
            if headers is None:
                raise ValueError("the record's headers cannot be read")
            ts_type, ts = msg.timestamp()
            source = SourceRecord(msg.topic(), msg.partition(), msg.offset(), msg.key(), msg.value(),
                                  headers, ts if ts_type and ts >= 0 else None, ts_type)
            record = build_dead_letter(source, stage=outcome.stage, reason=outcome.reason, error=outcome.error,
                                       details=outcome.details, consumer_group=self.group_id, attempts=attempts,
                                       suffix=self.dlq_suffix, max_bytes=self._sender.max_message_bytes)
        except Exception:  # a bug of ours must not stop the consumer: the exact bytes and the reason still go
            log.exception("building the dead letter failed; sending a minimal one", extra=extra)
            record = minimal_dead_letter(msg.topic(), msg.partition(), msg.offset(), msg.key(), msg.value(),
                                         headers, stage=outcome.stage, reason=outcome.reason,
                                         consumer_group=self.group_id, suffix=self.dlq_suffix)
        failures = 0
        while not self._sender.knows(record.topic):
            try:
                await self._loop.run_in_executor(self._io_pool, self._sender.ensure_topic, record.topic)
            except BrokerUnavailable as exc:
                failures += 1
                if await self._dead_letter_failed(part, failures, exc, extra):
                    return False
        task = asyncio.create_task(self._confirm_dead_letter(part, msg.offset(), record, outcome, extra))
        part.pending.add(task)
        self._in_flight += 1
        return None

    async def _confirm_dead_letter(self, part: _Partition, offset: int, record: Any, outcome: DeadLetter,
                                   extra: dict[str, Any]) -> None:
        """Wait for the broker's acknowledgement. A dead letter it refuses (too large, an outage) holds its
        partition: no new record of it starts until the dead letter is delivered (resent alone, with
        backoff); other partitions go on."""
        stats = self.stats[part.topic]
        failures = 0
        try:
            while True:
                try:
                    await self._sender.send(record, alone=failures > 0)
                except Exception as exc:  # noqa: BLE001 - whatever failed, retry: a dead task would stall commits
                    failures += 1
                    if failures == 1:
                        part.held += 1
                        part.unheld.clear()
                    if await self._dead_letter_failed(part, failures, exc, extra):
                        return  # abandoned: not done, so never committed; redelivered to the next owner
                    continue
                stats.dead_lettered[outcome.stage] += 1
                log.warning("dead-lettered to %s: %s: %s", record.topic, outcome.stage, outcome.reason,
                            extra=extra)
                part.tracker.done(offset)
                return
        finally:
            if failures:
                part.held -= 1
                if not part.held:
                    part.unheld.set()
            part.pending.discard(asyncio.current_task())  # type: ignore[arg-type]
            self._in_flight -= 1
            self._check_idle()

    @staticmethod
    async def _until_unheld(part: _Partition) -> None:
        """Wait until the partition's refused dead letters are delivered, or it is revoked or stopping."""
        waits = [asyncio.ensure_future(part.unheld.wait()), asyncio.ensure_future(part.abandon.wait())]
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for wait in waits:
                wait.cancel()

    async def _dead_letter_failed(self, part: _Partition, failures: int, exc: BaseException,
                                  extra: dict[str, Any]) -> bool:
        """Log, count, back off. True when the partition was revoked or the consumer stops meanwhile."""
        self.stats[part.topic].dead_letter_send_failures += 1
        delay = self.retry.delay(failures)
        # Retried forever (the offset stays uncommitted); persistent failures need an operator.
        level = logging.WARNING if failures < 5 else logging.ERROR
        why = exc if isinstance(exc, BrokerUnavailable) else f"{type(exc).__name__}: {safe_str(exc)}"
        log.log(level, "dead letter not delivered (failure %d), retrying in %.2fs: %s", failures, delay, why,
                extra=extra)
        return await self._wait(part, delay)

    async def _wait(self, part: _Partition, delay_s: float) -> bool:
        """Sleep ``delay_s`` unless the partition is revoked or the consumer stops; True if interrupted."""
        if part.abandon.is_set():
            return True
        part.waiting += 1
        self._update_pauses()
        try:
            await asyncio.wait_for(part.abandon.wait(), timeout=delay_s)
        except TimeoutError:
            return False
        finally:
            part.waiting -= 1
        return True

    def _drop_queued(self, part: _Partition) -> None:
        """Forget records not yet started (never committed, so they are redelivered to the next owner)."""
        for key, lane in part.lanes.items():
            keep = 1 if key in part.tasks and lane else 0
            while len(lane) > keep:
                lane.pop()
                part.buffered -= 1
                self._in_flight -= 1

    def _fail(self, failure: BaseException) -> None:
        if self._failure is None:
            self._failure = failure
        for part in self._parts.values():
            part.abandon.set()
        self.request_stop()


def _extra(msg: Any, prepared: Prepared | None = None) -> dict[str, Any]:
    """The structured-log context of a record (topic, partition, offset, messageId, correlationId)."""
    header = prepared.message.header if prepared is not None else None
    return {"topic": msg.topic(), "partition": msg.partition(), "offset": msg.offset(),
            "messageId": header.message_id if header else None,
            "correlationId": header.correlation_id if header else None}


def _headers(msg: Any) -> list[tuple[str, bytes | None]] | None:
    """The record's headers; None when the client cannot decode them."""
    try:
        return list(msg.headers() or [])
    except Exception:  # noqa: BLE001
        return None


def _default_models() -> ModelLookup | None:
    try:
        from toolkit.codegen.index import load_model_index  # type: ignore[import-not-found]
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
