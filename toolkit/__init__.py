"""Ouroboros Epistle Forge: consume schema-governed Kafka messages in Python.

The public API is re-exported here; see ``__all__``.
"""

from toolkit.errors import (
    BrokerUnavailable,
    ConfigError,
    EpistleError,
    MessageError,
    RegistryError,
    RegistryRejected,
    RegistryUnavailable,
    RetryableError,
    SchemaFileError,
    SchemaNotFound,
)
from toolkit.settings import Settings, load_settings

__all__ = [
    "BrokerUnavailable",
    "ConfigError",
    "EpistleError",
    "MessageError",
    "RegistryError",
    "RegistryRejected",
    "RegistryUnavailable",
    "RetryableError",
    "SchemaFileError",
    "SchemaNotFound",
    "Settings",
    "load_settings",
]
