"""The handlers' dependencies: a protocol each, and the implementation the app uses by default.

Handlers depend on the protocol, never on a concrete class, so tests pass fakes and the app can swap in a
database without touching them.
"""

from __future__ import annotations

import logging
from typing import Any, Protocol

log = logging.getLogger(__name__)


class StoreUnavailable(Exception):
    """The store cannot take the event now (connection lost, overloaded): the message is retried later."""


class EventStore(Protocol):
    async def save(self, topic: str, message_id: str, event: Any) -> None:
        """Keep ``event``; saving the same ``message_id`` twice must be harmless (delivery is at-least-once).

        Raises:
            StoreUnavailable: try again later.
        """
        ...


class InMemoryStore:
    """Keeps events in a dict by message id: idempotent, which at-least-once delivery needs.

    Replace it with your database in ``app.build_dependencies``.
    """

    def __init__(self) -> None:
        self.events: dict[str, tuple[str, Any]] = {}

    async def save(self, topic: str, message_id: str, event: Any) -> None:
        self.events[message_id] = (topic, event)
        log.info("stored %s from %s", message_id, topic)
