"""Prometheus metrics for a consumer: :class:`PrometheusMiddleware`, and the health the probes report.

    metrics = PrometheusMiddleware()                 # the global registry; or registry=CollectorRegistry()
    consumer = KafkaConsumer(..., middleware=[metrics])

The per-record metrics (``epistle_records_total``, ``epistle_handler_duration_seconds``) are added up in
plain dicts on the event loop, which costs a fraction of prometheus-client's locked updates, and handed to
the registry every ``sample_interval_s`` (and when the consumer stops): a scrape sees them at most that
late. Commits (the poll thread) and registry lookups (the registry threads) update prometheus-client's
thread-safe metrics directly. The consumer's state (in-flight records, lag, paused partitions, health) is
copied into a snapshot on the loop at the same interval, and a scrape reads only that snapshot: the
engine's state belongs to the loop (docs/threads.md), and a loop that stops answering shows as a snapshot
that stops getting younger, which is what ``/healthz`` checks.

Label values are bounded: topics and partitions are the consumer's own; ``message_type`` and
``schema_version`` come from record headers, so at most ``MAX_LABEL_VALUES`` distinct values of each are
used (later ones are counted as ``other``), and a record that failed before its header was read (stages
``decode`` and ``envelope``) is counted as ``unknown``. No offset, key or id is ever a label. Every metric
and probe is described in docs/operations.md.
"""

from __future__ import annotations

import asyncio
import bisect
import logging
import threading
import time
import weakref
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from toolkit import _args
from toolkit.consumer.middleware import Middleware
from toolkit.consumer.outcomes import DONE, Done, Outcome, Pause, RetryAfter, Stop, ToDeadLetter
from toolkit.consumer.pipeline import Message as _Message
from toolkit.consumer.pipeline import message_labels
from toolkit.consumer.transport import FetchState, ObservableTransport
from toolkit.errors import ConfigError, InvalidArgument

try:
    from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
except ImportError:  # pragma: no cover - the extra is in the dev dependencies
    raise ConfigError(
        "Prometheus metrics need prometheus-client: pip install 'ouroboros-epistle-forge[metrics]'", setting="metrics"
    ) from None

if TYPE_CHECKING:
    from toolkit.consumer.deadletter import DeadLetterRecord
    from toolkit.consumer.engine import Engine, PartitionState
    from toolkit.consumer.pipeline import Message, Pipeline
    from toolkit.consumer.transport import Record

log = logging.getLogger("toolkit.observability")

UNKNOWN = "unknown"
"""``message_type`` / ``schema_version`` of a record whose header was never read."""
OTHER = "other"
"""The label of values past ``MAX_LABEL_VALUES``."""
MAX_LABEL_VALUES = 100
MAX_LABEL_LENGTH = 100

HANDLER_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
COMMIT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
REGISTRY_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

PAUSE_REASONS = ("backpressure", "retry", "outage", "dead_letter")
_HEADERLESS_STAGES = frozenset({"decode", "envelope"})
_MAX_CACHED_KEYS = 10_000
_now = time.perf_counter
_bucket = bisect.bisect_left
_RECORD_LABELS = ["topic", "message_type", "schema_version", "outcome", "stage"]
_STATE_GAUGES = (
    "epistle_in_flight_records",
    "epistle_assigned_partitions",
    "epistle_consumer_lag",
    "epistle_partition_paused",
    "epistle_healthy",
    "epistle_ready",
)


class _Metrics:
    """The metrics of one CollectorRegistry, shared by every middleware that uses it (a name can be
    registered once per registry)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        # Added to by the middleware's flushes (under the lock), read by scrapes.
        self.records: dict[tuple[str, ...], float] = {}
        self.handler: dict[str, list[float]] = {}  # topic -> non-cumulative bucket counts (+Inf last), then sum
        self.commits = Counter(
            "epistle_commits", "Offset commit requests answered by the broker, by result", ["result"], registry=registry
        )
        self.commit_duration = Histogram(
            "epistle_commit_duration_seconds",
            "Offset commit requests, from the request to the broker's answer",
            buckets=COMMIT_BUCKETS,
            registry=registry,
        )
        self.registry_lookups = Counter(
            "epistle_registry_lookups",
            "Schema lookups in the registry cache by result: hit, cached_not_found, "
            "fetched, not_found, unavailable, error",
            ["result"],
            registry=registry,
        )
        self.registry_duration = Histogram(
            "epistle_registry_request_duration_seconds",
            "Requests to the schema registry (retries and compiling a new schema included), by result",
            ["result"],
            buckets=REGISTRY_BUCKETS,
            registry=registry,
        )
        self.dead_letter_failures = Counter(
            "epistle_dead_letter_send_failures",
            "Dead letters the broker refused (each is resent until delivered)",
            ["topic"],
            registry=registry,
        )
        self.recreated = Counter(
            "epistle_consumer_recreated",
            "Kafka consumers the rejoin watchdog recreated: out of their group and not getting back in",
            registry=registry,
        )
        self.sources: weakref.WeakSet[PrometheusMiddleware] = weakref.WeakSet()
        self.lock = threading.Lock()
        registry.register(_ConsumerCollector(self))
        self._values: dict[str, set[str]] = {"message_type": set(), "schema_version": set()}

    def add(self, records: dict[tuple[str, ...], int], handler: dict[str, list[float]]) -> None:
        """Add a middleware's counts since its last flush."""
        with self.lock:
            totals = self.records
            for labels, count in records.items():
                totals[labels] = totals.get(labels, 0) + count
            for topic, counts in handler.items():
                total = self.handler.get(topic)
                if total is None:
                    self.handler[topic] = list(counts)
                else:
                    for i, seconds in enumerate(counts):
                        total[i] += seconds

    def label(self, kind: str, value: str) -> str:
        """``value`` as a label of ``kind``: itself while fewer than MAX_LABEL_VALUES are in use, else OTHER."""
        values = self._values[kind]
        if value in values:
            return value
        if not value or len(value) > MAX_LABEL_LENGTH or not value.isprintable():
            return OTHER
        with self.lock:
            if len(values) < MAX_LABEL_VALUES:
                values.add(value)
                return value
        return OTHER


_BY_REGISTRY: weakref.WeakKeyDictionary[CollectorRegistry, _Metrics] = weakref.WeakKeyDictionary()
_BY_REGISTRY_LOCK = threading.Lock()


def _metrics_for(registry: CollectorRegistry) -> _Metrics:
    with _BY_REGISTRY_LOCK:
        metrics = _BY_REGISTRY.get(registry)
        if metrics is None:
            try:
                metrics = _BY_REGISTRY[registry] = _Metrics(registry)
            except ValueError as exc:  # a name is taken in that registry by other code
                raise ConfigError(
                    f"registry: {exc}; give the middleware a registry of its own "
                    "(registry=prometheus_client.CollectorRegistry())",
                    setting="registry",
                ) from None
        return metrics


@dataclass(frozen=True, slots=True)
class _Snapshot:
    """The consumer's state as the event loop last saw it."""

    taken: float  # time.monotonic() on the loop: the loop's heartbeat
    group: str
    in_flight: int
    partitions: tuple[PartitionState, ...]
    lag: dict[tuple[str, int], int]
    fetch: FetchState | None

    def reasons(self, state: PartitionState) -> list[str]:
        """Why ``state``'s partition is held back (PAUSE_REASONS), if it is."""
        backpressure = state.paused or (self.fetch is not None and self.fetch.window_full)
        flags = (backpressure, state.retrying > 0, state.outage > 0, state.held_dead_letters > 0)
        return [reason for reason, on in zip(PAUSE_REASONS, flags, strict=True) if on]


@dataclass(frozen=True, slots=True)
class Probe:
    """The answer of a health probe: ``ok`` and what it is based on (the probe's JSON body)."""

    ok: bool
    detail: dict[str, Any]


class _CommitObserver:
    """The transport's :class:`~toolkit.consumer.transport.TransportObserver` (on the poll thread)."""

    def __init__(self, metrics: _Metrics) -> None:
        self._metrics = metrics

    def on_commit(self, seconds: float, ok: bool) -> None:
        self._metrics.commits.labels("ok" if ok else "failed").inc()
        self._metrics.commit_duration.observe(seconds)

    def on_recreated(self) -> None:
        self._metrics.recreated.inc()


class PrometheusMiddleware(Middleware):
    """Prometheus metrics of one consumer, and the health its probes report (:meth:`health`,
    :meth:`readiness`; served by :class:`~toolkit.observability.server.MetricsServer`).

    Args:
        registry: where the metrics are registered: prometheus-client's global registry by default (what
            ``prometheus_client.start_http_server`` and :class:`MetricsServer` serve). Middleware sharing a
            registry share its counters; the per-partition gauges carry ``consumer_group``.
        sample_interval_s: how often the consumer's state is copied for scrapes and probes.
        lag_interval_s: how often the lag is measured (librdkafka's ``statistics.interval.ms`` unless
            ``kafka_config`` sets it).
        health_timeout_s: ``/healthz`` fails when the event loop or the poll thread has not gone round
            for longer than this (``EPISTLE_HEALTH_TIMEOUT_S``). Leave it above ``shutdown_timeout_s``: the
            poll thread waits that long for a revoked partition's handlers.

    Raises:
        ConfigError: a metric name is already taken in ``registry`` by other code.
        InvalidArgument: an interval is not a positive number.
    """

    def __init__(
        self,
        registry: CollectorRegistry | None = None,
        *,
        sample_interval_s: float = 1.0,
        lag_interval_s: float = 5.0,
        health_timeout_s: float = 60.0,
    ) -> None:
        if registry is not None and not isinstance(registry, CollectorRegistry):
            raise InvalidArgument(
                f"registry: expected a prometheus_client.CollectorRegistry, got {type(registry).__name__}",
                argument="registry",
            )
        self.sample_interval_s = _args.number("sample_interval_s", sample_interval_s, positive=True)
        self.lag_interval_s = _args.number("lag_interval_s", lag_interval_s, positive=True)
        self.health_timeout_s = _args.number("health_timeout_s", health_timeout_s, positive=True)
        self.registry = REGISTRY if registry is None else registry
        self._metrics = _metrics_for(self.registry)
        self._commits = _CommitObserver(self._metrics)
        # Counted on the loop since the last flush: records by (topic, messageType, schemaVersion as sent,
        # outcome, stage) or by their labels (key starting with None); handler durations by topic.
        self._records: dict[tuple[Any, ...], int] = {}
        self._processed: dict[tuple[str, str, str], int] = {}  # the common case, by (topic, type, version)
        self._handler: dict[str, list[float]] = {}
        self._labels: dict[tuple[Any, ...], tuple[str, ...]] = {}  # record key -> label values
        self._pipeline: Pipeline | None = None
        self._transport: ObservableTransport | None = None
        self._resolver: Any = None
        self._task: asyncio.Task[None] | None = None
        self._snapshot: _Snapshot | None = None
        self._state = "not started"
        self._started_at = 0.0

    # -- lifecycle (on the loop) ---------------------------------------------------------------------------
    def on_start(self, engine: Engine) -> None:
        self._pipeline = engine.pipeline
        transport = engine.transport
        self._transport = transport if isinstance(transport, ObservableTransport) else None
        if self._transport is not None:
            self._transport.add_observer(self._commits, lag_interval_s=self.lag_interval_s)
        resolver: Any = engine.pipeline.resolver
        if callable(getattr(resolver, "add_observer", None)):
            resolver.add_observer(self._registry_lookup)
            self._resolver = resolver
        self._snapshot, self._state, self._started_at = None, "starting", time.monotonic()
        self._metrics.sources.add(self)
        # The first sample runs once the transport has started (run() starts it before it next awaits).
        self._task = asyncio.get_running_loop().create_task(self._sample_forever(engine))

    def on_stop(self, engine: Engine) -> None:
        self._flush()
        self._state = "stopped"
        if self._task is not None:
            self._task.cancel()
            self._task = None
        if self._resolver is not None:
            self._resolver.remove_observer(self._registry_lookup)
            self._resolver = None
        self._metrics.sources.discard(self)

    async def _sample_forever(self, engine: Engine) -> None:
        while True:
            try:
                self._sample(engine)
            except Exception:  # noqa: BLE001 - a bug here must not stop the samples (/healthz would fail)
                log.exception("taking the metrics snapshot failed")
            await asyncio.sleep(self.sample_interval_s)

    def _sample(self, engine: Engine) -> None:
        partitions = tuple(engine.partitions())
        transport = self._transport
        lag: dict[tuple[str, int], int] = {}
        fetch = None
        if transport is not None:
            assigned = {(p.topic, p.partition) for p in partitions}
            lag = {tp: n for tp, n in transport.lag().items() if tp in assigned}
            fetch = transport.fetch_state()
        self._snapshot = _Snapshot(
            time.monotonic(), engine.options.group_id, engine.in_flight_count, partitions, lag, fetch
        )
        self._state = "running"
        self._flush()

    def _flush(self) -> None:
        """Hand the counts added up on the loop to the registry's totals."""
        records, processed, handler = self._records, self._processed, self._handler
        if not records and not processed and not handler:
            return
        self._records, self._processed, self._handler = {}, {}, {}
        for (topic, message_type, schema_version), count in processed.items():
            key = (topic, message_type, schema_version, "processed", "")
            records[key] = records.get(key, 0) + count
        labels_of = self._labels
        if len(labels_of) > _MAX_CACHED_KEYS:
            labels_of.clear()
        labelled: dict[tuple[str, ...], int] = {}
        for key, count in records.items():
            labels = labels_of.get(key)
            if labels is None:
                labels = labels_of[key] = self._label_values(key)
            labelled[labels] = labelled.get(labels, 0) + count
        self._metrics.add(labelled, handler)

    def _label_values(self, key: tuple[Any, ...]) -> tuple[str, ...]:
        if key[0] is None:  # labelled already (a record that is not a Message)
            return key[1:]
        label = self._metrics.label
        topic, message_type, schema_version, outcome, stage = key
        return topic, label("message_type", message_type), label("schema_version", schema_version), outcome, stage

    # -- probes (any thread) ----------------------------------------------------------------------------------
    def health(self) -> Probe:
        """Alive: the event loop answered within ``health_timeout_s`` and the transport's poll thread runs
        and went round its loop within it."""
        snapshot, state, limit = self._snapshot, self._state, self.health_timeout_s
        if state != "running" or snapshot is None:
            return Probe(False, {"status": state})
        now = time.monotonic()
        loop_age = now - snapshot.taken
        detail: dict[str, Any] = {"consumer_group": snapshot.group, "event_loop_s": round(loop_age, 3)}
        problems = []
        if loop_age > limit:
            problems.append(f"the event loop has not answered for {loop_age:.1f}s (limit {limit:g}s)")
        fetch = snapshot.fetch
        if fetch is not None:
            poll_age = now - (fetch.last_poll if fetch.last_poll is not None else self._started_at)
            detail["poll_s"] = round(poll_age, 3)
            if not fetch.alive:
                problems.append("the poll thread is not running")
            elif poll_age > limit:
                problems.append(f"the poll thread has not polled for {poll_age:.1f}s (limit {limit:g}s)")
        detail["status"] = "; ".join(problems) or "ok"
        return Probe(not problems, detail)

    def readiness(self) -> Probe:
        """Ready: alive, partitions assigned, and not every one of them waiting out an outage."""
        alive = self.health()
        snapshot = self._snapshot
        if not alive.ok or snapshot is None:
            return alive
        parts = snapshot.partitions
        held = sum(1 for p in parts if p.outage)
        detail = alive.detail | {"assigned_partitions": len(parts), "held_by_outage": held}
        if not parts:
            return Probe(False, detail | {"status": "no partitions assigned"})
        if held == len(parts):
            return Probe(
                False, detail | {"status": "every assigned partition waits out an outage of the registry or the broker"}
            )
        return Probe(True, detail)

    def snapshot(self) -> _Snapshot | None:
        return self._snapshot

    # -- hooks (on the loop) ------------------------------------------------------------------------------
    def on_handler_time(self, message: Message[Any], seconds: float) -> None:
        counts = self._handler.get(message.topic)
        if counts is None:
            counts = self._handler[message.topic] = [0.0] * (len(HANDLER_BUCKETS) + 2)
        counts[_bucket(HANDLER_BUCKETS, seconds)] += 1  # the first bucket whose bound >= seconds
        counts[-1] += seconds

    def on_outcome(
        self, record: Record, message: Message[Any] | None, outcome: Outcome, attempt: int, delay_s: float | None
    ) -> None:
        if outcome is DONE and message is not None:  # every record handled: as little as possible
            if message.__class__ is _Message:
                header = message.header
                key = (message.topic, header.message_type, header.schema_version)
            else:  # (a wire record's header is made only when read: the labels without it)
                key = (message.topic, *message_labels(message))
            processed = self._processed
            processed[key] = processed.get(key, 0) + 1
            return
        kind = type(outcome)
        if kind is Done:
            self._count(record, message, "processed", "")
        elif kind is RetryAfter:
            self._count(record, message, "retried", "")
        elif kind is Pause:
            self._count(record, message, "paused", "")
        elif kind is Stop:
            self._count(record, message, "stopped", outcome.dead_letter.stage)  # type: ignore[union-attr]
        # ToDeadLetter: counted once the broker acknowledged the dead letter (on_dead_letter)

    def on_dead_letter(
        self,
        record: Record,
        dead_letter: DeadLetterRecord,
        outcome: ToDeadLetter,
        error: BaseException | None,
        failures: int,
        delay_s: float | None,
    ) -> None:
        if error is None:
            self._count(record, None, "dead_lettered", outcome.stage)
        else:
            self._metrics.dead_letter_failures.labels(record.topic()).inc()

    def _count(self, record: Record, message: Message[Any] | None, outcome: str, stage: str) -> None:
        if message is not None:
            key: tuple[Any, ...] = (record.topic(), *message_labels(message), outcome, stage)
        else:
            key = (None, record.topic(), *self._header_labels(record, stage), outcome, stage)
        records = self._records
        records[key] = records.get(key, 0) + 1

    def _header_labels(self, record: Record, stage: str) -> tuple[str, str]:
        """message_type and schema_version of a record that is not a Message (it failed, or waits for
        the registry): read from its header again, UNKNOWN when that never got read."""
        if stage in _HEADERLESS_STAGES or self._pipeline is None:
            return UNKNOWN, UNKNOWN
        try:
            header = self._pipeline.decode(record.value(), record.topic()).header
        except Exception:  # noqa: BLE001 - any failure means the header cannot be read
            return UNKNOWN, UNKNOWN
        if header is None:  # a record in Confluent's wire format: no envelope header
            return UNKNOWN, UNKNOWN
        label = self._metrics.label
        return label("message_type", header.message_type), label("schema_version", header.schema_version)

    def _registry_lookup(self, result: str, seconds: float | None) -> None:  # on the looking-up thread
        self._metrics.registry_lookups.labels(result).inc()
        if seconds is not None:
            self._metrics.registry_duration.labels(result).observe(seconds)


class _ConsumerCollector:
    """The per-record totals, and gauges of the consumers' state built at each scrape from their snapshots
    (so a revoked partition's series is gone at the next scrape, with nothing to remove)."""

    def __init__(self, metrics: _Metrics) -> None:
        self._metrics = metrics
        self._sources = metrics.sources

    def collect(self) -> Iterator[Any]:
        yield from self._totals()
        yield from self._state()

    def describe(self) -> list[Any]:
        """The names (so the registry refuses them when taken, also with ``auto_describe`` off)."""
        return [
            CounterMetricFamily("epistle_records", ""),
            HistogramMetricFamily("epistle_handler_duration_seconds", ""),
            *(GaugeMetricFamily(name, "") for name in _STATE_GAUGES),
        ]

    def _totals(self) -> Iterator[Any]:
        metrics = self._metrics
        with metrics.lock:
            records = list(metrics.records.items())
            handler = [(topic, list(counts)) for topic, counts in metrics.handler.items()]
        family = CounterMetricFamily(
            "epistle_records",
            "Records by outcome: processed, retried (an attempt failed and will be retried), "
            "paused (a wait for a registry or broker outage), dead_lettered (its dead letter acknowledged; stage "
            "says why), stopped (ErrorPolicy.STOP)",
            labels=_RECORD_LABELS,
        )
        for labels, count in sorted(records):
            family.add_metric(labels, count)
        yield family
        durations = HistogramMetricFamily(
            "epistle_handler_duration_seconds",
            "Handler attempts, from the call to its result (a wait for a free worker included)",
            labels=["topic"],
        )
        bounds = [*(format(bound, "g") for bound in HANDLER_BUCKETS), "+Inf"]
        for topic, counts in sorted(handler):
            cumulative, buckets = 0.0, []
            for bound, count in zip(bounds, counts[:-1], strict=True):
                cumulative += count
                buckets.append((bound, cumulative))
            durations.add_metric([topic], buckets, sum_value=counts[-1])
        yield durations

    def _state(self) -> Iterator[GaugeMetricFamily]:
        group = ["consumer_group"]
        in_flight = GaugeMetricFamily("epistle_in_flight_records", "Records fetched and not yet finished", labels=group)
        assigned = GaugeMetricFamily(
            "epistle_assigned_partitions", "Partitions assigned to the consumer", labels=[*group, "topic"]
        )
        lag = GaugeMetricFamily(
            "epistle_consumer_lag",
            "Records between the committed offset and the end of the "
            "partition (absent until the group committed an offset for it)",
            labels=[*group, "topic", "partition"],
        )
        paused = GaugeMetricFamily(
            "epistle_partition_paused",
            "1 while a partition is held back, by reason: backpressure, retry, outage, dead_letter",
            labels=[*group, "topic", "partition", "reason"],
        )
        healthy = GaugeMetricFamily("epistle_healthy", "1 while /healthz passes", labels=group)
        ready = GaugeMetricFamily("epistle_ready", "1 while /readyz passes", labels=group)
        for source in list(self._sources):
            snapshot = source.snapshot()
            if snapshot is None:
                continue
            name = snapshot.group
            in_flight.add_metric([name], snapshot.in_flight)
            topics: dict[str, int] = {}
            for state in snapshot.partitions:
                topics[state.topic] = topics.get(state.topic, 0) + 1
                for reason in snapshot.reasons(state):
                    paused.add_metric([name, state.topic, str(state.partition), reason], 1)
            for topic, count in sorted(topics.items()):
                assigned.add_metric([name, topic], count)
            for (topic, partition), records in sorted(snapshot.lag.items()):
                lag.add_metric([name, topic, str(partition)], records)
            healthy.add_metric([name], 1 if source.health().ok else 0)
            ready.add_metric([name], 1 if source.readiness().ok else 0)
        yield from (in_flight, assigned, lag, paused, healthy, ready)


__all__ = ["OTHER", "PAUSE_REASONS", "UNKNOWN", "PrometheusMiddleware", "Probe"]
