"""Pre-fill a topic with envelopes: ~500-byte `orders` v2 bodies (JSON Schema) or `shipments` v2 (Avro); or
with `shipments` v2 in Confluent's wire format (``avro-wire``: magic byte, schema id, Avro binary)."""

from __future__ import annotations

import json
import random
import uuid
from datetime import UTC, datetime, timedelta

from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic

from toolkit.envelope import encode_envelope, header_fields

PARTITIONS = 3


def order_body(rng: random.Random) -> dict:
    placed = datetime(2026, 11, 1, tzinfo=UTC) + timedelta(seconds=rng.randrange(2_000_000))
    return {
        "orderId": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
        "createdAt": placed.isoformat().replace("+00:00", "Z"),
        "status": rng.choice(["PENDING", "CONFIRMED", "SHIPPED"]),
        "channel": rng.choice(["WEB", "MOBILE", "STORE"]),
        "customer": {
            "customerId": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
            "email": f"customer{rng.randrange(10**6)}@example.com",
            "name": "Ada Lovelace",
        },
        "items": [
            {
                "sku": f"SKU-{rng.randrange(10**5):05d}",
                "quantity": rng.randrange(1, 5),
                "unitPrice": {"amount": f"{rng.randrange(100, 99999) / 100:.2f}", "currency": "EUR"},
            }
            for _ in range(1)
        ],
        "shippingAddress": {
            "line1": "12 Analytical Engine Way",
            "city": "London",
            "postalCode": "N1 9GU",
            "country": "GB",
        },
        "total": {"amount": f"{rng.randrange(100, 999999) / 100:.2f}", "currency": "EUR"},
        "tags": ["bench"],
    }


def shipment_body(rng: random.Random) -> dict:
    """An Avro-JSON-encoded body for schemas/shipments/2.avsc, from its first valid golden sample."""
    from pathlib import Path

    samples = sorted(Path("schemas/shipments/samples/2/valid").glob("*.json"))
    body = json.loads(samples[0].read_text())
    if "shipmentId" in body:
        body["shipmentId"] = str(uuid.UUID(int=rng.getrandbits(128), version=4))
    return body


FORMATS = {"json": ("orders", "2", order_body), "avro": ("shipments", "2", shipment_body)}


def envelope(fmt: str, rng: random.Random, produced_at: datetime | None = None, producer_name: str = "bench") -> bytes:
    schema_name, version, make_body = FORMATS[fmt]
    header = header_fields(
        schema_name,
        version,
        message_type="OrderPlaced" if fmt == "json" else "ShipmentUpdated",
        producer=producer_name,
        timestamp=(produced_at or datetime.now(UTC)).isoformat(),
    )
    return encode_envelope(header, make_body(rng))


def create_topic(bootstrap: str, topic: str, partitions: int = PARTITIONS) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=1)])[topic].result(30)


def fill(bootstrap: str, topic: str, count: int, fmt: str = "json", seed: int = 7) -> int:
    """Produce ``count`` envelopes (a few distinct bodies, cycled, to keep produce fast); returns bytes/msg."""
    if fmt == "avro-wire":
        return fill_wire(bootstrap, topic, count, seed)
    rng = random.Random(seed)
    pool = [envelope(fmt, rng) for _ in range(1000)]
    _produce(bootstrap, topic, count, pool)
    return sum(len(m) for m in pool) // len(pool)


REGISTRY_URL = "http://127.0.0.1:8081/apis/ccompat/v7"
"""The registry of the ``avro-wire`` backlog (``SCHEMA_REGISTRY_URL`` when set): Apicurio's Confluent API."""


def registry_url() -> str:
    import os

    return os.environ.get("SCHEMA_REGISTRY_URL") or REGISTRY_URL


def fill_wire(bootstrap: str, topic: str, count: int, seed: int = 7) -> int:
    """Produce ``count`` ``shipments`` v2 records in Confluent's wire format (magic byte 0, the schema id,
    Avro binary), as Confluent's AvroSerializer writes them; returns bytes/msg.

    The schema is registered as subject ``<topic>-value`` (Confluent's default topic-name strategy), v1
    then v2, so that the subject's version 2 is ``shipments`` v2 and the toolkit picks that model."""
    import io
    import struct
    from pathlib import Path

    from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
    from fastavro import parse_schema, schemaless_writer

    from toolkit.layout import SchemaFormat
    from toolkit.registry.base import RegisteredSchema
    from toolkit.validation import compile_schema

    client = SchemaRegistryClient({"url": registry_url()})
    texts = [Path(f"schemas/shipments/{v}.avsc").read_text() for v in (1, 2)]
    schema_id = 0
    for text in texts:
        schema_id = client.register_schema(f"{topic}-value", Schema(text, "AVRO"))
    version = client.get_latest_version(f"{topic}-value").version
    if version != 2:
        raise RuntimeError(f"{topic}-value: expected version 2 after registering v1 and v2, got {version}")
    # Python values (logical types converted) from the Avro JSON bodies, then Avro binary
    compiled = compile_schema(RegisteredSchema("shipments", 2, SchemaFormat.AVRO, texts[1]))
    parsed = parse_schema(json.loads(texts[1]))
    rng = random.Random(seed)
    prefix = struct.pack(">bI", 0, schema_id)
    pool = []
    for _ in range(1000):
        buffer = io.BytesIO()
        schemaless_writer(buffer, parsed, compiled.decode(shipment_body(rng)))
        pool.append(prefix + buffer.getvalue())
    _produce(bootstrap, topic, count, pool)
    return sum(len(m) for m in pool) // len(pool)


def _produce(bootstrap: str, topic: str, count: int, pool: list[bytes]) -> None:
    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "linger.ms": 50,
            "batch.num.messages": 10000,
            "compression.type": "lz4",
            "queue.buffering.max.messages": 500_000,
        }
    )
    for i in range(count):
        while True:
            try:
                producer.produce(topic, value=pool[i % len(pool)], key=str(i % 64).encode())
                break
            except BufferError:
                producer.poll(0.1)
        if i % 10_000 == 0:
            producer.poll(0)
    if producer.flush(120) != 0:
        raise RuntimeError(f"could not deliver the backlog to {topic}")
