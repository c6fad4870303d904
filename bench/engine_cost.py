"""What the engine costs a record, without a broker: the toolkit on the in-memory broker against the
hand-written loop's work (parse the envelope, validate the body, build the model) over the same bytes.

    python -m bench.engine_cost toolkit 20000 json   # CPU microseconds per record (process time)
    python -m bench.engine_cost hand 20000 json
    python -m bench.engine_cost toolkit 20000 json 0.1   # with tracing, one trace in ten sampled (0 to 1)

Under valgrind the figure is exact and the same on any machine, busy or not: the instructions one more
record costs, from two runs whose only difference is the record count (start-up and imports cancel out):

    for who in hand toolkit; do for n in 2000 4000; do
      PYTHONHASHSEED=0 valgrind --tool=callgrind --callgrind-out-file=/dev/null python -m bench.engine_cost $who $n json
    done; done   # (Collected 4000 - Collected 2000) / 2000 = instructions per record

(A fixed hash seed: with a random one the count of the same code moves by up to 2% between runs.)

Both modes put the records in the in-memory broker first; ``hand`` then reads them back as bytes, so the
set-up is the same. The toolkit's handler is an ``async def`` that does nothing; the records are 3
partitions of ``orders`` v2 (json) or ``shipments`` v2 (avro) envelopes, as in the throughput bench.
"""

from __future__ import annotations

import asyncio
import random
import sys
import time

PARTITIONS = 3


def _broker(count: int, fmt: str):
    from bench.backlog import envelope
    from toolkit.testing import InMemoryBroker

    rng = random.Random(7)
    pool = [envelope(fmt, rng) for _ in range(500)]
    broker = InMemoryBroker(partitions=PARTITIONS)
    broker.create_topic("t", PARTITIONS)
    for i in range(count):
        broker.produce("t", pool[i % len(pool)], partition=i % PARTITIONS)
    return broker


def toolkit(count: int, fmt: str, sampled: float | None = None) -> float:
    """CPU seconds from the first record handled to the last, the toolkit's defaults otherwise; ``sampled``:
    with TracingMiddleware on the OpenTelemetry SDK (that share of the traces sampled, the spans batched and
    dropped, as the bench's tracing contenders)."""
    from toolkit.consumer import KafkaConsumer

    broker = _broker(count, fmt)
    state = {"seen": 0, "started": 0.0, "ended": 0.0}
    middleware = [] if sampled is None else [_tracing(sampled)]
    consumer = KafkaConsumer(group_id="g", transport=broker.transport("g"), stop_when_idle=True, middleware=middleware)

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


def main(argv: list[str]) -> None:
    usage = "usage: python -m bench.engine_cost toolkit|hand COUNT json|avro [SAMPLED (toolkit: tracing on, 0-1)]"
    if len(argv) not in (4, 5) or argv[1] not in ("toolkit", "hand") or argv[3] not in ("json", "avro"):
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
