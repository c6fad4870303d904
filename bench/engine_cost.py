"""What the engine costs a record, without a broker: the toolkit on the in-memory broker against the
hand-written loop's work (parse the envelope, validate the body, build the model) over the same bytes.

    python -m bench.engine_cost toolkit 20000 json   # CPU microseconds per record (process time)
    python -m bench.engine_cost hand 20000 json
    python -m bench.engine_cost toolkit 20000 json 0.1   # with tracing, one trace in ten sampled (0 to 1)

Under valgrind the figure is the same on any machine, busy or not (within 1%): the instructions one more
record costs, from two runs whose only difference is the record count (start-up and imports cancel out):

    for who in hand toolkit; do for n in 2000 6000; do
      PYTHONHASHSEED=0 valgrind --tool=callgrind --callgrind-out-file=/dev/null python -m bench.engine_cost $who $n json
    done; done   # (Collected 6000 - Collected 2000) / 4000 = instructions per record

(A fixed hash seed: with a random one the count of the same code moves by up to 2% between runs.)

Callgrind runs the program about 100 times slower than natively (6,352 against 61 us per record measured on
2026-12-01), and the engine's one time-based step, a lane handing the event loop over every few
milliseconds, would then come about 100 times as often per record as natively: the count would measure
valgrind's schedule (up to 6% more instructions per record, and a spread of 3% between runs). Under valgrind
(seen in ``LD_PRELOAD``) the toolkit mode stretches that slice by the same factor, so it comes as often per
record as in a native run.

Both modes put the records in the in-memory broker first; ``hand`` then reads them back as bytes, so the
set-up is the same. The toolkit's handler is an ``async def`` that does nothing; the records are 3
partitions of ``orders`` v2 (json) or ``shipments`` v2 (avro) envelopes, as in the throughput bench, or
``shipments`` v2 in Confluent's wire format (``wire``: Avro binary, the schema from an in-memory registry;
``hand`` does what the bench's hand-written wire loop does: the prefix, fastavro, the model).
"""

from __future__ import annotations

import asyncio
import random
import sys
import time
from pathlib import Path

PARTITIONS = 3
ROOT = Path(__file__).resolve().parent.parent


def _broker(count: int, fmt: str):
    from bench.backlog import envelope
    from toolkit.testing import InMemoryBroker

    rng = random.Random(7)
    pool = _wire_pool(rng) if fmt == "wire" else [envelope(fmt, rng) for _ in range(500)]
    broker = InMemoryBroker(partitions=PARTITIONS)
    broker.create_topic("t", PARTITIONS)
    for i in range(count):
        broker.produce("t", pool[i % len(pool)], partition=i % PARTITIONS)
    return broker


def _wire_registry():
    """An in-memory registry holding ``shipments`` v1 and v2 (v2's schema id is 2), as the ``avro-wire``
    backlog's registry does (subject ``shipments``: the default subject strategy)."""
    from toolkit.layout import SchemaFormat
    from toolkit.testing import InMemoryRegistry

    registry = InMemoryRegistry()
    for version in (1, 2):
        registry.register("shipments", (ROOT / f"schemas/shipments/{version}.avsc").read_text(), SchemaFormat.AVRO)
    return registry


def _wire_pool(rng: random.Random) -> list[bytes]:
    """500 ``shipments`` v2 records in Confluent's wire format (magic byte 0, schema id 2, Avro binary)."""
    import io
    import json
    import struct

    from fastavro import parse_schema, schemaless_writer

    from bench.backlog import shipment_body
    from toolkit.validation import compile_schema

    schema = _wire_registry().get("shipments", 2)
    compiled, parsed = compile_schema(schema), parse_schema(json.loads(schema.text))
    pool = []
    for _ in range(500):
        buffer = io.BytesIO()
        schemaless_writer(buffer, parsed, compiled.decode(shipment_body(rng)))
        pool.append(struct.pack(">bI", 0, schema.schema_id) + buffer.getvalue())
    return pool


VALGRIND_SLOWDOWN = 100


def _native_schedule() -> None:
    """Under valgrind, the lane slice stretched by valgrind's slowdown (see the module's documentation)."""
    import os

    if "vgpreload" in os.environ.get("LD_PRELOAD", ""):
        import toolkit.consumer.engine as engine

        engine._LANE_SLICE_S *= VALGRIND_SLOWDOWN


def toolkit(count: int, fmt: str, sampled: float | None = None) -> float:
    """CPU seconds from the first record handled to the last, the toolkit's defaults otherwise; ``sampled``:
    with TracingMiddleware on the OpenTelemetry SDK (that share of the traces sampled, the spans batched and
    dropped, as the bench's tracing contenders)."""
    from toolkit.consumer import KafkaConsumer

    _native_schedule()
    broker = _broker(count, fmt)
    state = {"seen": 0, "started": 0.0, "ended": 0.0}
    middleware = [] if sampled is None else [_tracing(sampled)]
    wire = {"registry": _wire_registry(), "value_formats": {"t": "confluent"}} if fmt == "wire" else {}
    consumer = KafkaConsumer(
        group_id="g", transport=broker.transport("g"), stop_when_idle=True, middleware=middleware, **wire
    )

    async def handle(message) -> None:
        if not state["seen"]:
            state["started"] = time.process_time()
        state["seen"] += 1
        if state["seen"] == count:
            state["ended"] = time.process_time()

    consumer.register_handler("t", handle)
    asyncio.run(consumer.start())
    if state["seen"] != count:
        raise SystemExit(f"handled {state['seen']} of {count} records")
    return state["ended"] - state["started"]


def _tracing(sampled: float):
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
    from opentelemetry.sdk.trace.sampling import ALWAYS_ON, ParentBased, TraceIdRatioBased

    from toolkit.observability.tracing import TracingMiddleware

    class Dropped(SpanExporter):
        def export(self, spans):
            return SpanExportResult.SUCCESS

    provider = TracerProvider(sampler=ALWAYS_ON if sampled >= 1 else ParentBased(TraceIdRatioBased(sampled)))
    provider.add_span_processor(BatchSpanProcessor(Dropped()))
    return TracingMiddleware(group_id="g", tracer_provider=provider)


def hand(count: int, fmt: str) -> float:
    """CPU seconds of the hand-written loop's work over the same records."""
    from bench.contenders import _hand_written_decoder, _schema_and_model
    from toolkit.envelope import decode_record

    broker = _broker(count, fmt)
    values = [record.value() for record in broker.records("t")]
    if fmt == "wire":
        return _hand_wire(values)
    schema, model = _schema_and_model(fmt)
    decode, validate_model = _hand_written_decoder(fmt, schema), model.model_validate
    started = time.process_time()
    for value in values:
        envelope = decode_record(value)
        header = envelope.header
        if header.schema_name != schema.subject or header.schema_version != "2":
            raise SystemExit("unexpected schema")
        validate_model(decode(envelope.body))
    return time.process_time() - started


def _hand_wire(values: list[bytes]) -> float:
    """The hand-written wire loop's work (as bench.contenders.run_l1_wire): the schema parsed once per id,
    then per record the prefix read, ``schemaless_reader``, the generated model."""
    import io
    import json

    from fastavro import parse_schema, schemaless_reader

    from bench.contenders import _model_call, _schema_and_model

    _, model = _schema_and_model("avro")
    registry = _wire_registry()
    parsed: dict[int, object] = {}
    validate_model = _model_call(model)
    started = time.process_time()
    for value in values:
        if value[0] != 0:
            raise SystemExit("not Confluent's wire format")
        schema_id = int.from_bytes(value[1:5], "big")
        schema = parsed.get(schema_id)
        if schema is None:
            schema = parsed[schema_id] = parse_schema(json.loads(registry.get_by_id(schema_id).text))
        validate_model(schemaless_reader(io.BytesIO(value[5:]), schema, None))
    return time.process_time() - started


def main(argv: list[str]) -> None:
    usage = "usage: python -m bench.engine_cost toolkit|hand COUNT json|avro|wire [SAMPLED (toolkit: tracing on, 0-1)]"
    if len(argv) not in (4, 5) or argv[1] not in ("toolkit", "hand") or argv[3] not in ("json", "avro", "wire"):
        raise SystemExit(usage)
    if len(argv) == 5 and argv[1] != "toolkit":
        raise SystemExit(usage)
    count = int(argv[2])
    if argv[1] == "hand":
        seconds = hand(count, argv[3])
    else:
        seconds = toolkit(count, argv[3], float(argv[4]) if len(argv) == 5 else None)
    what = f" tracing {argv[4]} sampled" if len(argv) == 5 else ""
    print(f"{argv[1]} {argv[3]}{what}: {1e6 * seconds / count:.1f} us CPU per record ({count:,} records)")


if __name__ == "__main__":
    main(sys.argv)
