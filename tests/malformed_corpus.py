"""Malformed records for the consumer: each with the pipeline stage that must dead-letter it.

Built from the golden samples under ``schemas/`` so each entry differs from a valid record in one way.
Used by the integration test (real broker) and usable by the demo.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SCHEMAS = ROOT / "schemas"

HEADER = {
    "messageType": "OrderCreated",
    "schemaName": "orders",
    "schemaVersion": "1",
    "correlationId": "corr-malformed",
    "messageId": "msg-malformed",
    "timestamp": "2024-06-01T12:00:00Z",
    "producer": "malformed-corpus",
}
ONE_MB = 1_000_000


@dataclass(frozen=True)
class Malformed:
    name: str
    value: bytes | None
    stage: str


def _sample(schema: str, version: int, name: str) -> dict[str, Any]:
    return json.loads((SCHEMAS / schema / "samples" / str(version) / "valid" / name).read_text())


def _dump(document: Any) -> bytes:
    return json.dumps(document, separators=(",", ":")).encode()


def _envelope(body: Any = None, *, drop: str | None = None, schema: str = "orders", **header: Any) -> bytes:
    h = {**HEADER, "schemaName": schema, "messageType": "ShipmentCreated" if schema == "shipments" else "OrderCreated"}
    h.update(header)
    if drop:
        h.pop(drop)
    return _dump({"header": h, "body": ORDER if body is None else body})


ORDER = _sample("orders", 1, "full-card-payment.json")
SHIPMENT = _sample("shipments", 1, "full-two-parcels.json")


def _order(**changes: Any) -> bytes:
    body = copy.deepcopy(ORDER)
    for path, value in changes.items():
        target = body
        *parents, last = path.split("__")
        for part in parents:
            target = target[int(part)] if isinstance(target, list) else target[part]
        if value is _DELETE:
            del target[last]
        else:
            target[last] = value
    return _envelope(body)


def _shipment(**changes: Any) -> bytes:
    body = copy.deepcopy(SHIPMENT)
    body.update(changes)
    return _envelope(body, schema="shipments")


_DELETE = object()


def _one_megabyte() -> bytes:
    pad = "x" * ONE_MB
    record = _order(comment=pad)
    return _order(comment=pad[: len(pad) - (len(record) - ONE_MB)])  # exactly 1,000,000 bytes


def corpus() -> list[Malformed]:
    valid = _envelope()
    entries = [
        Malformed("not-utf8", b"\xff\xfe\xfd" + valid[3:], "decode"),
        Malformed("latin1-text", '{"header": "caf\xe9"}'.encode("latin-1"), "decode"),
        Malformed("truncated-json", valid[: len(valid) // 2], "decode"),
        Malformed("empty", b"", "decode"),
        Malformed("utf8-bom", b"\xef\xbb\xbf" + valid, "decode"),
        Malformed("nan-in-body", valid.replace(b'"quantity":2', b'"quantity":NaN', 1), "decode"),
        Malformed("nested-100000", b"[" * 100_000 + b"]" * 100_000, "decode"),
        Malformed("nested-100000-in-body", b'{"header":{},"body":' + b"[" * 100_000 + b"]" * 100_000 + b"}", "decode"),
        Malformed("tombstone", None, "decode"),
        Malformed("json-array", b'[{"header": {}, "body": {}}]', "envelope"),
        Malformed("json-number", b"42", "envelope"),
        Malformed("json-string", b'"an envelope"', "envelope"),
        Malformed("json-null", b"null", "envelope"),
        Malformed("missing-header", _dump({"body": ORDER}), "envelope"),
        Malformed("missing-body", _dump({"header": HEADER}), "envelope"),
        Malformed("header-not-object", _dump({"header": "orders", "body": ORDER}), "envelope"),
        Malformed("header-missing-messageId", _envelope(drop="messageId"), "envelope"),
        Malformed("header-missing-schemaName", _envelope(drop="schemaName"), "envelope"),
        Malformed("header-version-is-number", _envelope(schemaVersion=1), "envelope"),
        Malformed("header-correlationId-null", _envelope(correlationId=None), "envelope"),
        Malformed("header-producer-object", _envelope(producer={"name": "x"}), "envelope"),
        Malformed("bad-timestamp", _envelope(timestamp="last tuesday"), "envelope"),
        Malformed("timestamp-without-timezone", _envelope(timestamp="2024-06-01T12:00:00"), "envelope"),
        Malformed("version-01", _envelope(schemaVersion="01"), "envelope"),
        Malformed("version-minus-1", _envelope(schemaVersion="-1"), "envelope"),
        Malformed("version-1.0", _envelope(schemaVersion="1.0"), "envelope"),
        Malformed("unknown-schemaName", _envelope(schemaName="invoices"), "schema"),
        Malformed("unknown-version", _envelope(schemaVersion="99"), "schema"),
        Malformed("body-is-array", _envelope([ORDER]), "validation"),
        Malformed("body-missing-required", _order(customer=_DELETE), "validation"),
        Malformed("body-unknown-property", _order(coupon="FREE"), "validation"),
        Malformed("body-wrong-type", _order(items__0__quantity="2"), "validation"),
        Malformed("body-enum", _order(status="LOST"), "validation"),
        Malformed("body-pattern", _order(shippingAddress__country="usa"), "validation"),
        Malformed("body-format-uuid", _order(orderId="not-a-uuid"), "validation"),
        Malformed("body-format-email", _order(customer__email="nobody"), "validation"),
        Malformed("body-format-date-time", _order(createdAt="2024-06-01T12:00:00"), "validation"),
        Malformed("body-min-items", _order(items=[]), "validation"),
        Malformed("body-minimum", _order(items__0__quantity=0), "validation"),
        Malformed("body-max-length", _order(customer__name="n" * 201), "validation"),
        Malformed("body-one-of-no-match", _order(payment={"method": "barter"}), "validation"),
        Malformed("avro-wrong-type", _shipment(createdAt="2024-06-01T12:00:00Z"), "validation"),
        Malformed("avro-enum", _shipment(carrier="PIGEON"), "validation"),
        Malformed("avro-union-not-wrapped", _shipment(reference=42), "validation"),
        Malformed("avro-decimal-as-number", _shipment(shippingCost=12.5), "validation"),
        Malformed("avro-body-null", _envelope(None, schema="shipments").replace(_dump(ORDER), b"null"), "validation"),
        Malformed("one-megabyte", _one_megabyte(), "validation"),
        # JSON may escape lone surrogates ("\ud800"); UTF-8 cannot hold them, so nothing may re-encode them
        Malformed("lone-surrogate-in-header", _envelope(messageId="\ud800"), "envelope"),
        Malformed("lone-surrogate-in-invalid-body", _order(customer__email="\udfff@"), "validation"),
        Malformed("lone-surrogate-body-key", _order(**{"\ud800": 1}), "validation"),
        # what confluent-kafka's schema-registry serializers write: magic byte 0, schema id, Avro or JSON
        Malformed("confluent-wire-avro", b"\x00\x00\x00\x00\x11" + b"\x0cord-1\x02\xa4\x01", "decode"),
        Malformed("confluent-wire-json", b"\x00\x00\x00\x00\x12" + valid, "decode"),
    ]
    names = [entry.name for entry in entries]
    assert len(names) == len(set(names)), "corpus names must be unique"
    return entries
