"""Wiring of the shop example: build the services once, hand them to the handlers, register those.

    epistle run --app examples.shop.app:register [--until-idle]

Topics come from ``SHOP_ORDERS_TOPIC`` / ``SHOP_SHIPMENTS_TOPIC`` (default ``orders`` / ``shipments``),
read with pydantic-settings like the toolkit's own settings.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from pydantic_settings import BaseSettings, SettingsConfigDict

from examples.shop.handlers import OrderHandler, ShipmentHandler
from examples.shop.services import Inventory, OrderBook, ShipmentTracker
from toolkit.consumer import KafkaConsumer
from toolkit.settings import Settings

log = logging.getLogger("examples.shop")

SHIPMENT_MESSAGE_TYPES = ("ShipmentCreated", "ShipmentStatusChanged")


class ShopConfig(BaseSettings):
    """``SHOP_*``: the example's own settings."""

    model_config = SettingsConfigDict(env_prefix="SHOP_", env_file=".env", extra="ignore")

    orders_topic: str = "orders"
    shipments_topic: str = "shipments"


@dataclass
class Shop:
    """What lives as long as the app: the services the handlers share."""

    config: ShopConfig = field(default_factory=ShopConfig)
    order_book: OrderBook = field(default_factory=OrderBook)
    inventory: Inventory = field(default_factory=Inventory)
    tracker: ShipmentTracker = field(default_factory=ShipmentTracker)

    def summary(self) -> str:
        versions = ", ".join(f"v{v}: {n}" for v, n in sorted(self.order_book.by_version().items()))
        return (
            f"shop: {len(self.order_book)} order(s) booked ({versions or '-'}), "
            f"{len(self.tracker)} shipment(s) tracked, {sum(self.inventory.reserved.values())} item(s) "
            "reserved"
        )


def wire(consumer: KafkaConsumer, shop: Shop) -> None:
    """Register the shop's handlers on ``consumer``."""
    consumer.register_handler(shop.config.orders_topic, OrderHandler(shop.order_book, shop.inventory))
    shipments = ShipmentHandler(shop.tracker)
    for message_type in SHIPMENT_MESSAGE_TYPES:
        consumer.register_handler(shop.config.shipments_topic, shipments, message_type)


def register(consumer: KafkaConsumer, settings: Settings) -> Callable[[], None]:
    """The ``epistle run --app`` entry point: a new shop, its handlers registered; the returned cleanup
    logs what the shop holds once the consumer stopped."""
    shop = Shop()
    wire(consumer, shop)
    log.info(
        "shop handlers registered on %s and %s (group %s)",
        shop.config.orders_topic,
        shop.config.shipments_topic,
        consumer.group_id,
    )
    return lambda: log.info("%s", shop.summary())
