"""Schema registries: the protocol, the local-folder and Confluent-compatible HTTP backends, the cache.

The consumer runtime builds one at start-up and keeps it for the app's lifetime::

    backend = registry_from_settings(settings.registry, settings.consumer.schemas_dir)
    registry = CachedRegistry.from_settings(backend, settings.registry)      # compile_schema by default
    schema, validator = registry.resolve(subject, version)                   # per message
"""

from toolkit.registry.base import (
    CompatibilityResult,
    RegisteredSchema,
    SchemaRegistry,
    SubjectContext,
    SubjectStrategy,
    SupportsCompatibilityConfig,
    canonical_schema,
    same_schema,
    schema_name_strategy,
    topic_key_strategy,
    topic_value_strategy,
)
from toolkit.registry.cache import CachedRegistry
from toolkit.registry.factory import registry_from_settings, subject_strategy_from_settings
from toolkit.registry.http import ConfluentHttpRegistry
from toolkit.registry.local import LocalFolderRegistry

__all__ = [
    "CachedRegistry",
    "CompatibilityResult",
    "ConfluentHttpRegistry",
    "LocalFolderRegistry",
    "RegisteredSchema",
    "SchemaRegistry",
    "SubjectContext",
    "SubjectStrategy",
    "SupportsCompatibilityConfig",
    "canonical_schema",
    "registry_from_settings",
    "same_schema",
    "schema_name_strategy",
    "subject_strategy_from_settings",
    "topic_key_strategy",
    "topic_value_strategy",
]
