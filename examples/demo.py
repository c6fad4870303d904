"""``make demo`` (``python -m examples.demo``): the whole flow on a real broker, with ``schemas/`` as registry.

1. Creates two fresh topics (``demo-orders-<run>`` and ``demo-shipments-<run>``, 2 partitions each), so the
   demo can run again and again on the same cluster; they and their ``.dlq`` topics are deleted at the end
   unless ``--keep``.
2. Produces a realistic mix for the shop example (:mod:`examples.shop`): valid orders v1/v2 and shipments
   v1/v2 built from the golden samples and published as generated models through
   :class:`~toolkit.producer.EnvelopeProducer` (validated first), orders the warehouse refuses once (False,
   then done) or locks once (RetryableError, then done), an order it never confirms (retries exhausted), a
   duplicate order and a shipment with an uncontracted carrier (handler exceptions), valid models the
   router has no handler for (a message type with no handler, a schema the handler does not accept), and
   malformed records for the other stages (not UTF-8, not JSON, bad envelopes, unknown schema and
   version, bodies failing validation), produced as raw bytes since the producer would refuse them.
3. Runs the shop's handlers until the topics are drained (``stop_when_idle``), reads the dead-letter
   topics back, prints a summary per topic and checks that every outcome was seen (exit 1 if not).

Kafka: ``KAFKA_BOOTSTRAP_SERVERS`` (default 127.0.0.1:9092, what ``make services-up`` starts). The registry
is always the local ``schemas/`` folder here, whatever ``SCHEMA_REGISTRY_URL`` says.

RabbitMQ: ``--broker rabbitmq`` or ``EPISTLE_BROKER=rabbitmq`` (``make demo EPISTLE_BROKER=rabbitmq``), at
``RABBITMQ_URL`` (default the node ``scripts/services.py up rabbitmq`` runs). Each topic is two durable queues
(``<topic>.0`` and ``<topic>.1``, its partitions: ``RabbitTransport(partitions=...)``), the models go through
:class:`~toolkit.producer_amqp.RabbitProducer` (publisher confirms) and the hostile bytes straight through
aio-pika; the dead letters are read back from ``<topic>.dlq`` with ``epistle dlq``'s reader (nothing removed
from the queue by reading it). The queues are deleted at the end unless ``--keep``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, replace
from functools import cache
from pathlib import Path
from typing import Any

from toolkit.errors import CodegenError, EpistleError

ROOT = Path(__file__).resolve().parent.parent
SCHEMAS = ROOT / "schemas"
PARTITIONS = 2
OUTCOMES = (
    "processed",
    "recovered after retry",
    "retries_exhausted",
    "handler",
    "decode",
    "envelope",
    "schema",
    "validation",
    "routing",
)


@dataclass(frozen=True)
class Planned:
    """One record the demo produces, and the outcome it should get: a generated ``model`` published through
    the producer (``value`` is filled in once it is built), or hostile raw bytes in ``value``."""

    role: str  # "orders" or "shipments"
    label: str
    value: bytes | None
    expect: str  # "processed", "recovered", or the dead-letter stage
    key: bytes | None = None
    model: Any = None
    message_type: str | None = None


# -- the mix -----------------------------------------------------------------------------------------------
def _samples(schema: str, version: int, kind: str = "valid") -> list[dict[str, Any]]:
    folder = SCHEMAS / schema / "samples" / str(version) / kind
    return [json.loads(path.read_text()) for path in sorted(folder.glob("*.json"))]


def _sample(schema: str, version: int, name: str, kind: str = "invalid") -> Any:
    return json.loads((SCHEMAS / schema / "samples" / str(version) / kind / f"{name}.json").read_text())


def _envelope(schema: str, version: int | str, body: Any, message_type: str, **header: Any) -> bytes:
    from toolkit.consumer.testing import envelope_bytes

    return envelope_bytes(schema, version, body, message_type=message_type, producer="epistle-demo", **header)


@cache
def _compiled(schema: str, version: int) -> Any:
    from toolkit.registry import LocalFolderRegistry
    from toolkit.validation import compile_schema

    return compile_schema(LocalFolderRegistry(SCHEMAS).get(schema, version))


def _model(schema: str, version: int, body: Any) -> Any:
    """The generated model of a body (Avro bodies in their JSON encoding), as the consumer builds it."""
    from toolkit.codegen.index import load_model_index

    model = load_model_index().get(schema, version)
    if model is None:
        raise CodegenError(
            "generated_models",
            f"no generated model for {schema} v{version}",
            fix="run `make codegen` (epistle codegen) to generate it",
        )
    return model.model_validate(_compiled(schema, version).decode(body))


def _order(body: dict[str, Any], *, order_id: str | None = None, skus: list[str] | None = None) -> dict:
    body = json.loads(json.dumps(body))
    body["orderId"] = order_id or str(uuid.uuid4())
    if skus:
        currency = body["total"]["currency"]
        body["items"] = [
            {"sku": sku, "quantity": 1, "unitPrice": {"amount": "25.00", "currency": currency}} for sku in skus
        ]
    return body


def _shipment(body: dict[str, Any], *, carrier: str | None = None) -> dict:
    body = json.loads(json.dumps(body))
    body["shipmentId"] = str(uuid.uuid4())
    if carrier:
        body["carrier"] = carrier
    return body


DEMO_GRACE_S = 2.0


def plan_records() -> list[Planned]:
    """The demo's records, in produce order (records with the same key keep their order)."""
    plan: list[Planned] = []

    def add(role: str, label: str, value: bytes, expect: str = "processed", key: str | None = None) -> None:
        plan.append(Planned(role, label, value, expect, key.encode() if key else None))

    def publish(role: str, label: str, schema: str, version: int, body: dict, expect: str, kind: str) -> None:
        plan.append(Planned(role, label, None, expect, body["orderId"].encode(), _model(schema, version, body), kind))

    def order(label: str, version: int, body: dict, expect: str = "processed", kind: str = "OrderPlaced") -> None:
        publish("orders", label, "orders", version, body, expect, kind)

    def shipment(
        label: str, version: int, body: dict, expect: str = "processed", kind: str = "ShipmentCreated"
    ) -> None:
        publish("shipments", label, "shipments", version, body, expect, kind)

    # Valid records: every golden sample of every version, twice (placed, then amended / status changed).
    for version in (1, 2):
        for first in (True, False):
            for body in _samples("orders", version):
                order(f"valid order v{version}", version, _order(body), kind="OrderPlaced" if first else "OrderAmended")
            for body in _samples("shipments", version):
                shipment(
                    f"valid shipment v{version}",
                    version,
                    _shipment(body),
                    kind="ShipmentCreated" if first else "ShipmentStatusChanged",
                )

    # Handler outcomes, decided by the shop's services (see examples/shop/services.py).
    v1, v2 = _samples("orders", 1)[0], _samples("orders", 2)[0]
    s1, s2 = _samples("shipments", 1)[0], _samples("shipments", 2)[0]
    order("LAMP-7 restocking: False once", 2, _order(v2, skus=["LAMP-7", "MUG-42"]), "recovered")
    order("DESK-1 locked: RetryableError once", 1, _order(v1, skus=["DESK-1"]), "recovered")
    order("CHAIR-9 backordered: False every time", 2, _order(v2, skus=["CHAIR-9"]), "retries_exhausted")
    twice = _order(v1)
    order("order booked once ...", 1, twice)
    order("... and again by another message", 1, twice, "handler")
    shipment("carrier POSTNL has no contract", 2, _shipment(s2, carrier="POSTNL"), "handler")

    # Malformed records, one or two per pipeline stage.
    ok = _envelope("orders", 1, _order(v1), "OrderPlaced")
    add("orders", "not UTF-8", b"\xff\xfe\x00order", "decode")
    add("orders", "truncated JSON", ok[:-40], "decode")
    add("orders", "a JSON array", b'[{"header": {}}, {"body": {}}]', "envelope")
    add("orders", "no body", json.dumps({"header": json.loads(ok)["header"]}).encode(), "envelope")
    add("orders", 'schemaVersion "01"', ok.replace(b'"schemaVersion":"1"', b'"schemaVersion":"01"'), "envelope")
    add(
        "shipments",
        "timestamp without timezone",
        _envelope("shipments", 1, _shipment(s1), "ShipmentCreated", timestamp="2024-05-17T09:30:15"),
        "envelope",
    )
    add("orders", "unknown schema 'refunds'", _envelope("refunds", 1, {"refundId": "r-1"}, "RefundIssued"), "schema")
    add("orders", "unknown version orders v7", _envelope("orders", 7, _order(v1), "OrderPlaced"), "schema")
    add(
        "orders",
        "order with quantity 0",
        _envelope("orders", 2, _sample("orders", 2, "quantity-zero"), "OrderPlaced"),
        "validation",
    )
    add(
        "orders",
        "order v1 with a v2 field",
        _envelope("orders", 1, _sample("orders", 1, "v2-field-channel"), "OrderPlaced"),
        "validation",
    )
    add(
        "shipments",
        "Avro decimal as a JSON number",
        _envelope("shipments", 1, _sample("shipments", 1, "decimal-as-number"), "ShipmentCreated"),
        "validation",
    )
    shipment("messageType with no handler", 1, _shipment(s1), "routing", kind="ShipmentLabelPrinted")
    publish("orders", "a shipment on the orders topic", "shipments", 2, _shipment(s2), "routing", "ShipmentCreated")
    return plan


# -- running -----------------------------------------------------------------------------------------------
def _admin(bootstrap: str):
    from confluent_kafka.admin import AdminClient

    return AdminClient({"bootstrap.servers": bootstrap})


def _create_topics(bootstrap: str, topics: list[str]) -> None:
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import NewTopic

    admin = _admin(bootstrap)
    try:
        admin.list_topics(timeout=10)
    except KafkaException as exc:
        raise EpistleError(
            f"cannot reach Kafka at {bootstrap} ({exc.args[0].str() if exc.args else exc}); "
            "start it with `make services-up` or set KAFKA_BOOTSTRAP_SERVERS"
        ) from None
    futures = admin.create_topics(
        [NewTopic(topic, num_partitions=PARTITIONS) for topic in topics]  # the broker's replication
    )
    for future in futures.values():
        future.result(timeout=30)


def _delete_topics(bootstrap: str, topics: list[str]) -> None:
    admin = _admin(bootstrap)
    existing = set(admin.list_topics(timeout=10).topics)
    doomed = [topic for topic in topics if topic in existing]
    if doomed:
        for future in admin.delete_topics(doomed).values():
            try:
                future.result(timeout=30)
            except Exception:  # noqa: BLE001 - best effort; the names are unique per run anyway
                pass


class _Rabbit:
    """The demo's queues on RabbitMQ: declared, fed raw bytes, their dead letters read, deleted."""

    def __init__(self, url: str) -> None:
        self.url = url

    def queues(self, topic: str) -> list[str]:
        return [f"{topic}.{p}" for p in range(PARTITIONS)]

    def _run(self, conversation) -> Any:
        async def run() -> Any:
            import aio_pika

            try:
                connection = await aio_pika.connect(self.url, timeout=10)
            except Exception as exc:  # noqa: BLE001 - refused, timed out: say what to do
                from toolkit.consumer.amqp import redact

                raise EpistleError(
                    f"cannot reach RabbitMQ at {redact(self.url)} ({type(exc).__name__}: {exc}); start it with "
                    "`python scripts/services.py up rabbitmq` or set RABBITMQ_URL"
                ) from None
            try:
                return await conversation(connection)
            finally:
                await connection.close()

        return asyncio.run(run())

    def declare(self, topics: list[str]) -> None:
        async def declare(connection) -> None:
            channel = await connection.channel()
            for topic in topics:
                for queue in self.queues(topic):
                    await channel.declare_queue(queue, durable=True)

        self._run(declare)

    def publish_raw(self, topic: str, records: list[tuple[bytes | None, bytes]]) -> None:
        """Raw bytes (the producer would refuse them) to the topic's queues, spread by key as the producer
        does, with publisher confirms."""

        async def publish(connection) -> None:
            import aio_pika

            from toolkit.consumer.amqp import table_from_headers
            from toolkit.producer_amqp import queue_for

            channel = await connection.channel(publisher_confirms=True)
            for turn, (key, value) in enumerate(records):
                queue, _ = queue_for(topic, key, PARTITIONS, turn)
                message = aio_pika.Message(
                    value, headers=table_from_headers(key, None), delivery_mode=aio_pika.DeliveryMode.PERSISTENT
                )
                await channel.default_exchange.publish(message, routing_key=queue, mandatory=True)

        self._run(publish)

    def dead_letters(self, topic: str) -> list[Any]:
        from toolkit.dlq import rabbit
        from toolkit.dlq.letters import DeadLetter, Selection

        return [
            letter
            for letter in rabbit.read(self.url, f"{topic}.dlq", Selection(), suffix=".dlq", timeout_s=20)
            if isinstance(letter, DeadLetter)
        ]

    def delete(self, topics: list[str]) -> None:
        async def delete(connection) -> None:
            for topic in topics:
                for queue in (*self.queues(topic), f"{topic}.dlq"):
                    channel = await connection.channel()
                    await channel.queue_delete(queue)  # absent: a no-op

        try:
            self._run(delete)
        except Exception:  # noqa: BLE001 - best effort; the names are unique per run anyway
            pass


def run_demo(*, keep: bool = False, out=print, broker: str | None = None) -> dict[str, Any]:
    """Run the demo on Kafka or RabbitMQ (``broker``, default ``EPISTLE_BROKER``); returns the summary (also
    what ``--json`` writes).

    Raises:
        EpistleError: the broker cannot be reached, or the settings are invalid.
    """
    from examples.shop.app import Shop, ShopConfig, wire
    from toolkit.consumer import KafkaConsumer
    from toolkit.consumer.deadletter import original_record
    from toolkit.consumer.testing import produce, read_topic
    from toolkit.producer import make_producer
    from toolkit.registry import CachedRegistry, LocalFolderRegistry
    from toolkit.settings import load_settings

    settings = load_settings(registry__url="", **({"consumer__broker": broker} if broker else {}))
    on_rabbitmq = settings.consumer.broker == "rabbitmq"
    bootstrap = settings.kafka.bootstrap_servers
    rabbit = _Rabbit(settings.rabbitmq.url.get_secret_value()) if on_rabbitmq else None
    run_id = uuid.uuid4().hex[:8]
    topics = {"orders": f"demo-orders-{run_id}", "shipments": f"demo-shipments-{run_id}"}
    group = f"epistle-demo-{run_id}"
    plan = plan_records()
    if rabbit is not None:
        from toolkit.consumer.amqp import redact

        where = f"RabbitMQ at {redact(rabbit.url)}"
    else:
        where = f"Kafka at {bootstrap}"
    out(f"epistle demo: {where}, registry = local folder {SCHEMAS.relative_to(ROOT)}/, group {group}")
    if rabbit is not None:
        rabbit.declare(list(topics.values()))
    else:
        _create_topics(bootstrap, list(topics.values()))
    try:
        started = time.perf_counter()
        registry: CachedRegistry[Any] = CachedRegistry(LocalFolderRegistry(SCHEMAS))
        for role, topic in topics.items():  # the hostile records, as raw bytes
            raw = [(p.key, p.value) for p in plan if p.role == role and p.model is None]
            if rabbit is not None:
                rabbit.publish_raw(topic, raw)  # type: ignore[arg-type]
            else:
                produce(bootstrap, topic, raw)
        partitions = {topic: PARTITIONS for topic in topics.values()}
        overrides: dict[str, Any] = {"partitions": partitions} if rabbit is not None else {}
        with make_producer(settings, registry, name="epistle-demo", **overrides) as producer:
            deliveries = []
            for index, p in enumerate(plan):
                if p.model is not None:  # validated, enveloped, acknowledged; the bytes kept to match dead letters
                    record = producer.build(topics[p.role], p.model, key=p.key, message_type=p.message_type)
                    plan[index] = replace(p, value=record.value)
                    deliveries.append(producer.send_record(record))
            for delivery in deliveries:
                delivery.result(timeout=30)
        counts = Counter(p.role for p in plan)
        out(
            f"produced {counts['orders']} records to {topics['orders']} and {counts['shipments']} to "
            f"{topics['shipments']} ({PARTITIONS} {'queues' if rabbit else 'partitions'} each)"
        )

        shop = Shop(config=ShopConfig(orders_topic=topics["orders"], shipments_topic=topics["shipments"]))
        # The demo's unknown schema and version are never registered: they wait 2 s (not the 30 s default
        # of EPISTLE_UNKNOWN_SCHEMA_GRACE_S) before they are dead-lettered.
        transport = None
        if rabbit is not None:
            from toolkit.consumer.amqp import RabbitTransport

            transport = RabbitTransport(rabbit.url, partitions=partitions)
        consumer = KafkaConsumer.from_settings(
            settings,
            transport=transport,
            registry=registry,
            group_id=group,
            stop_when_idle=True,
            commit_interval_s=0.5,
            unknown_schema_grace_s=DEMO_GRACE_S,
        )
        wire(consumer, shop)
        out(
            f"running the shop example until the topics are drained (retries: {consumer.retry.max_attempts} "
            f"attempts, backoff from {consumer.retry.initial_s}s) ..."
        )
        asyncio.run(asyncio.wait_for(consumer.start(), timeout=120))
        elapsed = time.perf_counter() - started

        by_value = {(p.role, p.value): p for p in plan}
        dead: list[dict[str, Any]] = []
        for role, topic in topics.items():
            expected = consumer.stats[topic].dead_lettered_total
            values: list[tuple[bytes | None, dict[str, Any]]] = []
            if rabbit is not None and expected:  # confirmed before their originals were acknowledged: all there
                values = [(letter.original.value, letter.body) for letter in rabbit.dead_letters(topic)]
            elif expected:
                for dl in read_topic(bootstrap, f"{topic}.dlq", expected=expected, timeout_s=20):
                    original = original_record(dl.value or b"", dl.key, dl.headers)  # raises unless a dead letter
                    values.append((original.value, dl.json()))
            for original_value, value in values:
                planned = by_value.get((role, original_value))
                dead.append(
                    {
                        "topic": role,
                        "partition": value["source"]["partition"],
                        "offset": value["source"]["offset"],
                        "stage": value["error"]["stage"],
                        "reason": value["error"]["reason"],
                        "attempts": value["source"]["attempts"],
                        "label": planned.label if planned else "?",
                        "expected": planned.expect if planned else "?",
                    }
                )
        summary = _summarise(topics, consumer, shop, plan, dead, elapsed)
    finally:
        if keep:
            pass
        elif rabbit is not None:
            rabbit.delete(list(topics.values()))
        else:
            _delete_topics(bootstrap, [t + suffix for t in topics.values() for suffix in ("", ".dlq")])
    _print(summary, out)
    if keep and rabbit is not None:
        out(f"kept the queues {', '.join(q for t in topics.values() for q in rabbit.queues(t))} and their .dlq queues")
    elif keep:
        out(f"kept the topics {', '.join(topics.values())} and their .dlq topics")
    return summary


def _summarise(
    topics: dict[str, str], consumer, shop, plan: list[Planned], dead: list[dict[str, Any]], elapsed: float
) -> dict[str, Any]:
    stats = {role: consumer.stats[topic].as_dict() for role, topic in topics.items()}
    recovered_ids = []
    for p in plan:
        if p.expect == "recovered" and p.value is not None:  # the value is filled in once built
            envelope = json.loads(p.value)
            order_id = envelope["body"]["orderId"]
            if shop.order_book.booked_by(order_id, envelope["header"]["messageId"]):
                recovered_ids.append(order_id)
    outcomes = {
        "processed": sum(s["processed"] for s in stats.values()),
        "recovered after retry": len(recovered_ids),
        **{stage: sum(1 for d in dead if d["stage"] == stage) for stage in OUTCOMES[2:]},
    }
    missing = [name for name, count in outcomes.items() if not count]
    mismatched = [d for d in dead if d["expected"] != d["stage"]]
    expected_processed = sum(1 for p in plan if p.expect in ("processed", "recovered"))
    problems = [f"no {name}" for name in missing] + [
        f"{d['topic']} offset {d['offset']} ({d['label']}): expected {d['expected']}, got {d['stage']}"
        for d in mismatched
    ]
    if outcomes["processed"] != expected_processed:
        problems.append(f"processed {outcomes['processed']} records, expected {expected_processed}")
    dead = sorted(dead, key=lambda d: (d["topic"], d["partition"], d["offset"]))
    return {
        "topics": topics,
        "stats": stats,
        "dead_letters": dead,
        "outcomes": outcomes,
        "problems": problems,
        "ok": not problems,
        "elapsed_s": round(elapsed, 2),
        "shop": shop.summary(),
        "produced": len(plan),
    }


def _table(rows: Sequence[tuple[str, ...]]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return lines


def _short(text: str, width: int = 72) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 3] + "..."


def _print(summary: dict[str, Any], out) -> None:
    out("")
    rows = [("topic", "processed", "retried", "dead-lettered", "by stage")]
    for role, s in summary["stats"].items():
        stages = ", ".join(f"{stage}={n}" for stage, n in s["dead_lettered"].items()) or "-"
        rows.append((role, str(s["processed"]), str(s["retried"]), str(s["dead_lettered_total"]), stages))
    for line in _table(rows):
        out(line)
    out("")
    rows = [("dead letter of", "partition/offset", "stage", "what was sent", "reason (from the dead letter)")]
    for d in summary["dead_letters"]:
        rows.append((d["topic"], f"{d['partition']}/{d['offset']}", d["stage"], d["label"], _short(d["reason"], 64)))
    for line in _table(rows):
        out(line)
    out("")
    out("outcomes: " + ", ".join(f"{name} {count}" for name, count in summary["outcomes"].items()))
    out(f"{summary['shop']}; {summary['produced']} records consumed in {summary['elapsed_s']:.1f}s")
    if summary["ok"]:
        out("every outcome was seen, each record got the outcome it was sent for")
    else:
        for problem in summary["problems"]:
            out(f"PROBLEM: {problem}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m examples.demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--keep", action="store_true", help="keep the demo topics and their dead letters")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the summary as JSON to PATH")
    parser.add_argument("--verbose", action="store_true", help="show the consumer's logs (retries, dead letters)")
    parser.add_argument(
        "--broker",
        choices=("kafka", "rabbitmq"),
        help="the broker to run on (default: EPISTLE_BROKER, else kafka); RabbitMQ at RABBITMQ_URL",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.ERROR,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if str(ROOT) not in sys.path:  # run as a script (python examples/demo.py): examples/, generated_models/
        sys.path.insert(0, str(ROOT))
    try:
        summary = run_demo(keep=args.keep, broker=args.broker)
    except EpistleError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2, default=str) + "\n")
    return 0 if summary["ok"] else 1


__all__ = ["Planned", "main", "plan_records", "run_demo"]

if __name__ == "__main__":
    sys.exit(main())
