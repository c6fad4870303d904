"""The shop example (examples/shop) as the worker-process tests run it: the same handlers and wiring, and each
order's messageId appended to ``<WORKERS_TEST_HANDLED_DIR>/<pid>`` once it is handled, after an optional
pause per order (``WORKERS_TEST_DELAY_S``) so that a backlog lasts long enough to be shared and interrupted.

    epistle run --app tests.integration.workers_app:register --workers 2
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from pathlib import Path

from examples.shop.app import SHIPMENT_MESSAGE_TYPES, Shop, log
from examples.shop.handlers import OrderHandler, ShipmentHandler
from toolkit.consumer import KafkaConsumer, Message


class RecordingOrderHandler(OrderHandler):
    def __init__(self, shop: Shop, handled: Path, delay_s: float) -> None:
        super().__init__(shop.order_book, shop.inventory)
        self.handled = handled
        self.delay_s = delay_s

    async def _process_message(self, message: Message) -> bool:
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        done = await super()._process_message(message)
        if done:
            with self.handled.open("a") as out:  # one line per handled order, written before the offset is stored
                out.write(f"{message.message_id}\n")
        return done


def register(consumer: KafkaConsumer, settings) -> Callable[[], None]:
    shop = Shop()
    handled = Path(os.environ["WORKERS_TEST_HANDLED_DIR"]) / str(os.getpid())
    delay_s = float(os.environ.get("WORKERS_TEST_DELAY_S", "0"))
    consumer.register_handler(shop.config.orders_topic, RecordingOrderHandler(shop, handled, delay_s))
    shipments = ShipmentHandler(shop.tracker)
    for message_type in SHIPMENT_MESSAGE_TYPES:
        consumer.register_handler(shop.config.shipments_topic, shipments, message_type)
    return lambda: log.info("%s (worker %s)", shop.summary(), os.environ.get("EPISTLE_WORKER_INDEX", "-"))
