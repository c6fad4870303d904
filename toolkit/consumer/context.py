"""The message a handler is handling, for code that runs inside the handler (the producer reads it).

The runtime sets :data:`handling` around every handler call: in the handler's own task for ``async def``
handlers, and in the worker thread (through a copy of the context) for plain functions. Outside a handler
it is None. :class:`toolkit.producer.EnvelopeProducer` uses it to carry the handled message's
``correlationId`` over to what the handler publishes.
"""

from __future__ import annotations

from contextvars import ContextVar
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from toolkit.consumer.pipeline import Message

handling: ContextVar[Message | None] = ContextVar("epistle_handling", default=None)


def current_message() -> Message | None:
    """The message whose handler is running in this task or thread, or None outside a handler."""
    return handling.get()


__all__ = ["current_message", "handling"]
