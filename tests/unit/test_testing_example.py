"""The README's "Testing your handlers without a broker" example, as a test: the shop's OrderHandler on the
in-memory broker, with the repository's schemas and generated models."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from examples.shop.handlers import OrderHandler
from examples.shop.services import Inventory, OrderBook
from toolkit import KafkaConsumer
from toolkit.registry import LocalFolderRegistry
from toolkit.testing import InMemoryBroker, envelope

ROOT = Path(__file__).resolve().parents[2]
ORDER = json.loads((ROOT / "schemas/orders/samples/2/valid/required-fields-only.json").read_text())


async def _an_order_is_booked_and_junk_is_dead_lettered() -> None:
    broker = InMemoryBroker()
    broker.produce("orders", envelope("orders", 2, ORDER))
    broker.produce("orders", b"not json")
    book = OrderBook()
    consumer = KafkaConsumer(
        group_id="shop",
        transport=broker.transport(),
        registry=LocalFolderRegistry(ROOT / "schemas"),
        stop_when_idle=True,
    )
    consumer.register_handler("orders", OrderHandler(book, Inventory()))
    await consumer.start()  # returns once both records are done
    assert len(book) == 1
    assert broker.committed("shop", "orders") == 2
    (dead,) = broker.records("orders.dlq")
    assert dead.json()["error"]["stage"] == "decode"


def test_an_order_is_booked_and_junk_is_dead_lettered() -> None:
    asyncio.run(asyncio.wait_for(_an_order_is_booked_and_junk_is_dead_lettered(), 30))
