"""PrometheusMiddleware on the in-memory broker: what each metric counts, the label rules (unknown, other),
the state gauges (lag, paused partitions and why, in-flight), the probes and the HTTP endpoint."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry, Counter

from toolkit import KafkaConsumer
from toolkit.consumer import DeadLetter, Retry, RetryPolicy
from toolkit.consumer.engine import PartitionState
from toolkit.consumer.transport import FetchState
from toolkit.errors import ConfigError, InvalidArgument
from toolkit.layout import SchemaFormat
from toolkit.observability import MetricsServer, PrometheusMiddleware
from toolkit.observability import metrics as metrics_module
from toolkit.registry import LocalFolderRegistry
from toolkit.registry.cache import CachedRegistry
from toolkit.testing import InMemoryBroker, InMemoryRegistry, envelope

ROOT = Path(__file__).resolve().parents[2]
ORDER = json.loads((ROOT / "schemas/orders/samples/2/valid/required-fields-only.json").read_text())
BAD_ORDER = json.loads((ROOT / "schemas/orders/samples/2/invalid/customer-email-invalid.json").read_text())
FAST_RETRY = RetryPolicy(max_attempts=3, initial_s=0.001, max_s=0.01)


def value(registry: CollectorRegistry, name: str, **labels: str) -> float:
    """A sample's value, 0 when absent."""
    return registry.get_sample_value(name, labels) or 0.0


def total(registry: CollectorRegistry, name: str, **labels: str) -> float:
    """The sum of a metric's samples whose labels include ``labels``."""
    return sum(
        sample.value
        for family in registry.collect()
        for sample in family.samples
        if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items())
    )


def consumer_with(
    broker: InMemoryBroker, metrics: PrometheusMiddleware, registry: Any = None, **options: Any
) -> KafkaConsumer:
    options = {"retry": FAST_RETRY, "commit_interval_s": 0.01, **options}
    return KafkaConsumer(
        group_id="shop",
        transport=broker.transport(),
        middleware=[metrics],
        registry=registry or LocalFolderRegistry(ROOT / "schemas"),
        **options,
    )


async def until(predicate: Callable[[], bool], what: str, timeout_s: float = 15.0) -> None:
    """Wait for ``predicate`` (the deadline only bounds a hung test; no timing is asserted)."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"still waiting for: {what}")
        await asyncio.sleep(0.005)


def run(coroutine: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coroutine, 60))


# -- what the counters count --------------------------------------------------------------------------------
def test_records_are_counted_by_topic_type_version_outcome_and_stage() -> None:
    async def scenario() -> CollectorRegistry:
        registry = CollectorRegistry()
        broker = InMemoryBroker()
        for _ in range(3):
            broker.produce("orders", envelope("orders", 2, ORDER))
        broker.produce("orders", envelope("orders", 2, ORDER, message_type="RetryMe"))
        broker.produce("orders", envelope("orders", 2, ORDER, message_type="Refused"))
        broker.produce("orders", b"not json")
        broker.produce("orders", envelope("orders", 2, BAD_ORDER))
        consumer = consumer_with(broker, PrometheusMiddleware(registry, sample_interval_s=0.01), stop_when_idle=True)
        attempts: dict[str, int] = {}

        @consumer.handler("orders")
        async def handle(message: Any) -> Any:
            kind = message.header.message_type
            attempts[kind] = attempts.get(kind, 0) + 1
            if kind == "RetryMe" and attempts[kind] == 1:
                return Retry(delay_s=0.001)
            if kind == "Refused":
                raise DeadLetter("refused by the handler")
            return True

        await consumer.start()
        assert broker.committed("shop", "orders") == 7
        return registry

    registry = run(scenario())
    records = "epistle_records_total"
    assert (
        value(
            registry,
            records,
            topic="orders",
            message_type="orders.v2",
            schema_version="2",
            outcome="processed",
            stage="",
        )
        == 3
    )
    assert (
        value(
            registry, records, topic="orders", message_type="RetryMe", schema_version="2", outcome="retried", stage=""
        )
        == 1
    )
    assert (
        value(
            registry, records, topic="orders", message_type="RetryMe", schema_version="2", outcome="processed", stage=""
        )
        == 1
    )
    # dead letters are counted once acknowledged, labelled from the header when it could be read
    assert (
        value(
            registry,
            records,
            topic="orders",
            message_type="Refused",
            schema_version="2",
            outcome="dead_lettered",
            stage="handler",
        )
        == 1
    )
    assert (
        value(
            registry,
            records,
            topic="orders",
            message_type="unknown",
            schema_version="unknown",
            outcome="dead_lettered",
            stage="decode",
        )
        == 1
    )
    assert (
        value(
            registry,
            records,
            topic="orders",
            message_type="orders.v2",
            schema_version="2",
            outcome="dead_lettered",
            stage="validation",
        )
        == 1
    )
    assert total(registry, records, outcome="dead_lettered") == 3
    # one handler attempt each: 3 + 2 (retried once) + 1 (refused)
    assert value(registry, "epistle_handler_duration_seconds_count", topic="orders") == 6
    assert value(registry, "epistle_commits_total", result="ok") >= 1
    assert value(registry, "epistle_commit_duration_seconds_count") == value(
        registry, "epistle_commits_total", result="ok"
    )
    # the schema was fetched once (the pipeline keeps it): a request with its duration
    assert value(registry, "epistle_registry_lookups_total", result="fetched") == 1
    assert value(registry, "epistle_registry_request_duration_seconds_count", result="fetched") == 1
    # state gauges are gone once the consumer stopped
    assert total(registry, "epistle_in_flight_records") == 0
    assert total(registry, "epistle_assigned_partitions") == 0


def test_refused_dead_letters_count_as_send_failures_and_hold_their_partition() -> None:
    async def scenario() -> None:
        registry = CollectorRegistry()
        broker = InMemoryBroker()
        broker.produce("orders", b"not json")
        broker.produce("orders", envelope("orders", 2, ORDER))
        broker.create_topic("orders.dlq")
        broker.refuse("orders.dlq", "broker unavailable")
        metrics = PrometheusMiddleware(registry, sample_interval_s=0.01)
        consumer = consumer_with(broker, metrics, retry=RetryPolicy(3, initial_s=0.05, max_s=0.05))
        consumer.register_handler("orders", lambda message: True)
        task = asyncio.create_task(consumer.start())
        await until(
            lambda: value(registry, "epistle_dead_letter_send_failures_total", topic="orders") >= 2, "two refused sends"
        )
        await until(
            lambda: (
                value(
                    registry,
                    "epistle_partition_paused",
                    consumer_group="shop",
                    topic="orders",
                    partition="0",
                    reason="dead_letter",
                )
                == 1
            ),
            "the partition held by its dead letter",
        )
        assert value(registry, "epistle_in_flight_records", consumer_group="shop") >= 1
        broker.heal()
        await until(lambda: broker.committed("shop", "orders") == 2, "both records done")
        assert (
            value(
                registry,
                "epistle_records_total",
                topic="orders",
                message_type="unknown",
                schema_version="unknown",
                outcome="dead_lettered",
                stage="decode",
            )
            == 1
        )
        await until(lambda: total(registry, "epistle_partition_paused") == 0, "the hold lifted")
        consumer.request_stop()
        await task

    run(scenario())


def test_stop_policy_counts_the_stopping_record() -> None:
    async def scenario() -> CollectorRegistry:
        registry = CollectorRegistry()
        broker = InMemoryBroker()
        broker.produce("orders", envelope("orders", 2, BAD_ORDER))
        consumer = consumer_with(broker, PrometheusMiddleware(registry), error_policy="STOP")
        consumer.register_handler("orders", lambda message: True)
        with pytest.raises(Exception, match="validation"):
            await consumer.start()
        return registry

    registry = run(scenario())
    assert (
        value(
            registry,
            "epistle_records_total",
            topic="orders",
            message_type="orders.v2",
            schema_version="2",
            outcome="stopped",
            stage="validation",
        )
        == 1
    )


def test_header_values_past_the_limit_are_counted_as_other(monkeypatch) -> None:
    monkeypatch.setattr(metrics_module, "MAX_LABEL_VALUES", 2)

    async def scenario() -> CollectorRegistry:
        registry = CollectorRegistry()
        broker = InMemoryBroker()
        for kind in ("A", "B", "C", "D", "A"):
            broker.produce("orders", envelope("orders", 2, ORDER, message_type=kind))
        broker.produce("orders", envelope("orders", 2, ORDER, message_type="x" * 500))
        consumer = consumer_with(broker, PrometheusMiddleware(registry), stop_when_idle=True)
        consumer.register_handler("orders", lambda message: True)
        await consumer.start()
        return registry

    registry = run(scenario())
    types = {
        sample.labels["message_type"]: sample.value
        for family in registry.collect()
        for sample in family.samples
        if sample.name == "epistle_records_total"
    }
    # "2" (the version) took one schema_version slot; two message types fit, the rest is "other"
    assert types == {"A": 2, "B": 1, "other": 3}


# -- state: outage, readiness, lag ----------------------------------------------------------------------------
def test_a_registry_outage_pauses_the_partition_and_makes_the_consumer_unready() -> None:
    async def scenario() -> None:
        registry = CollectorRegistry()
        schemas = InMemoryRegistry()
        for version in (1, 2):
            schemas.register("orders", (ROOT / f"schemas/orders/{version}.json").read_text(), SchemaFormat.JSON)
        schemas.down = True
        broker = InMemoryBroker()
        broker.produce("orders", envelope("orders", 2, ORDER))
        metrics = PrometheusMiddleware(registry, sample_interval_s=0.01)
        assert metrics.health().detail["status"] == "not started"
        consumer = consumer_with(broker, metrics, registry=schemas, retry=RetryPolicy(3, initial_s=0.02, max_s=0.02))
        consumer.register_handler("orders", lambda message: True)
        task = asyncio.create_task(consumer.start())
        await until(
            lambda: (
                value(
                    registry,
                    "epistle_partition_paused",
                    consumer_group="shop",
                    topic="orders",
                    partition="0",
                    reason="outage",
                )
                == 1
            ),
            "the partition held by the outage",
        )
        assert metrics.health().ok
        ready = metrics.readiness()
        assert not ready.ok and "outage" in ready.detail["status"]
        assert value(registry, "epistle_ready", consumer_group="shop") == 0
        assert value(registry, "epistle_healthy", consumer_group="shop") == 1
        await until(
            lambda: value(registry, "epistle_registry_lookups_total", result="unavailable") >= 2, "lookups failing"
        )
        # the header was read, so a paused record is labelled with it
        assert (
            value(
                registry,
                "epistle_records_total",
                topic="orders",
                message_type="orders.v2",
                schema_version="2",
                outcome="paused",
                stage="",
            )
            >= 1
        )
        schemas.down = False
        await until(lambda: broker.committed("shop", "orders") == 1, "the record done once the registry is back")
        await until(lambda: metrics.readiness().ok, "ready again")
        assert value(registry, "epistle_registry_lookups_total", result="fetched") == 1
        consumer.request_stop()
        await task
        assert metrics.health().detail["status"] == "stopped"

    run(scenario())


def test_lag_is_the_records_between_the_committed_offset_and_the_end() -> None:
    async def scenario() -> None:
        registry = CollectorRegistry()
        broker = InMemoryBroker(partitions=2)
        for _ in range(3):
            broker.produce("orders", envelope("orders", 2, ORDER), partition=0)
        broker.produce("orders", envelope("orders", 2, ORDER), partition=1)
        release = asyncio.Event()
        metrics = PrometheusMiddleware(registry, sample_interval_s=0.01)
        consumer = consumer_with(broker, metrics)

        @consumer.handler("orders")
        async def handle(message: Any) -> bool:
            await release.wait()
            return True

        task = asyncio.create_task(consumer.start())
        lag = "epistle_consumer_lag"
        await until(
            lambda: value(registry, lag, consumer_group="shop", topic="orders", partition="0") == 3,
            "lag 3 on partition 0",
        )
        assert value(registry, lag, consumer_group="shop", topic="orders", partition="1") == 1
        assert value(registry, "epistle_assigned_partitions", consumer_group="shop", topic="orders") == 2
        await until(
            lambda: value(registry, "epistle_in_flight_records", consumer_group="shop") == 4, "4 records in flight"
        )
        release.set()
        await until(lambda: total(registry, lag) == 0, "no lag once everything is committed")
        consumer.request_stop()
        await task

    run(scenario())


def test_health_fails_when_the_loop_or_the_poll_thread_stops_answering() -> None:
    metrics = PrometheusMiddleware(CollectorRegistry(), health_timeout_s=5)
    state = PartitionState("orders", 0, False, 0, 0, 0)
    now = time.monotonic()

    def probe(taken: float, fetch: FetchState | None) -> Any:
        metrics._snapshot = metrics_module._Snapshot(taken, "shop", 0, (state,), {}, fetch)
        metrics._state = "running"
        return metrics.health()

    assert probe(now, FetchState(True, now, False)).ok
    assert probe(now, None).ok  # a transport that reports nothing: the loop alone
    stale_loop = probe(now - 30, FetchState(True, now, False))
    assert not stale_loop.ok and "event loop" in stale_loop.detail["status"]
    stale_poll = probe(now, FetchState(True, now - 30, False))
    assert not stale_poll.ok and "not polled for" in stale_poll.detail["status"]
    dead = probe(now, FetchState(False, now, False))
    assert not dead.ok and "poll thread is not running" in dead.detail["status"]
    assert not metrics.readiness().ok
    # window full: every partition is held back for backpressure
    probe(now, FetchState(True, now, True))
    assert metrics._snapshot.reasons(state) == ["backpressure"]


# -- the registry cache's observer ------------------------------------------------------------------------
def test_registry_cache_reports_each_lookup() -> None:
    schemas = InMemoryRegistry()
    schemas.register("orders", (ROOT / "schemas/orders/1.json").read_text(), SchemaFormat.JSON)
    cache = CachedRegistry(schemas, compile=lambda schema: schema.text)
    seen: list[tuple[str, float | None]] = []
    cache.add_observer(lambda result, seconds: seen.append((result, seconds)))
    cache.resolve("orders", 1)
    cache.resolve("orders", 1)
    for _ in range(2):
        with pytest.raises(Exception, match="no version 7"):
            cache.resolve("orders", 7)
    schemas.down = True
    with pytest.raises(Exception, match="down"):
        cache.resolve("orders", 2)
    assert [result for result, _ in seen] == ["fetched", "hit", "not_found", "cached_not_found", "unavailable"]
    assert [seconds is None for _, seconds in seen] == [False, True, False, True, False]


# -- registries -------------------------------------------------------------------------------------------------
def test_middleware_on_one_registry_share_its_metrics_and_a_taken_name_is_a_config_error() -> None:
    registry = CollectorRegistry()
    first, second = PrometheusMiddleware(registry), PrometheusMiddleware(registry)
    assert first._metrics is second._metrics
    taken = CollectorRegistry()
    Counter("epistle_records", "someone else's", registry=taken)
    with pytest.raises(ConfigError, match="registry of its own"):
        PrometheusMiddleware(taken)
    with pytest.raises(InvalidArgument, match="sample_interval_s"):
        PrometheusMiddleware(registry, sample_interval_s=0)


# -- the HTTP endpoint ----------------------------------------------------------------------------------------
def test_the_server_serves_metrics_and_both_probes() -> None:
    async def scenario() -> None:
        registry = CollectorRegistry()
        broker = InMemoryBroker()
        broker.produce("orders", envelope("orders", 2, ORDER))
        metrics = PrometheusMiddleware(registry, sample_interval_s=0.01)
        consumer = consumer_with(broker, metrics)
        consumer.register_handler("orders", lambda message: True)
        with MetricsServer(metrics, 0, address="127.0.0.1") as server:
            base = f"http://127.0.0.1:{server.port}"
            async with httpx.AsyncClient(base_url=base, timeout=10) as http:
                before = await http.get("/healthz")
                assert before.status_code == 503 and before.json()["status"] == "not started"
                task = asyncio.create_task(consumer.start())
                await until(lambda: broker.committed("shop", "orders") == 1, "the record done")
                await until(lambda: metrics.readiness().ok, "ready")
                health, ready = await http.get("/healthz"), await http.get("/readyz")
                assert health.status_code == 200 and health.json()["ok"] is True
                assert ready.status_code == 200 and ready.json()["assigned_partitions"] == 1
                scraped = (await http.get("/metrics")).text
                assert (
                    'epistle_records_total{message_type="orders.v2",outcome="processed",schema_version="2",'
                    'stage="",topic="orders"} 1.0'
                ) in scraped
                assert 'epistle_ready{consumer_group="shop"} 1.0' in scraped
                assert (await http.get("/elsewhere")).status_code == 404
                consumer.request_stop()
                await task
                stopped = await http.get("/healthz")
                assert stopped.status_code == 503 and stopped.json()["status"] == "stopped"

    run(scenario())


def test_a_port_in_use_is_a_config_error_naming_the_setting() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        server = MetricsServer(PrometheusMiddleware(CollectorRegistry()), port, address="127.0.0.1")
        with pytest.raises(ConfigError, match="EPISTLE_METRICS_PORT"):
            server.start()


# -- the dashboard and the docs ---------------------------------------------------------------------------------
def exposed_names(registry: CollectorRegistry) -> set[str]:
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}
    return {family.name + suffix for family in registry.collect() for suffix in suffixes[family.type]}


def dashboard_expressions() -> list[str]:
    dashboard = json.loads((ROOT / "docs" / "grafana-dashboard.json").read_text())
    return [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]


def test_the_dashboard_and_the_docs_use_the_metrics_that_exist() -> None:
    import re

    registry = CollectorRegistry()
    PrometheusMiddleware(registry)
    names = exposed_names(registry)
    used = {name for expr in dashboard_expressions() for name in re.findall(r"\bepistle_[a-z_]+", expr)}
    assert used and used <= names, used - names
    # every metric is on the dashboard and in the operations guide's table
    families = {family.name for family in registry.collect()}
    assert families <= {re.sub(r"_(total|bucket|sum|count)$", "", name) for name in used}
    guide = (ROOT / "docs" / "operations.md").read_text()
    for family in families:
        shown = f"{family}_total" if f"{family}_total" in names else family
        assert f"| `{shown}`" in guide or f", `{shown}` |" in guide, shown


# -- librdkafka's statistics ------------------------------------------------------------------------------------
def test_the_lag_comes_from_librdkafkas_statistics_of_assigned_partitions() -> None:
    from toolkit.consumer.kafka_io import PollThread

    loop = asyncio.new_event_loop()
    loop.close()  # never run: the callback is called directly
    poller = PollThread({}, ["orders"], loop, None, max_poll_records=1, max_in_flight=1)  # type: ignore[arg-type]
    seen: list[str] = []
    on_statistics = poller._statistics(seen.append)
    report = {
        "topics": {
            "orders": {
                "partitions": {
                    "0": {"desired": True, "consumer_lag": 7},
                    "1": {"desired": True, "consumer_lag": -1},  # nothing committed yet: unknown
                    "2": {"desired": False, "consumer_lag": 3},  # not (or no longer) assigned
                    "-1": {"desired": False, "consumer_lag": -1},
                }
            }
        }
    }  # librdkafka's internal partition
    on_statistics(json.dumps(report))
    assert poller.lag == {("orders", 0): 7}
    assert seen == [json.dumps(report)]  # a statistics callback of the user's still gets every report
    on_statistics("not json")
    assert poller.lag == {("orders", 0): 7}  # an unreadable report keeps the last lag
