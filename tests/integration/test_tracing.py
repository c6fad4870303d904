"""Tracing end to end on the real broker: a record published by EnvelopeProducer inside a span has a PRODUCER
span, the consumer's span is that span's child, the handler's span is the consumer span's child, and what the
handler publishes has its own PRODUCER span, a child of the handler's. ``epistle run`` with EPISTLE_TRACING=1
and EPISTLE_LOG_FORMAT=json exports spans (console exporter) and writes JSON log lines."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from generated_models.orders.v2 import Order
from toolkit.consumer import KafkaConsumer
from toolkit.consumer.testing import envelope_bytes, produce, read_topic
from toolkit.observability.tracing import TracingMiddleware
from toolkit.producer import EnvelopeProducer
from toolkit.registry import CachedRegistry, LocalFolderRegistry

ROOT = Path(__file__).resolve().parents[2]
ORDER = json.loads((ROOT / "schemas/orders/samples/2/valid/required-fields-only.json").read_text())


def test_producer_to_consumer_on_the_broker_is_one_trace(kafka_bootstrap, make_topic, group_id) -> None:
    orders, replies = make_topic("orders"), make_topic("replies")
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("tests")
    registry = CachedRegistry(LocalFolderRegistry(ROOT / "schemas"))

    async def scenario() -> None:
        async with EnvelopeProducer(kafka_bootstrap, registry=registry, tracer_provider=provider) as producer:
            with tracer.start_as_current_span("checkout"):
                await producer.publish(orders, Order.model_validate(ORDER), key="A-1")
            consumer = KafkaConsumer(
                kafka_bootstrap,
                group_id,
                registry=registry,
                stop_when_idle=True,
                middleware=[TracingMiddleware(group_id=group_id, tracer_provider=provider)],
            )

            @consumer.handler(orders)
            async def handle(message: Any) -> None:
                with tracer.start_as_current_span("book the order"):
                    await producer.publish(replies, message.body, key="A-1")

            await consumer.start()

    asyncio.run(asyncio.wait_for(scenario(), 90))
    spans = {span.name: span for span in exporter.get_finished_spans()}
    checkout, process, book = spans["checkout"], spans[f"process {orders}"], spans["book the order"]
    send, send_reply = spans[f"send {orders}"], spans[f"send {replies}"]
    assert send.kind is SpanKind.PRODUCER and send.parent.span_id == checkout.context.span_id
    assert send.attributes["messaging.kafka.offset"] == 0 and send.attributes["messaging.destination.name"] == orders
    assert process.kind is SpanKind.CONSUMER and process.parent.is_remote
    assert process.context.trace_id == checkout.context.trace_id
    assert process.parent.span_id == send.context.span_id
    assert book.parent.span_id == process.context.span_id
    assert send_reply.parent.span_id == book.context.span_id
    assert process.attributes["messaging.destination.name"] == orders
    assert process.attributes["messaging.consumer.group.name"] == group_id
    assert process.attributes["epistle.outcome"] == "done"
    (reply,) = read_topic(kafka_bootstrap, replies, expected=1)
    traceparent = dict(reply.headers)["traceparent"].decode()
    assert traceparent.split("-")[1:3] == [f"{book.context.trace_id:032x}", f"{send_reply.context.span_id:016x}"]


def test_epistle_run_exports_spans_and_writes_json_lines(kafka_bootstrap, make_topic, group_id) -> None:
    orders, shipments = make_topic("orders"), make_topic("shipments")
    trace_id = uuid.uuid4().hex
    traceparent = f"00-{trace_id}-{'ab' * 8}-01".encode()
    body = dict(ORDER, orderId=str(uuid.uuid4()))
    produce(
        kafka_bootstrap,
        orders,
        [envelope_bytes("orders", 2, body, message_type="OrderPlaced")],
        headers=[("traceparent", traceparent)],
    )
    produce(kafka_bootstrap, orders, [b"not json"])
    env = {key: value for key, value in os.environ.items() if not key.startswith("OTEL_")}
    env |= {
        "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "SCHEMA_REGISTRY_URL": "",
        "SHOP_ORDERS_TOPIC": orders,
        "SHOP_SHIPMENTS_TOPIC": shipments,
        "EPISTLE_COMMIT_INTERVAL_S": "0.2",
        "EPISTLE_LOG_FORMAT": "json",
        "EPISTLE_TRACING": "1",
        "OTEL_TRACES_EXPORTER": "console",
        "OTEL_SERVICE_NAME": "shop-tests",
    }
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "toolkit.cli",
            "run",
            "--app",
            "examples.shop.app:register",
            "--group-id",
            group_id,
            "--until-idle",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = [json.loads(line) for line in proc.stderr.splitlines() if line.strip()]  # every line is JSON
    dead = next(line for line in lines if line["message"].startswith("dead-lettered"))
    assert dead["topic"] == orders and dead["offset"] == 1 and dead["level"] == "WARNING"
    # The console exporter prints each span as a JSON document on stdout, then the stats table follows.
    decoder, text, spans, at = json.JSONDecoder(), proc.stdout, [], 0
    while (start := text.find("{", at)) != -1:
        span, at = decoder.raw_decode(text, start)
        spans.append(span)
    processed = [span for span in spans if span["name"] == f"process {orders}"]
    assert len(processed) == 2
    continued = next(span for span in processed if span["context"]["trace_id"] == f"0x{trace_id}")
    assert continued["parent_id"] == f"0x{'ab' * 8}" and continued["attributes"]["epistle.outcome"] == "done"
    assert continued["resource"]["attributes"]["service.name"] == "shop-tests"
    assert any(span["name"] == f"send {orders}.dlq" for span in spans)
