"""The registry protocol every backend implements (local folder, Confluent-compatible HTTP).

Backends do I/O only; caching and compiled validators live in :mod:`toolkit.registry.cache`, so a fake
registry for unit tests implements this protocol and nothing else.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from toolkit.layout import SchemaFormat


@dataclass(frozen=True)
class RegisteredSchema:
    """One schema version as a registry returns it: the schema text exactly as registered."""

    subject: str
    version: int
    format: SchemaFormat
    text: str
    schema_id: int | None = None
    references: tuple[dict, ...] = ()


@dataclass(frozen=True)
class CompatibilityResult:
    compatible: bool
    messages: tuple[str, ...] = field(default=())


@runtime_checkable
class SchemaRegistry(Protocol):
    """Look up, register and check schemas by subject and version.

    Lookups raise :class:`~toolkit.errors.SchemaNotFound` when the subject or version does not exist and
    :class:`~toolkit.errors.RegistryUnavailable` when the registry cannot answer (after retries).
    """

    def get(self, subject: str, version: int) -> RegisteredSchema: ...

    def latest(self, subject: str) -> RegisteredSchema: ...

    def subjects(self) -> list[str]: ...

    def versions(self, subject: str) -> list[int]: ...

    def register(self, subject: str, text: str, schema_format: SchemaFormat) -> RegisteredSchema:
        """Register ``text`` under ``subject``; an identical schema already registered is returned as is.

        Raises:
            RegistryRejected: the registry refused it (incompatible, invalid), with the registry's reasons.
        """
        ...

    def check_compatibility(self, subject: str, text: str, schema_format: SchemaFormat,
                            version: int | str = "latest") -> CompatibilityResult: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class SubjectContext:
    """What a subject-name strategy may use to name the subject of a message's schema."""

    topic: str
    schema_name: str
    message_type: str | None = None


SubjectStrategy = Callable[[SubjectContext], str]


def schema_name_strategy(ctx: SubjectContext) -> str:
    """The default: the subject is the envelope's ``schemaName``."""
    return ctx.schema_name


def topic_value_strategy(ctx: SubjectContext) -> str:
    """Confluent's TopicNameStrategy: ``<topic>-value``."""
    return f"{ctx.topic}-value"
