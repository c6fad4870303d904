"""Pre-fill a topic with envelopes: ~500-byte `orders` v2 bodies (JSON Schema) or `shipments` v2 (Avro)."""

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
    rng = random.Random(seed)
    pool = [envelope(fmt, rng) for _ in range(1000)]
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
    return sum(len(m) for m in pool) // len(pool)
