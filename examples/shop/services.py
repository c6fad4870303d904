"""The shop's in-memory services: what the handlers are given in their constructors.

They stand in for a database and a warehouse API, and behave like them in the ways that matter to a
consumer: an order that the warehouse cannot reserve *now* is worth retrying, a conflicting order is not.
Thread-safe, because plain-function handlers run in the runtime's worker threads.
"""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass, field

from toolkit import RetryableError


class DuplicateOrder(ValueError):
    """An orderId was already booked from a different message: a producer bug, never fixed by a retry."""


class UnsupportedCarrier(ValueError):
    """A shipment uses a carrier the shop has no contract with."""


class WarehouseBusy(RetryableError):
    """The warehouse holds a lock on a SKU (a stock count): try again shortly."""


@dataclass(frozen=True)
class BookedOrder:
    order_id: str
    message_id: str
    schema_version: int
    total: str
    currency: str
    items: int


class OrderBook:
    """Orders by id. Booking is idempotent per message, so a redelivered message is harmless."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._orders: dict[str, BookedOrder] = {}

    def booked_by(self, order_id: str, message_id: str) -> bool:
        """True when this message already booked the order (a redelivery: nothing left to do).

        Raises:
            DuplicateOrder: the orderId was booked by another message.
        """
        with self._lock:
            held = self._orders.get(order_id)
        if held is None:
            return False
        if held.message_id == message_id:
            return True
        raise DuplicateOrder(f"order {order_id} was already booked by message {held.message_id}")

    def book(self, order: BookedOrder) -> None:
        with self._lock:
            self._orders.setdefault(order.order_id, order)

    def __len__(self) -> int:
        return len(self._orders)

    def by_version(self) -> Counter[int]:
        with self._lock:
            return Counter(order.schema_version for order in self._orders.values())


@dataclass
class Inventory:
    """Stock reservations with the warehouse's usual moods.

    - ``restocking`` SKUs: the first reservation of an order answers "not now" (False); the next succeeds.
    - ``locked`` SKUs: the first reservation of an order raises :class:`WarehouseBusy` (retryable).
    - ``backordered`` SKUs: every reservation answers "not now" (the retries run out).
    """

    restocking: frozenset[str] = frozenset({"LAMP-7"})
    locked: frozenset[str] = frozenset({"DESK-1"})
    backordered: frozenset[str] = frozenset({"CHAIR-9"})
    reserved: Counter[str] = field(default_factory=Counter)
    _attempts: Counter[tuple[str, str]] = field(default_factory=Counter)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def reserve(self, order_id: str, quantities: dict[str, int]) -> bool:
        """Reserve every SKU of an order; False means "not now".

        Raises:
            WarehouseBusy: a SKU is locked; retry later.
        """
        with self._lock:
            for sku in quantities:
                self._attempts[(order_id, sku)] += 1
            first = {sku for sku in quantities if self._attempts[(order_id, sku)] == 1}
            if set(quantities) & self.backordered:
                return False
            if first & self.locked:
                raise WarehouseBusy(f"SKU {sorted(first & self.locked)[0]} is locked by a stock count")
            if first & self.restocking:
                return False
            self.reserved.update(quantities)
            return True


@dataclass(frozen=True)
class TrackedShipment:
    shipment_id: str
    order_id: str
    carrier: str
    status: str
    parcels: int


class ShipmentTracker:
    """The latest status of each shipment (a later message for the same shipment replaces it)."""

    def __init__(self, carriers: frozenset[str] = frozenset({"DHL", "UPS", "USPS", "FEDEX"})) -> None:
        self.carriers = carriers
        self._lock = threading.Lock()
        self._shipments: dict[str, TrackedShipment] = {}

    def track(self, shipment: TrackedShipment) -> None:
        """Raises UnsupportedCarrier: the carrier is not one of ``carriers``."""
        if shipment.carrier not in self.carriers:
            raise UnsupportedCarrier(
                f"no contract with carrier {shipment.carrier} (contracted: {', '.join(sorted(self.carriers))})"
            )
        with self._lock:
            self._shipments[shipment.shipment_id] = shipment

    def __len__(self) -> int:
        return len(self._shipments)
