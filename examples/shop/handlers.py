"""The shop's handlers. Each gets its dependencies in its constructor; the runtime gives it the message
(header, body as the generated model, record context)."""

from __future__ import annotations

import logging
from collections import Counter

from examples.shop.services import BookedOrder, Inventory, OrderBook, ShipmentTracker, TrackedShipment
from toolkit.consumer import BaseHandler, Message

log = logging.getLogger("examples.shop")


class OrderHandler(BaseHandler):
    """Books an order once its items are reserved.

    True: booked (or booked before by this very message: redeliveries are harmless). False: the warehouse
    said "not now" (the runtime retries with backoff, then dead-letters). DuplicateOrder and other
    exceptions: dead-lettered at once. WarehouseBusy is a RetryableError: retried like False.
    """

    accepts = {"orders": {1, 2}}

    def __init__(self, order_book: OrderBook, inventory: Inventory) -> None:
        self.order_book = order_book
        self.inventory = inventory

    async def _process_message(self, message: Message) -> bool:
        order = message.body  # generated_models.orders.v1.Order or .v2.Order
        order_id = str(order.order_id)
        if self.order_book.booked_by(order_id, message.message_id):
            return True
        quantities: Counter[str] = Counter()
        for item in order.items:
            quantities[item.sku] += item.quantity
        if not self.inventory.reserve(order_id, dict(quantities)):
            log.info("order %s: stock not available yet (attempt %d)", order_id, message.attempt)
            return False
        self.order_book.book(
            BookedOrder(
                order_id,
                message.message_id,
                message.header.version,
                order.total.amount,
                str(order.total.currency),
                len(order.items),
            )
        )
        return True


class ShipmentHandler:
    """Tracks shipments. A plain callable (not async): the runtime runs it in its worker threads.

    Registered per messageType (ShipmentCreated, ShipmentStatusChanged); other message types on the
    topic have no handler and are dead-lettered with stage ``routing``.
    """

    accepts = {"shipments": {1, 2}}

    def __init__(self, tracker: ShipmentTracker) -> None:
        self.tracker = tracker

    def __call__(self, message: Message) -> None:
        shipment = message.body  # generated_models.shipments.v1.Shipment or .v2.Shipment
        self.tracker.track(
            TrackedShipment(
                str(shipment.shipment_id),
                str(shipment.order_id),
                str(shipment.carrier),
                str(shipment.status),
                len(shipment.parcels),
            )
        )
