"""Tracing on the in-memory broker, spans read from the SDK's in-memory exporter: one CONSUMER span per record
with the messaging attributes, its parent from the record's traceparent header (garbage headers never
crash), handlers' own spans as children (async and plain), outcomes, the dead letter's PRODUCER span, no span
left open when a record is abandoned, and the producer carrying the trace on."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import copy
import json
import pickle
import random
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.id_generator import IdGenerator
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_OFF,
    ALWAYS_ON,
    DEFAULT_OFF,
    DEFAULT_ON,
    Decision,
    ParentBased,
    ParentBasedTraceIdRatio,
    Sampler,
    SamplingResult,
    StaticSampler,
    TraceIdRatioBased,
)
from opentelemetry.trace import SpanKind, StatusCode

from generated_models.orders.v2 import Order
from toolkit import KafkaConsumer
from toolkit.consumer import ErrorPolicy, RetryPolicy
from toolkit.consumer.middleware import Middleware
from toolkit.errors import ConsumerStopped, RetryableError
from toolkit.observability.tracing import GETTER, TracingMiddleware, extract_context
from toolkit.producer import EnvelopeProducer
from toolkit.registry import CachedRegistry, LocalFolderRegistry
from toolkit.testing import InMemoryBroker, envelope

ROOT = Path(__file__).resolve().parents[2]
ORDER = json.loads((ROOT / "schemas/orders/samples/2/valid/required-fields-only.json").read_text())
TRACE_ID = 0x4BF92F3577B34DA6A3CE929D0E0E4736
PARENT_ID = 0x00F067AA0BA902B7
TRACEPARENT = f"00-{TRACE_ID:032x}-{PARENT_ID:016x}-01".encode()


class Traced:
    """A consumer on an in-memory broker with a TracingMiddleware on its own SDK provider."""

    def __init__(self, sampler: Sampler | None = None, id_generator: IdGenerator | None = None, **options: Any) -> None:
        self.exporter = InMemorySpanExporter()
        self.provider = TracerProvider(sampler=sampler, id_generator=id_generator)
        self.provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        self.tracer = self.provider.get_tracer("tests")
        self.broker = InMemoryBroker()
        self.tracing = TracingMiddleware(group_id="shop", tracer_provider=self.provider)
        self.consumer = KafkaConsumer(
            group_id="shop",
            transport=self.broker.transport(),
            registry=LocalFolderRegistry(ROOT / "schemas"),
            middleware=[self.tracing],
            **options,
        )

    def run(self) -> None:
        asyncio.run(asyncio.wait_for(self.consumer.start(), 30))

    def spans(self, name: str | None = None) -> list[ReadableSpan]:
        return [s for s in self.exporter.get_finished_spans() if name is None or s.name == name]

    def one(self, name: str) -> ReadableSpan:
        (span,) = self.spans(name)
        return span


def test_a_record_span_follows_the_messaging_conventions_and_continues_the_producers_trace() -> None:
    t = Traced(stop_when_idle=True)
    t.broker.produce(
        "orders",
        envelope("orders", 2, ORDER, message_id="m-1", correlation_id="c-1"),
        headers=[("traceparent", TRACEPARENT), ("tracestate", b"vendor=x")],
    )
    t.consumer.handler("orders")(lambda message: True)
    t.run()
    span = t.one("process orders")
    assert span.kind is SpanKind.CONSUMER
    assert span.context.trace_id == TRACE_ID and span.parent.span_id == PARENT_ID and span.parent.is_remote
    assert span.context.trace_state.get("vendor") == "x"
    assert dict(span.attributes) == {
        "messaging.system": "kafka",
        "messaging.operation.name": "process",
        "messaging.operation.type": "process",
        "messaging.destination.name": "orders",
        "messaging.destination.partition.id": "0",
        "messaging.kafka.offset": 0,
        "messaging.consumer.group.name": "shop",
        "messaging.message.id": "m-1",
        "messaging.message.conversation_id": "c-1",
        "epistle.message_type": "orders.v2",
        "epistle.schema": "orders v2",
        "epistle.outcome": "done",
    }
    assert span.status.status_code is StatusCode.UNSET
    assert t.tracing.open_spans == 0


def test_on_rabbitmq_the_span_names_the_system_and_the_delivery_tag() -> None:
    t = Traced(stop_when_idle=True)
    t.tracing = TracingMiddleware(group_id="shop", system="rabbitmq", tracer_provider=t.provider)
    t.consumer = KafkaConsumer(
        group_id="shop",
        transport=t.broker.transport(),
        registry=LocalFolderRegistry(ROOT / "schemas"),
        middleware=[t.tracing],
        stop_when_idle=True,
    )
    t.broker.produce("orders", envelope("orders", 2, ORDER))
    t.consumer.handler("orders")(lambda message: True)
    t.run()
    attributes = dict(t.one("process orders").attributes)
    assert attributes["messaging.system"] == "rabbitmq"
    assert attributes["messaging.rabbitmq.message.delivery_tag"] == 1 and "messaging.kafka.offset" not in attributes


def test_a_record_without_a_traceparent_starts_a_trace_of_its_own() -> None:
    t = Traced(stop_when_idle=True)
    t.broker.produce("orders", envelope("orders", 2, ORDER))
    t.consumer.handler("orders")(lambda message: True)

    async def run_inside_a_span() -> None:  # the caller's span is not the record's parent
        with t.tracer.start_as_current_span("test"):
            await asyncio.wait_for(t.consumer.start(), 30)

    asyncio.run(run_inside_a_span())
    span = t.one("process orders")
    assert span.parent is None and span.context.trace_id != t.one("test").context.trace_id


@pytest.mark.parametrize(
    "headers",
    [
        [("traceparent", b"\xff\xfe not utf-8")],
        [("traceparent", None)],
        [("traceparent", b"00-zzzz-yyyy-01"), ("tracestate", b"\x00" * 600)],
        [("traceparent", b"00-" + b"0" * 32 + b"-" + b"0" * 16 + b"-01")],  # all-zero ids are invalid
        [("TraceParent", b"garbage"), ("", b""), ("baggage", b"=;=;\xff")],
    ],
)
def test_garbage_trace_headers_give_a_root_span_and_the_record_is_handled(headers) -> None:
    t = Traced(stop_when_idle=True)
    t.broker.produce("orders", envelope("orders", 2, ORDER), headers=headers)
    handled = []
    t.consumer.handler("orders")(lambda message: handled.append(message.offset))
    t.run()
    assert handled == [0]
    span = t.one("process orders")
    assert span.parent is None and span.attributes["epistle.outcome"] == "done"


def test_the_getter_skips_what_is_not_a_readable_header() -> None:
    carrier: Any = [
        ("traceparent", b"\xff"),
        ("x",),
        None,
        ("traceparent", 5),
        ("TRACEPARENT", b"ok"),
        (b"traceparent", b"no"),
        ("traceparent", "str"),
    ]
    assert GETTER.get(carrier, "traceparent") == ["ok", "str"]
    assert GETTER.get([], "traceparent") is None
    assert extract_context(carrier) is not None  # never raises
    assert trace.get_current_span(extract_context(None)).get_span_context().is_valid is False


@pytest.mark.parametrize("plain", [False, True], ids=["async handler", "plain handler in a worker thread"])
def test_handlers_run_inside_the_record_span_and_their_spans_are_children(plain: bool) -> None:
    t = Traced(stop_when_idle=True, max_workers=2)
    t.broker.produce("orders", envelope("orders", 2, ORDER), headers=[("traceparent", TRACEPARENT)])
    threads = []

    def work(message: Any) -> None:
        threads.append(threading.current_thread().name)
        with t.tracer.start_as_current_span("book the order"):
            pass

    async def work_async(message: Any) -> None:
        work(message)

    t.consumer.handler("orders")(work if plain else work_async)
    t.run()
    process, child = t.one("process orders"), t.one("book the order")
    assert child.parent.span_id == process.context.span_id and child.context.trace_id == TRACE_ID
    assert threads[0].startswith("epistle-handler") == plain


def test_a_retry_is_an_event_and_the_raised_exception_is_recorded() -> None:
    t = Traced(stop_when_idle=True, retry=RetryPolicy(max_attempts=3, initial_s=0))

    def flaky(message: Any) -> bool:
        if message.attempt == 1:
            raise RetryableError("inventory busy")
        return True

    t.broker.produce("orders", envelope("orders", 2, ORDER))
    t.consumer.handler("orders")(flaky)
    t.run()
    span = t.one("process orders")
    assert [e.name for e in span.events] == ["exception", "retry"]
    assert span.events[0].attributes["exception.type"].endswith("RetryableError")
    assert span.events[1].attributes["epistle.attempt"] == 1
    assert span.attributes["epistle.attempts"] == 2 and span.attributes["epistle.outcome"] == "done"


def test_an_exception_that_dead_letters_the_record_is_recorded_and_a_decode_failure_is_not() -> None:
    t = Traced(stop_when_idle=True)

    def broken(message: Any) -> None:
        raise ValueError("no such warehouse")

    t.broker.produce("orders", envelope("orders", 2, ORDER))
    t.broker.produce("orders", b"not json")
    t.consumer.handler("orders")(broken)
    t.run()
    handler, decode = sorted(t.spans("process orders"), key=lambda s: s.attributes["messaging.kafka.offset"])
    assert [e.name for e in handler.events] == ["exception"]
    assert handler.events[0].attributes["exception.message"] == "no such warehouse"
    assert handler.attributes["epistle.dead_letter.stage"] == "handler"
    assert not decode.events


def test_a_dead_letter_has_its_send_span_and_the_record_span_ends_after_it() -> None:
    t = Traced(stop_when_idle=True)
    t.broker.produce("orders", b"not json", headers=[("traceparent", TRACEPARENT)])
    t.consumer.handler("orders")(lambda message: True)
    t.run()
    process, send = t.one("process orders"), t.one("send orders.dlq")
    assert process.status.status_code is StatusCode.ERROR and process.status.description.startswith("decode: ")
    assert process.attributes["epistle.outcome"] == "dead_letter"
    assert process.attributes["epistle.dead_letter.stage"] == process.attributes["error.type"] == "decode"
    assert send.kind is SpanKind.PRODUCER and send.parent.span_id == process.context.span_id
    assert send.attributes["messaging.destination.name"] == "orders.dlq"
    assert send.end_time <= process.end_time
    assert len(t.broker.records("orders.dlq")) == 1


def test_error_policy_stop_ends_the_span_in_error() -> None:
    t = Traced(error_policy=ErrorPolicy.STOP)
    t.broker.produce("orders", b"not json")
    t.consumer.handler("orders")(lambda message: True)
    with pytest.raises(ConsumerStopped):
        t.run()
    span = t.one("process orders")
    assert span.status.status_code is StatusCode.ERROR and span.attributes["epistle.outcome"] == "stop"


async def _until(condition: Any) -> None:
    for _ in range(2000):
        if condition():
            return
        await asyncio.sleep(0.005)
    raise AssertionError("timed out")


def test_a_record_stopped_in_its_retry_backoff_ends_its_span_as_abandoned() -> None:
    t = Traced(retry=RetryPolicy(max_attempts=5, initial_s=60))
    t.broker.produce("orders", envelope("orders", 2, ORDER))
    t.consumer.handler("orders")(lambda message: False)

    async def scenario() -> None:
        run = asyncio.create_task(t.consumer.start())
        await _until(lambda: t.consumer.stats["orders"].retried == 1)
        assert t.tracing.open_spans == 1
        await t.consumer.stop()
        await asyncio.wait_for(run, 10)

    asyncio.run(scenario())
    span = t.one("process orders")
    assert span.attributes["epistle.outcome"] == "abandoned" and [e.name for e in span.events] == ["retry"]
    assert t.tracing.open_spans == 0


def test_a_refused_dead_letter_then_a_stop_ends_both_spans() -> None:
    t = Traced()
    t.broker.produce("orders", b"not json")
    t.broker.create_topic("orders.dlq")
    t.broker.refuse("orders.dlq", "broker down")
    t.consumer.handler("orders")(lambda message: True)

    async def scenario() -> None:
        run = asyncio.create_task(t.consumer.start())
        await _until(lambda: t.consumer.stats["orders"].dead_letter_send_failures >= 1)
        await t.consumer.stop()
        await asyncio.wait_for(run, 10)

    asyncio.run(scenario())
    process, send = t.one("process orders"), t.one("send orders.dlq")
    assert process.attributes["epistle.outcome"] == "abandoned"
    assert "broker down" in send.events[0].attributes["exception.message"]
    assert send.events[-1].name == "abandoned"
    assert t.tracing.open_spans == 0


def test_tracing_is_outermost_when_given_first() -> None:
    t = Traced(stop_when_idle=True)
    seen = []

    class Inner(Middleware):
        async def around_handler(self, message: Any, call_next: Any) -> Any:
            seen.append(trace.get_current_span().get_span_context().span_id)
            return await call_next(message)

    t.consumer = KafkaConsumer(
        group_id="shop",
        transport=t.broker.transport(),
        stop_when_idle=True,
        registry=LocalFolderRegistry(ROOT / "schemas"),
        middleware=[t.tracing, Inner()],
    )
    t.broker.produce("orders", envelope("orders", 2, ORDER))
    t.consumer.handler("orders")(lambda message: True)
    t.run()
    assert seen == [t.one("process orders").context.span_id]


# -- the producer ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def producer() -> EnvelopeProducer:
    return EnvelopeProducer(registry=CachedRegistry(LocalFolderRegistry(ROOT / "schemas")))


def _order() -> Order:
    return Order.model_validate(ORDER)


def test_the_producer_adds_the_current_span_as_traceparent(producer: EnvelopeProducer) -> None:
    tracer = TracerProvider().get_tracer("tests")
    with tracer.start_as_current_span("publish") as span:
        record = producer.build("orders", _order(), headers={"source": "tests"})
    context = span.get_span_context()
    headers = dict(record.headers)
    assert headers["source"] == b"tests"
    assert (
        headers["traceparent"]
        == (f"00-{context.trace_id:032x}-{context.span_id:016x}-{context.trace_flags:02x}").encode()
    )


def test_the_producer_adds_nothing_outside_a_span_and_keeps_a_given_traceparent(producer) -> None:
    assert producer.build("orders", _order()).headers is None
    tracer = TracerProvider().get_tracer("tests")
    with tracer.start_as_current_span("publish"):
        record = producer.build("orders", _order(), headers=[("traceparent", TRACEPARENT)])
    assert record.headers == [("traceparent", TRACEPARENT)]


def test_the_producer_without_opentelemetry_adds_nothing(producer, monkeypatch) -> None:
    import toolkit.producer

    monkeypatch.setattr(toolkit.producer, "_opentelemetry", lambda: None)
    with TracerProvider().get_tracer("tests").start_as_current_span("publish"):
        assert producer.build("orders", _order()).headers is None


@pytest.mark.parametrize("plain", [False, True], ids=["async handler", "plain handler"])
def test_what_a_handler_publishes_carries_the_record_span_on(producer, plain: bool) -> None:
    t = Traced(stop_when_idle=True, max_workers=2)
    t.broker.produce("orders", envelope("orders", 2, ORDER), headers=[("traceparent", TRACEPARENT)])
    published = []

    def handle(message: Any) -> None:
        published.append(dict(producer.build("shipments-out", _order()).headers))

    async def handle_async(message: Any) -> None:
        handle(message)

    t.consumer.handler("orders")(handle if plain else handle_async)
    t.run()
    process = t.one("process orders")
    assert published[0]["traceparent"] == f"00-{TRACE_ID:032x}-{process.context.span_id:016x}-01".encode()


# -- configuration from OTEL_* (in a fresh interpreter: the global provider can be set once) ------------------
def _configure(env: dict[str, str]) -> subprocess.CompletedProcess:
    code = (
        "from toolkit.observability.tracing import configure_tracing\n"
        "from opentelemetry import trace\n"
        "provider = configure_tracing('shop')\n"
        "print(provider.resource.attributes['service.name'], type(trace.get_tracer_provider()).__name__)\n"
        "with trace.get_tracer('t').start_as_current_span('hello'): pass\n"
        "provider.shutdown()\n"
    )
    clean = {k: v for k, v in __import__("os").environ.items() if not k.startswith("OTEL_")}
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, env={**clean, **env}, timeout=60
    )


def test_configure_tracing_reads_the_otel_variables() -> None:
    proc = _configure({"OTEL_TRACES_EXPORTER": "console"})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("shop TracerProvider") and '"name": "hello"' in proc.stdout
    proc = _configure({"OTEL_TRACES_EXPORTER": "none", "OTEL_SERVICE_NAME": "orders-service"})
    assert proc.returncode == 0 and proc.stdout.strip() == "orders-service TracerProvider", proc.stderr


def test_an_exporter_that_is_not_installed_is_a_config_error_naming_the_variable() -> None:
    proc = _configure({"OTEL_TRACES_EXPORTER": "zipkin_json"})
    assert proc.returncode != 0
    assert "ConfigError: OTEL_TRACES_EXPORTER='zipkin_json'" in proc.stderr and "console" in proc.stderr


# -- the producer's own span ---------------------------------------------------------------------------------
class BrokerClient:
    """A KafkaProducerClient writing into an InMemoryBroker, acknowledging on poll."""

    def __init__(self, broker: InMemoryBroker) -> None:
        self.broker, self.pending, self.lock = broker, [], threading.Lock()

    def produce(self, topic, value=None, key=None, *, headers=None, on_delivery=None) -> None:
        record = self.broker.produce(topic, value, key, headers=headers)
        with self.lock:
            self.pending.append((on_delivery, record))

    def poll(self, timeout: float) -> int:
        with self.lock:
            pending, self.pending = self.pending, []
        for callback, record in pending:
            callback(None, record)
        return len(pending)

    def flush(self, timeout: float) -> int:
        self.poll(0)
        return 0


def test_publish_makes_a_producer_span_and_the_consumers_span_is_its_child() -> None:
    t = Traced(stop_when_idle=True)
    with EnvelopeProducer(
        registry=CachedRegistry(LocalFolderRegistry(ROOT / "schemas")),
        client=BrokerClient(t.broker),
        tracer_provider=t.provider,
    ) as producer:

        async def publish() -> None:
            with t.tracer.start_as_current_span("checkout"):
                await producer.publish("orders", _order(), key="k-1", correlation_id="c-9")

        asyncio.run(publish())
    t.consumer.handler("orders")(lambda message: True)
    t.run()
    checkout, send, process = t.one("checkout"), t.one("send orders"), t.one("process orders")
    assert send.kind is SpanKind.PRODUCER and send.parent.span_id == checkout.context.span_id
    assert process.parent.span_id == send.context.span_id and process.parent.is_remote
    assert process.context.trace_id == send.context.trace_id == checkout.context.trace_id
    assert send.attributes["messaging.system"] == "kafka"
    assert send.attributes["messaging.operation.type"] == send.attributes["messaging.operation.name"] == "send"
    assert send.attributes["messaging.destination.name"] == "orders"
    assert send.attributes["messaging.message.id"] == process.attributes["messaging.message.id"]
    assert send.attributes["messaging.message.conversation_id"] == "c-9"
    assert send.attributes["messaging.kafka.offset"] == 0 and send.attributes["messaging.destination.partition.id"]
    assert send.status.status_code is StatusCode.UNSET


def test_a_send_outside_any_span_starts_the_trace_and_a_refused_one_ends_in_error() -> None:
    t = Traced(stop_when_idle=True)
    producer = EnvelopeProducer(
        registry=CachedRegistry(LocalFolderRegistry(ROOT / "schemas")),
        client=BrokerClient(t.broker),
        tracer_provider=t.provider,
    )
    producer.send("orders", _order()).result(10)
    with pytest.raises(Exception, match="fails its schema"):
        producer.send("orders", Order.model_construct(**{**ORDER, "orderId": "not a uuid"}))
    producer.close()
    sent, refused = t.spans("send orders")
    assert sent.parent is None and sent.status.status_code is StatusCode.UNSET
    assert refused.status.status_code is StatusCode.ERROR and refused.attributes["error.type"] == "PublishRefused"
    assert len(t.broker.records("orders")) == 1
    (record,) = t.broker.records("orders")
    assert dict(record.headers())["traceparent"].decode().split("-")[2] == f"{sent.context.span_id:016x}"


def test_without_an_sdk_the_send_carries_the_callers_context_on() -> None:
    broker = InMemoryBroker()
    caller = TracerProvider().get_tracer("tests")
    producer = EnvelopeProducer(
        registry=CachedRegistry(LocalFolderRegistry(ROOT / "schemas")), client=BrokerClient(broker)
    )
    with caller.start_as_current_span("caller") as span:  # the global provider is the API's no-op one
        producer.send("orders", _order()).result(10)
    producer.close()
    (record,) = broker.records("orders")
    assert dict(record.headers())["traceparent"].decode().split("-")[2] == f"{span.get_span_context().span_id:016x}"


# -- the sampling decision without the SDK -------------------------------------------------------------------
def _sdk_starts(t: Traced, monkeypatch) -> list[str]:
    """The names of the spans the middleware's SDK tracer is asked to start (the provider's tracer of the
    scope, shared with the middleware)."""
    tracer = t.provider.get_tracer("toolkit.consumer")
    started: list[str] = []
    start_span = tracer.start_span

    def counted(name: str, *args: Any, **kwargs: Any) -> Any:
        started.append(name)
        return start_span(name, *args, **kwargs)

    monkeypatch.setattr(tracer, "start_span", counted)
    return started


class GivenIds(IdGenerator):
    """Trace ids from a list, span ids counted."""

    def __init__(self, trace_ids: list[int]) -> None:
        self.trace_ids, self.span_id = list(trace_ids), 0

    def generate_trace_id(self) -> int:
        return self.trace_ids.pop(0)

    def generate_span_id(self) -> int:
        self.span_id += 1
        return self.span_id


class EveryOther(Sampler):
    """A sampler of the application's own: samples the first span it is asked about, then every other one."""

    def __init__(self) -> None:
        self.calls = 0

    def should_sample(self, parent_context, trace_id, name, kind=None, attributes=None, links=None, trace_state=None):
        self.calls += 1
        return SamplingResult(Decision.RECORD_AND_SAMPLE if self.calls % 2 else Decision.DROP)

    def get_description(self) -> str:
        return "EveryOther"


class Lenient(TraceIdRatioBased):
    """A ratio sampler's subclass that samples everything whatever its rate says."""

    def should_sample(self, parent_context, trace_id, name, kind=None, attributes=None, links=None, trace_state=None):
        return SamplingResult(Decision.RECORD_AND_SAMPLE)


@pytest.mark.parametrize(
    "sampler",
    [ALWAYS_OFF, DEFAULT_OFF, TraceIdRatioBased(0), ParentBasedTraceIdRatio(0)],
    ids=["always_off", "parentbased_always_off", "traceidratio 0", "parentbased_traceidratio 0"],
)
def test_a_record_the_sampler_drops_has_no_sdk_span_but_a_context_its_handler_and_producer_carry_on(
    sampler, producer, monkeypatch
) -> None:
    t = Traced(sampler=sampler, stop_when_idle=True)
    started = _sdk_starts(t, monkeypatch)
    for _ in range(3):
        t.broker.produce("orders", envelope("orders", 2, ORDER))
    seen = []

    def handle(message: Any) -> None:
        record = trace.get_current_span().get_span_context()
        with t.tracer.start_as_current_span("book the order") as child:
            traceparent = dict(producer.build("shipments-out", _order()).headers)["traceparent"]
        seen.append((record, child.get_span_context(), child.is_recording(), traceparent.decode()))

    t.consumer.handler("orders")(handle)
    t.run()
    assert started == [] and t.spans() == [] and t.tracing.open_spans == 0
    assert len(seen) == 3 and len({record.trace_id for record, *_ in seen}) == 3  # a new trace each
    for record, child, recording, traceparent in seen:
        assert record.is_valid and not record.trace_flags.sampled and not record.is_remote
        assert child.trace_id == record.trace_id and not child.trace_flags.sampled and not recording
        _, trace_id, span_id, flags = traceparent.split("-")
        assert (int(trace_id, 16), int(span_id, 16), int(flags, 16) & 1) == (record.trace_id, child.span_id, 0)


def test_a_record_its_producer_did_not_sample_has_no_sdk_span_and_stays_in_the_producers_trace(monkeypatch) -> None:
    t = Traced(sampler=ParentBasedTraceIdRatio(1.0), stop_when_idle=True)  # every new trace sampled
    started = _sdk_starts(t, monkeypatch)
    unsampled = TRACEPARENT[:-2] + b"00"
    t.broker.produce(
        "orders", envelope("orders", 2, ORDER), headers=[("traceparent", unsampled), ("tracestate", b"v=x")]
    )
    t.broker.produce("orders", envelope("orders", 2, ORDER), headers=[("traceparent", TRACEPARENT)])
    t.broker.produce("orders", b"not json", headers=[("traceparent", unsampled)])  # and its dead letter
    seen = []
    t.consumer.handler("orders")(lambda message: seen.append(trace.get_current_span().get_span_context()))
    t.run()
    first, second = seen
    assert first.trace_id == TRACE_ID and first.span_id != PARENT_ID and not first.trace_flags.sampled
    assert not first.is_remote and first.trace_state.get("v") == "x"
    assert started == ["process orders"]  # the sampled record's; the dead letter of one not sampled has none
    (span,) = t.spans()
    assert span.context.span_id == second.span_id and span.parent.span_id == PARENT_ID
    assert t.tracing.open_spans == 0 and len(t.broker.records("orders.dlq")) == 1


@pytest.mark.parametrize("sampler", [TraceIdRatioBased(0.25), ParentBasedTraceIdRatio(0.25)], ids=str)
def test_a_ratio_samplers_decisions_are_the_sdks_on_the_same_trace_ids(sampler) -> None:
    bound = TraceIdRatioBased(0.25).bound
    high = 7 << 64  # the rule reads the low 64 bits only
    ids = [bound - 1, bound, bound + 1, 1, (1 << 64) - 1, high | (bound - 1), high | bound, (1 << 128) - 1]
    t = Traced(sampler=sampler, id_generator=GivenIds(ids), stop_when_idle=True)
    for _ in ids:
        t.broker.produce("orders", envelope("orders", 2, ORDER))
    seen = []
    t.consumer.handler("orders")(lambda message: seen.append(trace.get_current_span().get_span_context().trace_id))
    t.run()
    sdk = TraceIdRatioBased(0.25)
    expected = [i for i in ids if sdk.should_sample(None, i, "process orders").decision.is_sampled()]
    assert expected == [bound - 1, 1, high | (bound - 1)]
    assert seen == ids  # one draw a record, sampled or not: a sampled span has the id it was decided on
    assert [span.context.trace_id for span in t.spans("process orders")] == expected


_RATES = (0, 1e-6, 0.01, 0.1, 0.5, 1)


@pytest.mark.parametrize(
    "sampler",
    [ALWAYS_ON, ALWAYS_OFF, DEFAULT_ON, DEFAULT_OFF, ParentBased(TraceIdRatioBased(0.01))]
    + [TraceIdRatioBased(rate) for rate in _RATES]
    + [ParentBasedTraceIdRatio(rate) for rate in _RATES],
    ids=str,
)
def test_the_fast_rule_decides_as_the_sdks_sampler_for_a_span_without_parent(sampler) -> None:
    from toolkit.observability._sampling import root_rule

    rule = root_rule(sampler)
    assert rule is not None
    mask, bound = rule
    rng = random.Random(7)
    ids = [rng.getrandbits(128) or 1 for _ in range(3000)] + [1, (1 << 64) - 1, (1 << 64), (1 << 128) - 1]
    for rate in _RATES:
        edge = TraceIdRatioBased.get_bound_for_rate(rate)
        ids += [n for n in (edge - 1, edge, edge + 1, (5 << 64) | edge, (5 << 64) | max(edge - 1, 1)) if n > 0]
    for trace_id in ids:
        sampled = sampler.should_sample(None, trace_id, "process orders").decision.is_sampled()
        assert (trace_id & mask < bound) == sampled, hex(trace_id)


@pytest.mark.parametrize(
    "sampler",
    [EveryOther(), Lenient(0), ParentBased(EveryOther()), StaticSampler(Decision.RECORD_ONLY)],
    ids=["own sampler", "subclass deciding otherwise", "parentbased on its own root", "record only"],
)
def test_any_other_sampler_is_asked_by_the_sdk_for_every_record_and_obeyed(sampler, monkeypatch) -> None:
    from toolkit.observability._sampling import root_rule

    assert root_rule(sampler) is None
    t = Traced(sampler=sampler, stop_when_idle=True)
    started = _sdk_starts(t, monkeypatch)
    for _ in range(4):
        t.broker.produce("orders", envelope("orders", 2, ORDER))
    recording = []
    t.consumer.handler("orders")(lambda message: recording.append(trace.get_current_span().is_recording()))
    t.run()
    assert started == ["process orders"] * 4
    expected = [True, True, True, True] if isinstance(sampler, Lenient | StaticSampler) else [True, False] * 2
    assert recording == expected
    exported = 0 if isinstance(sampler, StaticSampler) else expected.count(True)  # recorded, not sampled
    assert len(t.spans("process orders")) == exported


class FakeRecord:
    def headers(self) -> None:
        return None

    def topic(self) -> str:
        return "orders"

    def partition(self) -> int:
        return 0

    def offset(self) -> int:
        return 0

    def value(self) -> bytes:
        return b"{}"


def test_a_global_provider_installed_after_the_middleware_is_used_from_then_on(monkeypatch) -> None:
    from toolkit.consumer.outcomes import DONE

    installed: list[Any] = [trace.ProxyTracerProvider()]
    monkeypatch.setattr(trace, "get_tracer_provider", lambda: installed[0])
    tracing = TracingMiddleware(group_id="shop")

    def current_span_of_a_record() -> Any:
        def run() -> Any:  # in a copy of the context: on_record makes the span current for good
            record = FakeRecord()
            tracing.on_record(record)  # type: ignore[arg-type]
            context = trace.get_current_span().get_span_context()
            tracing.on_outcome(record, None, DONE, 1, None)  # type: ignore[arg-type]
            return context

        return contextvars.copy_context().run(run)

    assert not current_span_of_a_record().is_valid  # no SDK yet: the API's no-op span
    installed[0] = TracerProvider(sampler=DEFAULT_OFF)
    tracer = installed[0].get_tracer("toolkit.consumer")
    calls = []
    monkeypatch.setattr(tracer, "start_span", lambda *args, **kwargs: calls.append(args))
    context = current_span_of_a_record()
    assert context.is_valid and not context.trace_flags.sampled and calls == []
    assert tracing.open_spans == 0


def test_a_disabled_sdk_gives_the_api_no_op_span(monkeypatch) -> None:
    monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
    t = Traced(sampler=ALWAYS_OFF, stop_when_idle=True)
    t.broker.produce("orders", envelope("orders", 2, ORDER))
    seen = []
    t.consumer.handler("orders")(lambda message: seen.append(trace.get_current_span().get_span_context()))
    t.run()
    assert [context.is_valid for context in seen] == [False] and t.spans() == []


def test_a_dropped_records_dead_letter_span_is_recorded_when_the_sampler_records_such_children() -> None:
    sampler = ParentBased(ALWAYS_OFF, local_parent_not_sampled=ALWAYS_ON)
    t = Traced(sampler=sampler, stop_when_idle=True)
    t.broker.produce("orders", b"not json")
    t.broker.produce("orders", envelope("orders", 2, ORDER))
    t.consumer.handler("orders")(lambda message: True)
    t.run()
    (send,) = t.spans()  # the records' spans are dropped, the dead letter's is a child the sampler records
    assert send.name == "send orders.dlq" and send.parent is not None and not send.parent.trace_flags.sampled
    assert send.context.trace_id == send.parent.trace_id and t.tracing.open_spans == 0


@pytest.mark.parametrize("sampler", [ALWAYS_OFF, ParentBasedTraceIdRatio(0.25)], ids=str)
def test_a_dropped_records_span_context_is_made_once_and_only_when_asked_for(sampler) -> None:
    """The non-recording span of a record the sampler drops draws its span id (and with a sampler that drops
    every root, its trace id too) only when something asks for its context, once, the same for every thread
    that asks; a handler that never asks costs no draw."""
    bound = TraceIdRatioBased(0.25).bound
    ids = GivenIds([bound + 5, bound + 6, bound + 7, bound + 8])  # (the ratio sampler drops each of them)
    t = Traced(sampler=sampler, id_generator=ids, stop_when_idle=True)
    for _ in range(2):
        t.broker.produce("orders", envelope("orders", 2, ORDER))
    seen: list[Any] = []

    def handle(message: Any) -> None:
        if message.offset == 0:  # the first record's handler never asks for its span
            return
        span = trace.get_current_span()
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            contexts = list(pool.map(lambda _: span.get_span_context(), range(64)))
        seen.append((span, contexts, repr(span)))

    t.consumer.handler("orders")(handle)
    t.run()
    ((span, contexts, text),) = seen
    context = contexts[0]
    assert not span.is_recording() and all(c is context for c in contexts) and span.get_span_context() is context
    assert context.is_valid and not context.trace_flags.sampled and f"span_id=0x{context.span_id:016x}" in text
    assert ids.span_id == 1  # one span id drawn: the second record's, once
    for twin in (copy.copy(span), copy.deepcopy(span), pickle.loads(pickle.dumps(span))):
        assert type(twin) is trace.NonRecordingSpan and twin.get_span_context() == context
    if sampler is ALWAYS_OFF:  # no decision to draw for: the trace id too only when asked
        assert ids.trace_ids == [bound + 6, bound + 7, bound + 8] and context.trace_id == bound + 5
    else:  # one draw per record, for its decision: the second record's span has the second id
        assert ids.trace_ids == [bound + 7, bound + 8] and context.trace_id == bound + 6
