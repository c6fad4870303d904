"""Ouroboros Epistle Forge: consume schema-governed Kafka messages in Python.

    from toolkit import BaseHandler, KafkaConsumer

    class OrderHandler(BaseHandler):
        def __init__(self, orders):              # dependencies come in through the constructor
            self.orders = orders

        async def _process_message(self, message) -> bool:
            await self.orders.book(message.body)  # the generated pydantic model
            return True

    consumer = KafkaConsumer(bootstrap_servers="localhost:9092", group_id="orders-service")
    consumer.register_handler("orders", OrderHandler(orders))
    await consumer.start()

The public API is ``__all__``. The consumer's and the settings' names are imported on first use, so that
commands which do not consume (``epistle codegen``, ``epistle check``) start without loading the Kafka client,
pydantic or pydantic-settings (``epistle --help`` loads none of them). ``import toolkit`` also defers the
slow format-checker modules ``import jsonschema`` pulls in (:mod:`toolkit._lazy`).
"""

from importlib import import_module
from typing import Any

from toolkit import _lazy
from toolkit.errors import (
    BrokerUnavailable,
    BrokerUnreachable,
    ConfigError,
    ConsumerStopped,
    EpistleError,
    HandlerTimedOut,
    MessageError,
    RegistryError,
    RegistryRejected,
    RegistryUnavailable,
    RetryableError,
    SchemaFileError,
    SchemaNotFound,
)

_lazy.defer_format_modules()

_LAZY = {
    "OrderingMode": "toolkit.settings",
    "Settings": "toolkit.settings",
    "load_settings": "toolkit.settings",
    "BaseHandler": "toolkit.consumer",
    "DeadLetter": "toolkit.consumer",
    "Middleware": "toolkit.consumer",
    "Retry": "toolkit.consumer",
    "EnvelopeProducer": "toolkit.producer",
    "ErrorPolicy": "toolkit.consumer",
    "KafkaConsumer": "toolkit.consumer",
    "Message": "toolkit.consumer",
    "RetryPolicy": "toolkit.consumer",
}

__all__ = [
    "BaseHandler",
    "BrokerUnavailable",
    "BrokerUnreachable",
    "ConfigError",
    "ConsumerStopped",
    "DeadLetter",
    "EnvelopeProducer",
    "EpistleError",
    "ErrorPolicy",
    "HandlerTimedOut",
    "KafkaConsumer",
    "Message",
    "MessageError",
    "Middleware",
    "OrderingMode",
    "RegistryError",
    "RegistryRejected",
    "RegistryUnavailable",
    "Retry",
    "RetryPolicy",
    "RetryableError",
    "SchemaFileError",
    "SchemaNotFound",
    "Settings",
    "load_settings",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'toolkit' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
