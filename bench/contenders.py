"""One contender drains the backlog in a fresh process: ``python -m bench.contenders NAME ...`` prints JSON.

Timing starts at the first record received (group join excluded) and stops when the last record of the
backlog has been fully handled. Each run uses a new consumer group, so every contender reads the same
records from the beginning.

    L0  raw confluent-kafka consume loop, no decoding (the ceiling)
    L1  a hand-written loop doing the toolkit's work and nothing more, with the toolkit's own pure
        functions: parse the envelope (JSON and the header model), validate the body with the cached
        validator, build the generated model, store offsets (commits every second)
    T   the toolkit's KafkaConsumer (defaults, and tuned)
    T-traced  the toolkit with tracing on: TracingMiddleware on the OpenTelemetry SDK, a BatchSpanProcessor
        and an exporter that drops the spans (what tracing costs the consumer, not what exporting costs);
        every record sampled
    T-sampled  the same with one trace in ten sampled (parentbased_traceidratio 0.1); T-sampled100 one in a
        hundred; T-unsampled none (every record still gets the SDK's non-recording span and its context)
    T-metrics  defaults with PrometheusMiddleware (every metric on, librdkafka's statistics every 5 s for
        the lag)
    P1  FastStream 0.7 with its confluent backend, the same pydantic model, a no-op handler
    P2  confluent-kafka's DeserializingConsumer with its JSONDeserializer (jsonschema) and the same model

Format ``avro-wire`` (``shipments`` v2 in Confluent's wire format, the schema in the registry at
``SCHEMA_REGISTRY_URL``): L1 is the hand-written loop doing the same work (poll, strip the 5-byte prefix,
fastavro's ``schemaless_reader`` with the id's parsed schema, the generated model), T reads the topic with
the value format ``confluent``, and P2 is ``DeserializingConsumer`` with ``AvroDeserializer`` building the
same model.

Besides msg/s it reports the peak RSS of this process alone (VmHWM), the CPU it used between the first
and the last record (all threads, and per thread), and so how many cores it kept busy. ``--cpus 1``
restricts it to CPU 1 before anything starts.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BATCH = 1000
MIN_CPU_WINDOW_S = 0.5


_CPU: dict[str, Any] = {}
# --breakdown (EPISTLE_BENCH_BREAKDOWN=1): seconds spent in the stages L1 and T share, from the first record on
_STAGES: dict[str, float] = {}
STAGES = ("envelope", "validation", "avro decode", "model")


def time_stages() -> None:
    """Time the work both L1 and T do with the same functions (perf_counter around each call): the envelope
    parse (JSON and the header model), the schema validator, fastavro's reader, the generated model's
    validation. A contender's time per record minus these is what it does besides: for L1 its loop, for T
    the engine (lanes, offsets, outcomes, the message handed to the handler). Costs each call ~0.2 us."""
    import fastavro

    import toolkit.consumer.pipeline as pipeline
    import toolkit.envelope as envelope
    from toolkit.validation.avro import AvroSchema
    from toolkit.validation.json_schema import JsonSchema

    clock = time.perf_counter

    def timed(stage: str, call: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            started = clock()
            try:
                return call(*args, **kwargs)
            finally:
                _STAGES[stage] = _STAGES.get(stage, 0.0) + clock() - started

        return wrapper

    envelope.decode_record = pipeline.decode_record = timed("envelope", envelope.decode_record)  # type: ignore[assignment]
    JsonSchema.decode = timed("validation", JsonSchema.decode)  # type: ignore[method-assign]
    AvroSchema.decode = timed("validation", AvroSchema.decode)  # type: ignore[method-assign]
    fastavro.schemaless_reader = timed("avro decode", fastavro.schemaless_reader)
    build = pipeline.Pipeline._build
    pipeline.Pipeline._build = staticmethod(timed("model", build))  # type: ignore[method-assign]
    _STAGES["on"] = 1.0


def _model_call(model: Any) -> Callable[[Any], Any]:
    """L1's ``model.model_validate``, timed as stage ``model`` under --breakdown."""
    if "on" not in _STAGES:
        return model.model_validate

    def validate(value: Any) -> Any:
        started = time.perf_counter()
        try:
            return model.model_validate(value)
        finally:
            _STAGES["model"] = _STAGES.get("model", 0.0) + time.perf_counter() - started

    return validate


def _start() -> float:
    """Mark the first record: the wall clock, and the CPU used so far (process and per thread)."""
    from bench.machine import thread_cpu_seconds

    _CPU["process"], _CPU["threads"] = _process_cpu_s(), thread_cpu_seconds()
    if "on" in _STAGES:  # the first record's stages are before the clock starts
        _STAGES.clear()
        _STAGES["on"] = 1.0
    return time.perf_counter()


def _elapsed(started: float) -> float:
    """Seconds since ``_start``; also takes the CPU used meanwhile (process total and per thread)."""
    from bench.machine import thread_cpu_seconds

    elapsed = time.perf_counter() - started
    if "on" in _STAGES:
        _CPU["stages_s"] = {stage: _STAGES.get(stage, 0.0) for stage in STAGES}
    if "process" in _CPU:
        _CPU["cpu_s"] = _process_cpu_s() - _CPU["process"]
        before = _CPU["threads"]
        by_name: dict[str, float] = {}
        for tid, (name, seconds) in thread_cpu_seconds().items():
            used = seconds - before.get(tid, (name, 0.0))[1]
            if used >= 0.01:
                by_name[name] = round(by_name.get(name, 0.0) + used, 2)
        _CPU["threads_cpu_s"] = dict(sorted(by_name.items(), key=lambda kv: -kv[1]))
    return elapsed


def _process_cpu_s() -> float:
    times = os.times()
    return times.user + times.system


def _consumer_config(bootstrap: str, **extra: Any) -> dict[str, Any]:
    return {
        "bootstrap.servers": bootstrap,
        "group.id": f"bench-{uuid.uuid4().hex[:8]}",
        "auto.offset.reset": "earliest",
        "enable.auto.commit": False,
        **extra,
    }


def _schema_and_model(fmt: str):
    """The registered schema (from the local folder) and the generated model class for the backlog."""
    from toolkit.codegen.index import load_model_index
    from toolkit.layout import load_schemas

    name = "orders" if fmt == "json" else "shipments"
    subject = load_schemas(ROOT / "schemas")[name]
    schema = subject.version(2)
    model = load_model_index().get(name, 2)
    if model is None:
        raise SystemExit(f"no generated model for {name} v2: run make codegen")
    return schema, model


def run_l0(bootstrap: str, topic: str, count: int, fmt: str) -> dict[str, Any]:
    from confluent_kafka import Consumer

    consumer = Consumer(_consumer_config(bootstrap))
    consumer.subscribe([topic])
    seen, started = 0, None
    while seen < count:
        for message in consumer.consume(BATCH, 1.0):
            if message.error() is None:
                started = started or _start()
                seen += 1
    elapsed = _elapsed(started)
    consumer.close()
    return {"messages": seen, "elapsed_s": elapsed}


def run_l1(bootstrap: str, topic: str, count: int, fmt: str) -> dict[str, Any]:
    if fmt == "avro-wire":
        return run_l1_wire(bootstrap, topic, count)
    from confluent_kafka import Consumer

    schema, model = _schema_and_model(fmt)
    decode = _hand_written_decoder(fmt, schema)
    consumer = Consumer(_consumer_config(bootstrap, **{"enable.auto.offset.store": False}))
    consumer.subscribe([topic])
    seen, started, last_commit = 0, None, time.monotonic()
    from toolkit.envelope import decode_record  # the envelope parse: JSON, then the header model

    validate_model = _model_call(model)
    while seen < count:
        for message in consumer.consume(BATCH, 1.0):
            if message.error() is not None:
                continue
            started = started or _start()
            envelope = decode_record(message.value())
            header = envelope.header
            if header.schema_name != schema.subject or header.schema_version != "2":
                raise SystemExit("unexpected schema in backlog")
            validate_model(decode(envelope.body))
            consumer.store_offsets(message)
            seen += 1
        if time.monotonic() - last_commit > 1.0:
            consumer.commit(asynchronous=True)
            last_commit = time.monotonic()
    elapsed = _elapsed(started)
    _final_commit(consumer)
    consumer.close()
    return {"messages": seen, "elapsed_s": elapsed}


def run_l1_wire(bootstrap: str, topic: str, count: int) -> dict[str, Any]:
    """L1 for Confluent's wire format: the schema fetched once per id from the registry and parsed by
    fastavro, then per record: strip the prefix, ``schemaless_reader``, the generated model."""
    from confluent_kafka import Consumer
    from confluent_kafka.schema_registry import SchemaRegistryClient
    from fastavro import parse_schema, schemaless_reader

    from bench.backlog import registry_url

    _, model = _schema_and_model("avro")
    client = SchemaRegistryClient({"url": registry_url()})
    parsed: dict[int, Any] = {}
    validate_model = _model_call(model)
    consumer = Consumer(_consumer_config(bootstrap, **{"enable.auto.offset.store": False}))
    consumer.subscribe([topic])
    seen, started, last_commit = 0, None, time.monotonic()
    while seen < count:
        for message in consumer.consume(BATCH, 1.0):
            if message.error() is not None:
                continue
            started = started or _start()
            value = message.value()
            if value[0] != 0:
                raise SystemExit("not Confluent's wire format")
            schema_id = int.from_bytes(value[1:5], "big")
            schema = parsed.get(schema_id)
            if schema is None:
                schema = parsed[schema_id] = parse_schema(json.loads(client.get_schema(schema_id).schema_str))
            validate_model(schemaless_reader(io.BytesIO(value[5:]), schema, None))
            consumer.store_offsets(message)
            seen += 1
        if time.monotonic() - last_commit > 1.0:
            consumer.commit(asynchronous=True)
            last_commit = time.monotonic()
    elapsed = _elapsed(started)
    _final_commit(consumer)
    consumer.close()
    return {"messages": seen, "elapsed_s": elapsed}


def _final_commit(consumer: Any) -> None:
    """The hand loops' last commit, after the clock stopped: "no offset stored" (the asynchronous commit just
    before took every stored offset) is not a failure of the run."""
    from confluent_kafka import KafkaError, KafkaException

    try:
        consumer.commit(asynchronous=False)
    except KafkaException as exc:
        if exc.args[0].code() != KafkaError._NO_OFFSET:
            raise


def _hand_written_decoder(fmt: str, schema) -> Callable[[Any], Any]:
    """The toolkit's cached validator (what "validate with the cached validator" means for L1)."""
    from toolkit.registry.base import RegisteredSchema
    from toolkit.validation import compile_schema

    return compile_schema(RegisteredSchema(schema.subject, schema.version, schema.format, schema.text)).decode


def run_p1(bootstrap: str, topic: str, count: int, fmt: str) -> dict[str, Any]:
    if fmt != "json":
        # pydantic cannot read Avro's JSON encoding (wrapped unions, decimals as byte strings) directly.
        what = "Confluent wire-format" if fmt == "avro-wire" else "Avro JSON-encoding"
        return {"skipped": f"FastStream has no {what} decoder; JSON Schema variant only"}
    from faststream.confluent import KafkaBroker
    from pydantic import BaseModel

    _, model = _schema_and_model(fmt)

    class Envelope(BaseModel):
        header: dict[str, str]
        body: model  # type: ignore[valid-type]

    state: dict[str, Any] = {"seen": 0, "started": None, "elapsed": None}

    async def main() -> None:
        broker = KafkaBroker(bootstrap, logger=None)
        done = asyncio.Event()

        @broker.subscriber(topic, group_id=f"bench-{uuid.uuid4().hex[:8]}", auto_offset_reset="earliest")
        async def handle(message: Envelope) -> None:
            state["started"] = state["started"] or _start()
            state["seen"] += 1
            if state["seen"] >= count:
                state["elapsed"] = _elapsed(state["started"])
                done.set()

        await broker.start()
        await done.wait()
        await broker.stop()

    asyncio.run(main())
    return {"messages": state["seen"], "elapsed_s": state["elapsed"]}


def run_p2(bootstrap: str, topic: str, count: int, fmt: str) -> dict[str, Any]:
    if fmt == "avro-wire":
        return run_p2_wire(bootstrap, topic, count)
    if fmt != "json":
        return {"skipped": "JSONDeserializer is for JSON Schema bodies only"}
    from confluent_kafka import DeserializingConsumer
    from confluent_kafka.schema_registry.json_schema import JSONDeserializer

    schema, model = _schema_and_model(fmt)
    # The envelope validated as a whole: the body schema nested, its $defs moved to the root.
    defs = {k: v for k, v in schema.document.items() if k in ("$defs", "definitions")}
    body_schema = {k: v for k, v in schema.document.items() if k not in ("$defs", "definitions", "$id", "$schema")}
    envelope_schema = {
        "$schema": schema.document.get("$schema"),
        "type": "object",
        "required": ["header", "body"],
        "properties": {"header": {"type": "object"}, "body": body_schema},
        **defs,
    }

    def from_dict(envelope: dict, ctx) -> Any:
        return envelope["header"], model.model_validate(envelope["body"])

    deserializer = JSONDeserializer(
        json.dumps(envelope_schema),
        from_dict=from_dict,
        conf={"schema.id.deserializer": lambda data, ctx, schema_id: io.BytesIO(data)},
    )
    consumer = DeserializingConsumer(
        _consumer_config(bootstrap, **{"value.deserializer": deserializer, "enable.auto.offset.store": False})
    )
    consumer.subscribe([topic])
    seen, started, last_commit = 0, None, time.monotonic()
    while seen < count:
        message = consumer.poll(1.0)
        if message is None or message.error() is not None:
            continue
        started = started or _start()
        consumer.store_offsets(message)
        seen += 1
        if seen % 1000 == 0 and time.monotonic() - last_commit > 1.0:
            consumer.commit(asynchronous=True)
            last_commit = time.monotonic()
    elapsed = _elapsed(started)
    consumer.close()
    return {"messages": seen, "elapsed_s": elapsed}


def run_p2_wire(bootstrap: str, topic: str, count: int) -> dict[str, Any]:
    """P2 for Confluent's wire format: DeserializingConsumer + AvroDeserializer (the registry's schema by
    id) building the same generated model."""
    from confluent_kafka import DeserializingConsumer
    from confluent_kafka.schema_registry import SchemaRegistryClient
    from confluent_kafka.schema_registry.avro import AvroDeserializer

    from bench.backlog import registry_url

    _, model = _schema_and_model("avro")
    deserializer = AvroDeserializer(
        SchemaRegistryClient({"url": registry_url()}), from_dict=lambda value, ctx: model.model_validate(value)
    )
    consumer = DeserializingConsumer(
        _consumer_config(bootstrap, **{"value.deserializer": deserializer, "enable.auto.offset.store": False})
    )
    consumer.subscribe([topic])
    seen, started, last_commit = 0, None, time.monotonic()
    while seen < count:
        message = consumer.poll(1.0)
        if message is None or message.error() is not None:
            continue
        started = started or _start()
        consumer.store_offsets(message)
        seen += 1
        if seen % 1000 == 0 and time.monotonic() - last_commit > 1.0:
            consumer.commit(asynchronous=True)
            last_commit = time.monotonic()
    elapsed = _elapsed(started)
    consumer.close()
    return {"messages": seen, "elapsed_s": elapsed}


def _run_toolkit(bootstrap: str, topic: str, count: int, fmt: str, **options: Any) -> dict[str, Any]:
    from toolkit.consumer import KafkaConsumer

    if fmt == "avro-wire":  # the registry holding the backlog's schema, read in Confluent's wire format
        from bench.backlog import registry_url
        from toolkit.registry import ConfluentHttpRegistry, topic_value_strategy

        options |= {
            "registry": ConfluentHttpRegistry(registry_url()),
            "subject_strategy": topic_value_strategy,
            "value_formats": {topic: "confluent"},
        }
    seen, started, elapsed = 0, 0.0, None
    consumer = KafkaConsumer(bootstrap, f"bench-{uuid.uuid4().hex[:8]}", **options)

    async def handle(message: Any) -> bool:  # (L1's bookkeeping around its stages, in variables as L1's)
        nonlocal seen, started, elapsed
        started = started or _start()
        seen += 1
        if seen == count:
            elapsed = _elapsed(started)
            consumer.request_stop()
        return True

    consumer.register_handler(topic, handle)
    asyncio.run(consumer.start())
    return {"messages": seen, "elapsed_s": elapsed, "stats": consumer.stats.as_dict()}


def run_t(bootstrap: str, topic: str, count: int, fmt: str) -> dict[str, Any]:
    """The toolkit with default settings (local schemas/ folder registry, generated models)."""
    return _run_toolkit(bootstrap, topic, count, fmt)


def run_t_metrics(bootstrap: str, topic: str, count: int, fmt: str) -> dict[str, Any]:
    """T with Prometheus metrics: the middleware on every record, a state snapshot every second and the
    lag from librdkafka's statistics (nothing scrapes it: a scrape every 15 s costs next to nothing)."""
    from prometheus_client import CollectorRegistry

    from toolkit.observability import PrometheusMiddleware

    return _run_toolkit(bootstrap, topic, count, fmt, middleware=[PrometheusMiddleware(CollectorRegistry())])


def run_t_tuned(bootstrap: str, topic: str, count: int, fmt: str) -> dict[str, Any]:
    """The toolkit with larger fetch batches, a larger window and less frequent commits (same guarantees:
    PARTITION ordering, commits only up to the contiguous-done watermark)."""
    return _run_toolkit(
        bootstrap, topic, count, fmt, max_poll_records=2000, max_in_flight=20_000, commit_interval_s=2.0
    )


def run_t_traced(bootstrap: str, topic: str, count: int, fmt: str, ratio: float = 1.0) -> dict[str, Any]:
    """T with a span per record: the SDK's provider, its BatchSpanProcessor, an exporter that drops them;
    ``ratio`` of the traces sampled."""
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
    from opentelemetry.sdk.trace.sampling import ALWAYS_ON, ParentBased, TraceIdRatioBased

    from toolkit.observability.tracing import TracingMiddleware

    class Dropped(SpanExporter):
        def __init__(self) -> None:
            self.spans = 0

        def export(self, spans: Any) -> SpanExportResult:
            self.spans += len(spans)
            return SpanExportResult.SUCCESS

    sampler = ALWAYS_ON if ratio >= 1 else ParentBased(TraceIdRatioBased(ratio))  # ratio 0: ALWAYS_OFF
    exporter, provider = Dropped(), TracerProvider(sampler=sampler)
    provider.add_span_processor(BatchSpanProcessor(exporter))
    result = _run_toolkit(
        bootstrap, topic, count, fmt, middleware=[TracingMiddleware(group_id="bench", tracer_provider=provider)]
    )
    provider.shutdown()
    return result | {"spans_exported": exporter.spans}


CONTENDERS: dict[str, Callable[[str, str, int, str], dict[str, Any]]] = {
    "L0": run_l0,
    "L1": run_l1,
    "T": run_t,
    "T-metrics": run_t_metrics,
    "T-tuned": run_t_tuned,
    "T-traced": run_t_traced,
    "T-sampled": lambda *args: run_t_traced(*args, ratio=0.1),
    "T-sampled100": lambda *args: run_t_traced(*args, ratio=0.01),
    "T-unsampled": lambda *args: run_t_traced(*args, ratio=0.0),
    "P1": run_p1,
    "P2": run_p2,
}


def finish(result: dict[str, Any], cpu: dict[str, Any], peak_rss_mb: float | None) -> dict[str, Any]:
    """Add the derived figures: msg/s, peak RSS, CPU seconds, cores busy, CPU per 1,000 records."""
    result["max_rss_mb"] = peak_rss_mb
    elapsed = result.get("elapsed_s")
    if elapsed:
        result["msgs_per_s"] = round(result["messages"] / elapsed, 1)
        if "cpu_s" in cpu and elapsed >= MIN_CPU_WINDOW_S:  # CPU time ticks by 10 ms: too coarse below
            result["cpu_s"] = round(cpu["cpu_s"], 3)
            result["cores_busy"] = round(cpu["cpu_s"] / elapsed, 2)
            result["cpu_ms_per_1k"] = round(1e6 * cpu["cpu_s"] / result["messages"], 2) if result["messages"] else None
            result["threads_cpu_s"] = cpu["threads_cpu_s"]
        if "stages_s" in cpu and result["messages"]:  # --breakdown: microseconds per record, by stage
            per = {stage: 1e6 * seconds / result["messages"] for stage, seconds in cpu["stages_s"].items()}
            per["rest"] = 1e6 * elapsed / result["messages"] - sum(per.values())
            result["stages_us"] = {stage: round(us, 2) for stage, us in per.items() if us or stage == "rest"}
    return result


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.contenders")
    parser.add_argument("name", choices=sorted(CONTENDERS))
    parser.add_argument("bootstrap")
    parser.add_argument("topic")
    parser.add_argument("count", type=int)
    parser.add_argument("fmt", choices=["json", "avro", "avro-wire"])
    parser.add_argument("--cpus", default="", help="comma-separated CPU numbers this process may run on")
    args = parser.parse_args(argv[1:])
    baseline = os.environ.get("EPISTLE_BENCH_TOOLKIT")
    if baseline:  # bench --baseline: import the toolkit (and its generated models) of another revision
        sys.path.insert(0, baseline)
        os.chdir(baseline)  # its schemas/ folder is the registry
    if os.environ.get("EPISTLE_BENCH_BREAKDOWN") == "1" and (args.name == "L1" or args.name.startswith("T")):
        time_stages()  # (the others do the same work with other functions: their figures would mislead)
    if args.cpus:  # before any thread exists: librdkafka's and the toolkit's threads inherit it
        os.sched_setaffinity(0, {int(c) for c in args.cpus.split(",")})
    from bench.machine import peak_rss_mb

    result = CONTENDERS[args.name](args.bootstrap, args.topic, args.count, args.fmt)
    print(json.dumps(finish(result, _CPU, peak_rss_mb())))


if __name__ == "__main__":
    main(sys.argv)
