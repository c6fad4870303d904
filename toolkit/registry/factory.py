"""Choosing the backend and the subject strategy from settings (built once at the edge, passed down)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from toolkit import _args
from toolkit.registry.base import SchemaRegistry, SubjectStrategy, schema_name_strategy, subject_strategy_named
from toolkit.registry.http import ConfluentHttpRegistry
from toolkit.registry.local import LocalFolderRegistry
from toolkit.settings import RegistrySettings, Settings


def registry_from_settings(settings: RegistrySettings, schemas_dir: Path, **http_options: Any) -> SchemaRegistry:
    """The local folder when ``settings.url`` is empty, else the Confluent-compatible HTTP client.

    ``http_options`` go to :meth:`ConfluentHttpRegistry.from_settings` (``transport``, ``event_hooks``).
    The result is uncached; wrap it in :class:`~toolkit.registry.cache.CachedRegistry` for the consumer.

    Raises:
        ConfigError: inconsistent credentials or unreadable TLS files.
    """
    _args.instance("settings", settings, RegistrySettings, "RegistrySettings (load_settings().registry)")
    if settings.is_local:
        return LocalFolderRegistry(schemas_dir)
    return ConfluentHttpRegistry.from_settings(settings, **http_options)


def subject_strategy_from_settings(settings: RegistrySettings) -> SubjectStrategy:
    """``SCHEMA_REGISTRY_SUBJECT_STRATEGY``: ``schema_name`` (default) or ``topic_value``.

    A user function (``Callable[[SubjectContext], str]``) is passed to the consumer directly instead.
    """
    _args.instance("settings", settings, RegistrySettings, "RegistrySettings (load_settings().registry)")
    return subject_strategy_named(settings.subject_strategy)


def default_subject_strategy(settings: Settings | None) -> SubjectStrategy:
    """The consumer's and producer's strategy when none is passed: ``settings.registry``'s, else
    ``schema_name``."""
    return subject_strategy_from_settings(settings.registry) if settings is not None else schema_name_strategy


def default_cached_registry(settings: Settings | None) -> Any:
    """The consumer's and producer's registry when none is passed: :func:`registry_from_settings` of
    ``settings.registry`` and ``settings.consumer.schemas_dir`` (defaults without settings), cached by a
    :class:`~toolkit.registry.cache.CachedRegistry`.

    Raises:
        ConfigError: inconsistent credentials or unreadable TLS files.
    """
    from toolkit.registry.cache import CachedRegistry
    from toolkit.settings import ConsumerSettings

    registry = settings.registry if settings is not None else RegistrySettings.model_construct()
    schemas_dir = (settings.consumer if settings is not None else ConsumerSettings.model_construct()).schemas_dir
    return CachedRegistry.from_settings(registry_from_settings(registry, schemas_dir), registry)
